"""Fixtures for the IVR tests; the fakes themselves are in ivr_fakes.py."""

from __future__ import annotations

import pytest
from ivr_fakes import Fakes


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()
