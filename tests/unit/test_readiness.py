"""Health follows the registry data: present and young enough."""

from __future__ import annotations

import pytest

from gatekeeper.core.readiness import readiness

NOW = 1_800_000_000.0
DAY = 86_400.0


@pytest.mark.parametrize(
    ("name", "updated_at", "max_age", "serving"),
    [
        ("no snapshot", None, 2 * DAY, False),
        ("no snapshot, even without a bound", None, 0, False),
        ("loaded a moment ago", NOW - 5, 2 * DAY, True),
        ("exactly at the bound", NOW - 2 * DAY, 2 * DAY, True),
        ("one second past the bound", NOW - 2 * DAY - 1, 2 * DAY, False),
        ("a week old without a bound", NOW - 7 * DAY, 0, True),
        ("a clock ahead of ours is fresh", NOW + 30, 2 * DAY, True),
    ],
)
def test_readiness(name: str, updated_at: float | None, max_age: float, serving: bool) -> None:
    assert readiness(updated_at, NOW, max_age).serving is serving, name


def test_the_reason_says_how_old_the_data_is() -> None:
    assert readiness(None, NOW, DAY).why == "no registry snapshot"
    stale = readiness(NOW - 3 * DAY, NOW, 2 * DAY).why
    assert "259200 s ago" in stale and "bound of 172800 s" in stale
