"""Registry rows (REGISTRY_FORMAT.md): validate one record into a status period."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from gatekeeper.codes import PROVINCE_CODES
from gatekeeper.cst import parse_cst
from gatekeeper.records import OPEN_ENDED, Status, StatusPeriod, chg_key_of

FIELDS = (
    "prac_psn_code",
    "prac_psn_type",
    "chg_id",
    "status",
    "begntime",
    "endtime",
    "ban_endtime",
    "chg_rea",
    "vali_flag",
    "seq",
)
# The registry numbers changes with one counter; Lua (the merge function) holds numbers
# as doubles, exact up to 2**53.
MAX_SEQ = 2**53 - 1
MAX_CHG_ID_LENGTH = 128

# The loader accepts any one- or two-letter prefix: which letters a region accepts on a
# claim is the policy's business, and an unknown letter here is not a broken row.
_PRACTITIONER_CODE = re.compile(r"[A-Z]{1,2}(?:" + "|".join(PROVINCE_CODES) + r")[0-9]{10}")
_STATUSES = {"1": Status.REGISTERED, "2": Status.SUSPENDED, "3": Status.TERMINATED}


class RowError(ValueError):
    """A registry row that cannot be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """One validated status period of one practitioner."""

    prac_psn_code: str
    prac_psn_type: int
    chg_id: str
    period: StatusPeriod  # status WITHDRAWN when vali_flag = 0


# Registry exports repeat the same few thousand dates; parsing each once is most of the
# speed of a snapshot load.
_parse_time = lru_cache(maxsize=1 << 16)(parse_cst)


def _time(fields: Mapping[str, str], name: str, *, required: bool) -> int:
    text = (fields.get(name) or "").strip()
    if not text:
        if required:
            raise RowError(f"{name} is empty")
        return OPEN_ENDED
    try:
        return _parse_time(text)
    except ValueError:
        raise RowError(f"{name} {text[:40]!r} is not yyyy-MM-dd HH:mm:ss") from None


def parse_row(fields: Mapping[str, str | None]) -> RegistryRow:
    """Validate one record (a CSV row or a change-feed object with string values)."""
    missing = [name for name in FIELDS if fields.get(name) is None]
    if missing:
        raise RowError(f"missing field(s) {', '.join(missing)}")
    text: Mapping[str, str] = fields  # type: ignore[assignment]  # no None left
    code = text["prac_psn_code"].strip()
    if not _PRACTITIONER_CODE.fullmatch(code):
        raise RowError(f"prac_psn_code {code[:40]!r} is not a national practitioner code")
    prac_psn_type = text["prac_psn_type"].strip()
    if prac_psn_type not in ("1", "2", "3", "4"):
        raise RowError(f"prac_psn_type {prac_psn_type[:10]!r} is not 1-4")
    chg_id = text["chg_id"].strip()
    if not chg_id or len(chg_id) > MAX_CHG_ID_LENGTH:
        raise RowError("chg_id is empty" if not chg_id else f"chg_id is longer than {MAX_CHG_ID_LENGTH}")
    status = _STATUSES.get(text["status"].strip())
    if status is None:
        raise RowError(f"status {text['status'][:10]!r} is not 1, 2 or 3")
    vali_flag = text["vali_flag"].strip()
    if vali_flag not in ("0", "1"):
        raise RowError(f"vali_flag {vali_flag[:10]!r} is not 0 or 1")
    seq_text = text["seq"].strip()
    if not seq_text.isascii() or not seq_text.isdigit() or int(seq_text) > MAX_SEQ:
        raise RowError(f"seq {seq_text[:20]!r} is not a non-negative integer below 2**53")
    begntime = _time(text, "begntime", required=True)
    endtime = _time(text, "endtime", required=False)
    if endtime != OPEN_ENDED and endtime <= begntime:
        raise RowError("endtime is not after begntime")
    ban_endtime = _time(text, "ban_endtime", required=False)
    period = StatusPeriod(
        status=int(status) if vali_flag == "1" else int(Status.WITHDRAWN),
        begntime=begntime,
        chg_key=chg_key_of(chg_id),
        seq=int(seq_text),
        endtime=endtime,
        ban_endtime=ban_endtime,
        # Only a block or an exemption is ever explained; a registration's reason would
        # cost memory for 15 million people and never be shown.
        chg_rea=text["chg_rea"] if status != Status.REGISTERED else "",
    )
    return RegistryRow(code, int(prac_psn_type), chg_id, period)
