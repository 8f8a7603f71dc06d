"""Whether the service belongs in rotation: registry data present and young enough."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Readiness:
    """The health status to report, and why (for the log)."""

    serving: bool
    why: str


def readiness(updated_at: float | None, now: float, max_age_seconds: float) -> Readiness:
    """SERVING when a snapshot is loaded and its data was updated at most ``max_age_seconds``
    ago (0: no bound); ``updated_at`` and ``now`` are epoch seconds."""
    if updated_at is None:
        return Readiness(False, "no registry snapshot")
    age = now - updated_at
    if max_age_seconds > 0 and age > max_age_seconds:
        return Readiness(
            False, f"registry data last updated {age:.0f} s ago, longer than the bound of {max_age_seconds:.0f} s"
        )
    return Readiness(True, f"registry data last updated {max(age, 0.0):.0f} s ago")
