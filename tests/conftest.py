"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Commands run in process (``cli.main``) send the root logger to this test's stderr, which
    pytest closes after the test: put the root logger back, or servers still running in
    later tests log into a closed stream ("--- Logging error ---" in the output)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
