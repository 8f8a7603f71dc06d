"""Registry rows (REGISTRY_FORMAT.md): validate one record into a status period."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import msgspec

from gatekeeper.core.codes import PROVINCE_CODES
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.records import (
    MAX_CHG_REA_LENGTH,
    OPEN_ENDED,
    Status,
    StatusPeriod,
    one_period_record,
    period_array,
)

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
FAST_SEQ_DIGITS = 15  # a seq of at most this many digits is below MAX_SEQ: the fast path takes it

# The loader accepts any one- or two-letter prefix: which letters a region accepts on a
# claim is the policy's business, and an unknown letter here is not a broken row.
_PRACTITIONER_CODE = re.compile(r"[A-Z]{1,2}(?:" + "|".join(PROVINCE_CODES) + r")[0-9]{10}")
_STATUSES = {"1": int(Status.REGISTERED), "2": int(Status.SUSPENDED), "3": int(Status.TERMINATED)}
_TYPES = frozenset(("1", "2", "3", "4"))
REGISTERED, WITHDRAWN = int(Status.REGISTERED), int(Status.WITHDRAWN)


class RowError(ValueError):
    """A registry row that cannot be applied; the message says why."""


# (prac_psn_code, chg_id, encoded one-period record, seq): what the loader's Redis Functions
# take. The chg_id travels whole, in the record too: it is the period's identity.
EncodedRow = tuple[str, str, bytes, int]


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """One validated status period of one practitioner."""

    prac_psn_code: str
    prac_psn_type: int
    chg_id: str
    period: StatusPeriod  # status WITHDRAWN when vali_flag = 0

    def encoded_row(self) -> EncodedRow:
        """The row as the loader writes it: (code, chg_id, one-period record, seq)."""
        record = one_period_record(self.prac_psn_type, period_array(*msgspec.structs.astuple(self.period)))
        return self.prac_psn_code, self.chg_id, record, self.period.seq


def _registry_time(text: str) -> int:
    moment = parse_cst(text)
    # Epoch 0 is the "open-ended" marker in a record, so no real time may be at or before it.
    if moment <= OPEN_ENDED:
        raise ValueError(f"{text!r} is not after 1970-01-01 08:00:00")
    return moment


# Registry exports repeat the same few thousand dates; parsing each once is most of the
# speed of a snapshot load.
_parse_time = lru_cache(maxsize=1 << 16)(_registry_time)


def _time(name: str, text: str, *, required: bool) -> int:
    text = text.strip()
    if not text:
        if required:
            raise RowError(f"{name} is empty")
        return OPEN_ENDED
    try:
        return _parse_time(text)
    except ValueError:
        raise RowError(f"{name} {text[:40]!r} is not a time yyyy-MM-dd HH:mm:ss after 1970") from None


def _text(name: str, text: str) -> str:
    r"""``text`` if it can be stored (UTF-8); a lone surrogate, which a JSON escape such as
    ``"\ud800"`` can carry but no store can encode, is a broken row."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RowError(f"{name} holds {text[error.start]!r}, which is not a Unicode character") from None
    return text


def _reason(chg_rea: str, notes: list[str] | None) -> str:
    """The reason text as kept: at most MAX_CHG_REA_LENGTH characters. A longer one is cut
    (the period itself matters more than its explanation) and the cut noted in ``notes``."""
    if len(chg_rea) <= MAX_CHG_REA_LENGTH:
        return chg_rea
    if notes is not None:
        notes.append(
            f"chg_rea has {len(chg_rea):,} characters, more than {MAX_CHG_REA_LENGTH}: "
            "stored cut to that length, the period loaded"
        )
    return chg_rea[:MAX_CHG_REA_LENGTH]


def _parse(
    code: str,
    prac_psn_type: str,
    chg_id: str,
    status_text: str,
    begntime_text: str,
    endtime_text: str,
    ban_endtime_text: str,
    chg_rea: str,
    vali_flag: str,
    seq_text: str,
    *,
    notes: list[str] | None = None,
) -> RegistryRow:
    code = code.strip()
    if not _PRACTITIONER_CODE.fullmatch(code):
        raise RowError(f"prac_psn_code {code[:40]!r} is not a national practitioner code")
    prac_psn_type = prac_psn_type.strip()
    if prac_psn_type not in _TYPES:
        raise RowError(f"prac_psn_type {prac_psn_type[:10]!r} is not 1-4")
    chg_id = _text("chg_id", chg_id.strip())
    if not chg_id or len(chg_id) > MAX_CHG_ID_LENGTH:
        raise RowError("chg_id is empty" if not chg_id else f"chg_id is longer than {MAX_CHG_ID_LENGTH}")
    status = _STATUSES.get(status_text.strip())
    if status is None:
        raise RowError(f"status {status_text[:10]!r} is not 1, 2 or 3")
    vali_flag = vali_flag.strip()
    if vali_flag not in ("0", "1"):
        raise RowError(f"vali_flag {vali_flag[:10]!r} is not 0 or 1")
    seq_text = seq_text.strip()
    if not seq_text.isascii() or not seq_text.isdigit() or int(seq_text) > MAX_SEQ:
        raise RowError(f"seq {seq_text[:20]!r} is not a non-negative integer below 2**53")
    begntime = _time("begntime", begntime_text, required=True)
    endtime = _time("endtime", endtime_text, required=False)
    # endtime == begntime is an empty window, [b, b): the registry cancels a window by
    # collapsing it, and the collapsed version must replace the blocking one.
    if endtime != OPEN_ENDED and endtime < begntime:
        raise RowError("endtime is before begntime")
    period = StatusPeriod(
        status=status if vali_flag == "1" else WITHDRAWN,
        begntime=begntime,
        chg_id=chg_id,
        seq=int(seq_text),
        endtime=endtime,
        ban_endtime=_time("ban_endtime", ban_endtime_text, required=False),
        # Only a block or an exemption is ever explained; a registration's reason would
        # cost memory for 15 million people and never be shown.
        chg_rea=_reason(_text("chg_rea", chg_rea), notes) if status != REGISTERED else "",
    )
    return RegistryRow(code, int(prac_psn_type), chg_id, period)


class HeaderError(ValueError):
    """A snapshot header without the registry's fields: the file cannot be read at all."""


_TIME = "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
# A well-formed row, its fields joined by \x1f in FIELDS order: one C-level match instead
# of a dozen Python checks. Anything else (whitespace, odd chg_ids, 16-digit seqs, bad
# values) takes the careful path, which gives the precise reason.
_WELL_FORMED = re.compile(
    "\x1f".join(
        (
            f"({_PRACTITIONER_CODE.pattern})",
            "([1-4])",
            f"([!-~]{{1,{MAX_CHG_ID_LENGTH}}})",
            "([123])",
            f"({_TIME})",
            f"({_TIME})?",
            f"({_TIME})?",
            f"([^\x1f]{{0,{MAX_CHG_REA_LENGTH}}})",
            "([01])",
            f"([0-9]{{1,{FAST_SEQ_DIGITS}}})",
        )
    )
)


class RowParser:
    """Parses CSV rows whose columns are in the order of a header (any order is allowed)."""

    def __init__(self, header: Sequence[str]) -> None:
        names = [name.strip() for name in header]
        missing = [name for name in FIELDS if name not in names]
        if missing:
            raise HeaderError(f"the header lacks {', '.join(missing)}")
        self.width = len(names)
        self.columns = tuple(names.index(name) for name in FIELDS)  # where each of FIELDS is
        self._in_field_order = operator.itemgetter(*self.columns)

    def parse(self, values: Sequence[str], notes: list[str] | None = None) -> RegistryRow:
        """Validate one CSV row; what was cut to fit is noted in ``notes``."""
        if len(values) != self.width:
            raise RowError(f"has {len(values)} columns, the header has {self.width}")
        return _parse(*(values[position] for position in self.columns), notes=notes)

    def encode(self, values: Sequence[str], notes: list[str] | None = None) -> EncodedRow:
        """Validate one CSV row into (code, chg_id, one-period record, seq) for the loader;
        what was cut to fit is noted in ``notes``."""
        if len(values) == self.width:
            encoded = _encode_well_formed(self._in_field_order(values))
            if encoded is not None:
                return encoded
        return self.parse(values, notes).encoded_row()


def _encode_well_formed(fields: Sequence[str]) -> EncodedRow | None:
    """The fast path: encode a row whose fields (in FIELDS order) are all well-formed,
    or None to let the careful path find the problem."""
    match = _WELL_FORMED.fullmatch("\x1f".join(fields))
    if match is None:
        return None
    code, prac_psn_type, chg_id, status, begntime, endtime, ban_endtime, chg_rea, vali, seq_text = match.groups()
    try:
        begins = _parse_time(begntime)
        ends = _parse_time(endtime) if endtime else OPEN_ENDED
        ban_ends = _parse_time(ban_endtime) if ban_endtime else OPEN_ENDED
    except ValueError:  # a date like 2026-02-30
        return None
    if ends != OPEN_ENDED and ends < begins:
        return None
    seq = int(seq_text)
    period = period_array(
        int(status) if vali == "1" else WITHDRAWN,
        begins,
        chg_id,
        seq,
        ends,
        ban_ends,
        chg_rea if status != "1" else "",
    )
    try:
        return code, chg_id, one_period_record(int(prac_psn_type), period), seq
    except UnicodeEncodeError:  # a lone surrogate in chg_rea: the careful path names it
        return None


_OPTIONAL = frozenset(("endtime", "ban_endtime", "chg_rea"))


def parse_row(fields: Mapping[str, object], notes: list[str] | None = None) -> RegistryRow:
    """Validate one record given by name (a change-feed JSON object; numbers allowed).

    The optional fields (endtime, ban_endtime, chg_rea) may be absent or null: empty.
    """
    missing = [name for name in FIELDS if fields.get(name) is None and name not in _OPTIONAL]
    if missing:
        raise RowError(f"missing field(s) {', '.join(missing)}")
    values = ["" if fields.get(name) is None else str(fields[name]) for name in FIELDS]
    return _parse(*values, notes=notes)


def encode_change(document: Mapping[str, object], notes: list[str] | None = None) -> EncodedRow:
    """Validate one change-feed object into (code, chg_id, one-period record, seq); what was
    cut to fit is noted in ``notes``."""
    # A missing or null required field leaves an empty string, which the fast path's
    # pattern refuses; the careful path then names it.
    fields = [
        value if type(value) is str else "" if value is None else str(value) for value in map(document.get, FIELDS)
    ]
    encoded = _encode_well_formed(fields)
    if encoded is not None:
        return encoded
    return parse_row(document, notes).encoded_row()
