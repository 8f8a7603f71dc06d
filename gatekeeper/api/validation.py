"""Turn a CheckClaimRequest into a validated Claim, or say which field is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from gatekeeper import defaults
from gatekeeper.core.codes import is_institution_code
from gatekeeper.core.cst import TIME_FORMAT, parse_cst
from gatekeeper.core.errors import InvalidArgument
from gatekeeper.core.rules import Claim, Item
from gatekeeper.v1 import gatekeeper_pb2 as pb

MAX_ID_LENGTH = 64  # claim_id, feedetl_sn, mdtrt_id: national fields are 30 characters
# Practitioner codes are 13 or 14 characters; HIS feeds also carry local ones ("DOC001"),
# which are decided malformed. Anything longer is not a code at all.
MAX_CODE_LENGTH = 32
MAX_TEXT_LENGTH = 64  # med_list_codg (national codes are up to 50), med_type
# |amount| per line: 10 billion yuan. Bounded so that the sums of a claim's items fit in
# the response's int64 fields.
MAX_AMOUNT_FEN = 10**12


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry."""

    max_items: int = defaults.MAX_ITEMS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    max_batch_claims: int = defaults.MAX_BATCH_CLAIMS
    max_batch_bytes: int = defaults.MAX_BATCH_BYTES


def _require_id(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_ID_LENGTH} characters")
    return value


def _bounded(value: str, field: str, most: int) -> str:
    if len(value) > most:
        raise InvalidArgument(field, f"is longer than {most} characters")
    return value


def practitioner_code(value: str, field: str = "prac_psn_code") -> str:
    """A trimmed practitioner code as sent (well-formed or not), or InvalidArgument when
    missing or too long to be a code."""
    value = _bounded(value.strip(), field, MAX_CODE_LENGTH)
    if not value:
        raise InvalidArgument(field, "is required")
    return value


# Institution codes seen well-formed and trimmed: a hospital sends all its claims under one.
# Emptied when full rather than evicting one by one.
_KNOWN_INSTITUTIONS: set[str] = set()
INSTITUTIONS_KEPT = 65_536


def institution_code(value: str, field: str = "fixmedins_code") -> str:
    """A trimmed designated-institution code, or InvalidArgument."""
    if value in _KNOWN_INSTITUTIONS:
        return value
    trimmed = value.strip()
    if not trimmed:
        raise InvalidArgument(field, "is required")
    if not is_institution_code(trimmed):
        raise InvalidArgument(field, f"{trimmed[:32]!r} is not an institution code (H or P + 11 digits)")
    if trimmed == value:
        if len(_KNOWN_INSTITUTIONS) >= INSTITUTIONS_KEPT:
            _KNOWN_INSTITUTIONS.clear()
        _KNOWN_INSTITUTIONS.add(value)
    return trimmed


# Parsed service times: HIS feeds post many charges at the same second. Only valid times are
# kept; the map is emptied when full rather than evicting one by one.
_PARSED_TIMES: dict[str, int] = {}
PARSED_TIMES_KEPT = 65_536


# Times a request may name: the years 1970 to 2099 (CST). Outside them a time is a data
# error, and near year 1 it cannot even be formatted back (UTC would be year 0).
EARLIEST_TIME = parse_cst("1970-01-01 00:00:00")
END_OF_TIME = parse_cst("2100-01-01 00:00:00")


def service_time(value: str, field: str) -> int:
    """Epoch seconds of a "yyyy-MM-dd HH:mm:ss" CST string in the years 1970 to 2099, or InvalidArgument."""
    moment = _PARSED_TIMES.get(value)
    if moment is not None:
        return moment
    try:
        moment = parse_cst(value)
    except ValueError:
        raise InvalidArgument(field, f"expected {TIME_FORMAT} (China Standard Time), got {value[:32]!r}") from None
    if not EARLIEST_TIME <= moment < END_OF_TIME:
        raise InvalidArgument(field, f"{value!r} is outside the years 1970 to 2099")
    if len(_PARSED_TIMES) >= PARSED_TIMES_KEPT:
        _PARSED_TIMES.clear()
    _PARSED_TIMES[value] = moment
    return moment


def wire_bounds(limits: Limits) -> tuple[int, int, int, int, int, int, int]:
    """The bounds :func:`claim_from_request` checks, for the C parser (core/native.py's
    ``parse_claim``), which has none of its own."""
    return (
        limits.max_items,
        MAX_ID_LENGTH,
        MAX_CODE_LENGTH,
        MAX_TEXT_LENGTH,
        MAX_AMOUNT_FEN,
        EARLIEST_TIME,
        END_OF_TIME,
    )


def _reject_serial_number(feedetl_sn: str, field: str) -> NoReturn:
    """Say what is wrong with a line item's trimmed serial number: missing, too long, or repeated."""
    _require_id(feedetl_sn, field)
    raise InvalidArgument(field, f"{feedetl_sn!r} appears more than once in the claim")


def _reject_line(line: pb.LineItem, where: str) -> NoReturn:
    """Say which bounded field of a line item is out of bounds."""
    _bounded(line.bilg_dr_codg.strip(), f"{where}.bilg_dr_codg", MAX_CODE_LENGTH)
    _bounded(line.orders_dr_code.strip(), f"{where}.orders_dr_code", MAX_CODE_LENGTH)
    _bounded(line.med_list_codg, f"{where}.med_list_codg", MAX_TEXT_LENGTH)
    raise InvalidArgument(f"{where}.amount_fen", f"is beyond ±{MAX_AMOUNT_FEN} fen")


def claim_from_request(request: pb.CheckClaimRequest, limits: Limits, *, sized: bool = False) -> Claim:
    """Validate a request. A bad practitioner code is not an error here: it is decided.
    ``sized``: the transport has already refused requests above ``limits.max_request_bytes``
    (gRPC's deserializer, before decoding): the message is not measured again."""
    if not sized:
        size = request.ByteSize()
        if size > limits.max_request_bytes:
            raise InvalidArgument("request", f"is {size} bytes, more than the maximum of {limits.max_request_bytes}")
    claim_id = _require_id(request.claim_id, "claim_id")
    fixmedins_code = institution_code(request.fixmedins_code)
    _bounded(request.mdtrt_id, "mdtrt_id", MAX_ID_LENGTH)
    _bounded(request.med_type, "med_type", MAX_TEXT_LENGTH)
    if not request.items:
        raise InvalidArgument("items", "a claim needs at least one line item")
    if len(request.items) > limits.max_items:
        raise InvalidArgument(
            "items", f"has {len(request.items)} line items, more than the maximum of {limits.max_items}"
        )

    # Once per line item: each field read once, field names spelled only for an error.
    seen: set[str] = set()
    items = []
    claim_emergency = request.emergency
    for index, line in enumerate(request.items):
        feedetl_sn = line.feedetl_sn.strip()
        if not feedetl_sn or len(feedetl_sn) > MAX_ID_LENGTH or feedetl_sn in seen:
            _reject_serial_number(feedetl_sn, f"items[{index}].feedetl_sn")
        seen.add(feedetl_sn)
        ordering, executing, amount = line.bilg_dr_codg.strip(), line.orders_dr_code.strip(), line.amount_fen
        if (
            len(ordering) > MAX_CODE_LENGTH
            or len(executing) > MAX_CODE_LENGTH
            or len(line.med_list_codg) > MAX_TEXT_LENGTH
            or not -MAX_AMOUNT_FEN <= amount <= MAX_AMOUNT_FEN
        ):
            _reject_line(line, f"items[{index}]")
        text = line.fee_ocur_time
        moment = _PARSED_TIMES.get(text)
        if moment is None:
            moment = service_time(text, f"items[{index}].fee_ocur_time")
        practitioners = (ordering, executing) if executing and executing != ordering else (ordering,)
        items.append(Item(feedetl_sn, moment, amount, practitioners, claim_emergency or line.emergency))
    return Claim(claim_id=claim_id, fixmedins_code=fixmedins_code, items=tuple(items))
