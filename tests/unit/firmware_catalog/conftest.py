"""Fixtures for the firmware catalog tests."""

from __future__ import annotations

import pytest

from firmware_catalog import Catalog, load_catalog


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()
