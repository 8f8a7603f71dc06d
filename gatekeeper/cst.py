"""China Standard Time timestamps: the national "yyyy-MM-dd HH:mm:ss" strings and epoch seconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8), "CST")
TIME_FORMAT = "yyyy-MM-dd HH:mm:ss"

# Positions of the separators in "2024-05-01 08:30:00"; anything else is refused,
# because datetime.fromisoformat alone also accepts "2024-05-01T08:30", offsets, etc.
_SEPARATORS = ((4, "-"), (7, "-"), (10, " "), (13, ":"), (16, ":"))


def parse_cst(text: str) -> int:
    """Parse "yyyy-MM-dd HH:mm:ss" (China Standard Time) into epoch seconds.

    Raises ValueError for anything that is not exactly that format or not a real time.
    """
    if len(text) != 19 or not text.isascii():
        raise ValueError(f"expected {TIME_FORMAT}, got {text!r}")
    for position, separator in _SEPARATORS:
        if text[position] != separator:
            raise ValueError(f"expected {TIME_FORMAT}, got {text!r}")
    digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    if not digits.isdigit():
        raise ValueError(f"expected {TIME_FORMAT}, got {text!r}")
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=CST)
    except ValueError:
        raise ValueError(f"not a valid time: {text!r}") from None
    return int(moment.timestamp())


def format_cst(epoch_seconds: int) -> str:
    """Format epoch seconds as "yyyy-MM-dd HH:mm:ss" in China Standard Time."""
    moment = datetime.fromtimestamp(epoch_seconds, CST)
    # Not strftime("%Y"): it does not zero-pad years before 1000 on Linux.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
