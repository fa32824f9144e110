"""Fixtures of the adapter unit tests."""

from __future__ import annotations

import pytest
from transport_harness import Harness


@pytest.fixture
def harness() -> Harness:
    h = Harness()
    h.driver.listen_tcp("127.0.0.1", 5060)
    return h
