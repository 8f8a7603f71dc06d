"""China Standard Time timestamps: the national "yyyy-MM-dd HH:mm:ss" strings and epoch seconds."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

CST = timezone(timedelta(hours=8), "CST")
TIME_FORMAT = "yyyy-MM-dd HH:mm:ss"

# Exactly "2024-05-01 08:30:00" with ASCII digits ([0-9], not \d, which also matches "２"):
# datetime.fromisoformat alone also accepts "2024-05-01T08:30", offsets, and more.
_TIME = re.compile("([0-9]{4}-[0-9]{2}-[0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")


def parse_cst(text: str) -> int:
    """Parse "yyyy-MM-dd HH:mm:ss" (China Standard Time) into epoch seconds.

    Raises ValueError for anything that is not exactly that format or not a real time.
    """
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"expected {TIME_FORMAT}, got {text!r}")
    date, hours, minutes, seconds = match.groups()
    hour, minute, second = int(hours), int(minutes), int(seconds)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not a valid time: {text!r}")
    return _midnight(date) + hour * 3600 + minute * 60 + second


@lru_cache(maxsize=4096)
def _midnight(date: str) -> int:
    """Epoch seconds of 00:00:00 CST on a "yyyy-MM-dd" date: claims repeat a few dates,
    so the calendar arithmetic is done once per date."""
    try:
        return int(datetime.fromisoformat(date).replace(tzinfo=CST).timestamp())
    except ValueError:
        raise ValueError(f"not a valid date: {date!r}") from None


def format_cst(epoch_seconds: int) -> str:
    """Format epoch seconds as "yyyy-MM-dd HH:mm:ss" in China Standard Time."""
    moment = datetime.fromtimestamp(epoch_seconds, CST)
    # Not strftime("%Y"): it does not zero-pad years before 1000 on Linux.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
