"""National code formats (国家医保信息业务编码标准): practitioner and institution codes."""

from __future__ import annotations

import re
from collections.abc import Iterable

# The first two digits of a 6-digit administrative division are a province code.
PROVINCE_CODES = (
    *("11", "12", "13", "14", "15", "21", "22", "23"),
    *("31", "32", "33", "34", "35", "36", "37", "41", "42", "43", "44", "45", "46"),
    *("50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82"),
)

# Doctor D, nurse N, pharmacist Y, technician J (letters not verified nationally),
# institution pharmacy and technical staff HY / HJ.
DEFAULT_PRACTITIONER_PREFIXES = ("D", "N", "Y", "J", "HY", "HJ")

_PROVINCE = "(?:" + "|".join(PROVINCE_CODES) + ")"
# [0-9] rather than \d: \d also matches non-ASCII digits such as "１" or "٣".
_INSTITUTION = re.compile(rf"[HP]{_PROVINCE}[0-9]{{9}}")


def practitioner_code_pattern(prefixes: Iterable[str]) -> re.Pattern[str]:
    """A pattern for prefix + 12 digits whose first two digits are a province code."""
    # Longest prefixes first, so that "HY" is tried before a hypothetical "H".
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    return re.compile(rf"(?:{alternatives}){_PROVINCE}[0-9]{{10}}")


class PractitionerCodeFormat:
    """The practitioner code format of a set of prefixes, remembering the codes it has
    checked (the same practitioners bill all day). Its answers are a pure function of the
    code; the memory is a bounded cache, dropped whole when full."""

    __slots__ = ("_checked", "max_kept", "pattern")

    def __init__(self, prefixes: Iterable[str], max_kept: int = 200_000) -> None:
        self.pattern = practitioner_code_pattern(prefixes)
        self.max_kept = max_kept
        self._checked: dict[str, bool] = {}

    def matches(self, code: str) -> bool:
        """True when ``code`` has this format."""
        known = self._checked.get(code)
        if known is None:
            if len(self._checked) >= self.max_kept:
                self._checked.clear()
            known = self._checked[code] = self.pattern.fullmatch(code) is not None
        return known


def is_institution_code(code: str) -> bool:
    """True for a designated institution (H…) or retail pharmacy (P…) code."""
    return _INSTITUTION.fullmatch(code) is not None


def division_of(institution_code: str) -> str:
    """The 6-digit administrative division of an institution code."""
    return institution_code[1:7]
