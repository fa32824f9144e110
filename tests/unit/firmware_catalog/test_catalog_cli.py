"""The ``catalog`` command: check and list."""

from __future__ import annotations

import pytest

from firmware_catalog.cli import main


def test_check_admitted_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "Yealink SIP-T46S 66.84.0.15"]) == 0
    out = capsys.readouterr().out
    assert "model:      T46S" in out
    assert "verdict:    BELOW_APPROVED (admitted)" in out
    assert "approved:   66.85.0.5" in out and "minimum:    83" in out


def test_check_rejected_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "PolycomVVX-VVX_410-UA/5.9.4.1234"]) == 1
    out = capsys.readouterr().out
    assert "reason:     firmware 5.9.4.1234 below minimum 5.9.5 for Poly VVX410" in out


def test_check_http_with_path(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--path", "/805ec0123456.cfg", "Yealink SIP-T46S 66.85.0.5"])
    assert code == 0
    assert "mac:        805ec0123456" in capsys.readouterr().out


def test_list_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_catalog import load_catalog

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["Vendor", "Model", "Minimum", "Approved"]
    assert len(lines) == len(load_catalog().entries) + 1


def test_list_one_vendor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--vendor", "spectralink"]) == 0
    body = capsys.readouterr().out.splitlines()[1:]
    assert body and all(line.startswith("Spectralink") for line in body)


def test_bad_catalog_file_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--catalog", "/nonexistent/catalog.toml", "check", "x"]) == 2
    assert "catalog:" in capsys.readouterr().err
