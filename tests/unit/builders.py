"""Small builders for unit tests: registry periods, records, line items and claims that read like the rules."""

from __future__ import annotations

from gatekeeper.core.cst import parse_cst
from gatekeeper.core.records import OPEN_ENDED, PractitionerRecord, Status, StatusPeriod
from gatekeeper.core.rules import Claim, Item

INSTITUTION = "H41130200746"


def at(text: str) -> int:
    """Epoch seconds of a China Standard Time "yyyy-MM-dd HH:mm:ss" string."""
    return parse_cst(text)


def period(
    status: Status,
    begntime: str,
    endtime: str = "",
    *,
    chg_id: str,
    seq: int = 1,
    ban_endtime: str = "",
    chg_rea: str = "",
) -> StatusPeriod:
    """A status window ``[begntime, endtime)``; an empty endtime is open-ended."""
    return StatusPeriod(
        status=int(status),
        begntime=at(begntime),
        chg_id=chg_id,
        seq=seq,
        endtime=at(endtime) if endtime else OPEN_ENDED,
        ban_endtime=at(ban_endtime) if ban_endtime else OPEN_ENDED,
        chg_rea=chg_rea,
    )


def registered(begntime: str, endtime: str = "", *, chg_id: str, seq: int = 1) -> StatusPeriod:
    """A registration (正常) window."""
    return period(Status.REGISTERED, begntime, endtime, chg_id=chg_id, seq=seq)


def suspended(begntime: str, endtime: str, *, chg_id: str, seq: int = 1, chg_rea: str = "暂停") -> StatusPeriod:
    """A suspension (暂停) window."""
    return period(Status.SUSPENDED, begntime, endtime, chg_id=chg_id, seq=seq, chg_rea=chg_rea)


def terminated(
    begntime: str, endtime: str = "", *, chg_id: str, seq: int = 1, ban_endtime: str = "", chg_rea: str = "终止"
) -> StatusPeriod:
    """A termination (终止) window."""
    return period(
        Status.TERMINATED, begntime, endtime, chg_id=chg_id, seq=seq, ban_endtime=ban_endtime, chg_rea=chg_rea
    )


def withdrawn(begntime: str, endtime: str = "", *, chg_id: str, seq: int = 1) -> StatusPeriod:
    """A window the registry withdrew (vali_flag = 0)."""
    return period(Status.WITHDRAWN, begntime, endtime, chg_id=chg_id, seq=seq)


def record(*periods: StatusPeriod, prac_psn_type: int = 1) -> PractitionerRecord:
    """A practitioner's record holding ``periods``."""
    return PractitionerRecord(prac_psn_type=prac_psn_type, periods=tuple(periods))


def item(
    when: str,
    *practitioners: str,
    sn: str = "1",
    amount_fen: int = 100,
    emergency: bool = False,
) -> Item:
    """A validated line item served at ``when`` by ``practitioners`` (ordering first)."""
    return Item(
        feedetl_sn=sn,
        service_time=at(when),
        amount_fen=amount_fen,
        practitioners=tuple(practitioners),
        emergency=emergency,
    )


def claim(*items: Item, fixmedins_code: str = INSTITUTION, claim_id: str = "CLAIM-1") -> Claim:
    """A validated claim of ``items``."""
    return Claim(claim_id=claim_id, fixmedins_code=fixmedins_code, items=tuple(items))
