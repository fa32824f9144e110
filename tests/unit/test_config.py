"""The configuration file and its environment overrides (gateway/config.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config, describe, load_config


def test_described_defaults_are_a_config_file_that_loads_as_the_defaults(
        tmp_path: Path) -> None:
    """`sipgw config --defaults` prints every setting; saved as a file it must load (valid
    TOML: booleans as true/false) and give exactly the built-in defaults."""
    text = describe()
    assert "embedded_persist = true" in text and "True" not in text
    path = tmp_path / "sipgw.toml"
    path.write_text(text)
    assert load_config(path, env={}) == Config()


def test_embedded_store_persistence_is_on_unless_turned_off() -> None:
    assert load_config(None, env={}).redis.embedded_persist is True
    cfg = load_config(None, env={"SIPGW_REDIS_EMBEDDED_PERSIST": "false"})
    assert cfg.redis.embedded_persist is False
