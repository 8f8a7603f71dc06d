"""The message on each item decision: the region's template for its reason, filled once per distinct decision."""

from __future__ import annotations

from gatekeeper.core.cst import format_cst
from gatekeeper.core.records import OPEN_ENDED, Status, StatusPeriod
from gatekeeper.core.rules import ItemDecision, Reason, Role, Verdict
from gatekeeper.core.wording import Wording

_KEY_OF_BLOCK = {
    Reason.SUSPENDED: "suspended",
    Reason.TERMINATED: "terminated",
    Reason.UNREGISTERED: "unregistered",
    Reason.MALFORMED_CODE: "malformed_code",
    Reason.MISSING_PRACTITIONER: "missing_practitioner",
}

# Filled messages by (wording, reason, verdict, role, code, window). Barred practitioners
# are few and claims repeat them, so a message is formatted once and then looked up.
# Bounded (an entry is ~350 bytes, so at most ~6 MB per worker) and emptied when full
# rather than evicted one by one: refilling costs one format per entry.
_FILLED: dict[tuple[object, ...], str] = {}
FILLED_KEPT = 16_384
# An enum member read through its class (Reason.OK) costs ~0.1 µs on Python 3.11, as much
# as the rest of an allowed item's message: read it once.
_OK = Reason.OK


def item_message(decision: ItemDecision, wording: Wording) -> str:
    """The text a HIS can show the cashier for ``decision``, in the region's ``wording``."""
    if decision.reason is _OK:
        return wording.ok
    key = (wording, decision.reason, decision.verdict, decision.role, decision.prac_psn_code, decision.window)
    message = _FILLED.get(key)
    if message is None:
        message = fill(decision, wording)
        if len(_FILLED) >= FILLED_KEPT:
            _FILLED.clear()
        _FILLED[key] = message
    return message


def fill(decision: ItemDecision, wording: Wording) -> str:
    """Choose and fill the template for ``decision`` (not memoised: see :func:`item_message`).

    A block reason on an item that was settled anyway (monitor mode, or a decision settled
    unrecorded) gets the block's words inside the "monitor" template.
    """
    templates, reason = wording.templates, decision.reason
    if reason is Reason.OK:
        return wording.ok
    values = {
        "role": wording.ordering if decision.role is Role.ORDERING else wording.executing,
        "code": decision.prac_psn_code,
    }
    if decision.window is not None:
        values.update(_window_values(decision.window, wording))
    if reason is Reason.EMERGENCY_EXEMPT:
        return templates["emergency_exempt"].format_map(values)
    if reason is Reason.UNVERIFIED:
        key = "unverified_blocked" if decision.verdict is Verdict.BLOCK else "unverified"
        return templates[key].format_map(values)
    message = templates[_KEY_OF_BLOCK[reason]].format_map(values)
    if decision.verdict is Verdict.BLOCK:
        return message
    return templates["monitor"].format_map({"message": message})


def _window_values(window: StatusPeriod, wording: Wording) -> dict[str, str]:
    begin = _moment(window.begntime)
    if window.endtime == OPEN_ENDED:
        end, whole = wording.open_end, wording.open_window.format(begin=begin)
    else:
        end = _moment(window.endtime)
        whole = wording.window.format(begin=begin, end=end)
    status = wording.terminated if window.status == Status.TERMINATED else wording.suspended
    return {"window": whole, "begntime": begin, "endtime": end, "status": status}


def _moment(epoch_seconds: int) -> str:
    """A window's bound in CST: the date alone at midnight (registry windows are whole
    days), the time too when it is not."""
    return format_cst(epoch_seconds).removesuffix(" 00:00:00")
