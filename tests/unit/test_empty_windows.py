"""An empty window ``[b, b)`` is valid registry data (the registry cancels a window by
collapsing it): rows parse, and the decision core treats it as covering no instant."""

from __future__ import annotations

import pytest
from builders import at, record, registered, suspended, terminated

from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.records import Status, decode_record
from gatekeeper.core.rules import Reason, describe_practitioner, standing_at
from loader.rows import FIELDS, RowError, RowParser, encode_change, parse_row

MAY = "2026-05-01 00:00:00"


def row(begntime: str, endtime: str) -> dict[str, str]:
    return {
        "prac_psn_code": "D110105000101",
        "prac_psn_type": "1",
        "chg_id": "s-1",
        "status": "2",
        "begntime": begntime,
        "endtime": endtime,
        "ban_endtime": "",
        "chg_rea": "撤销",
        "vali_flag": "1",
        "seq": "9",
    }


def test_a_row_whose_endtime_equals_its_begntime_is_an_empty_window() -> None:
    parsed = parse_row(row(MAY, MAY))
    assert (parsed.period.begntime, parsed.period.endtime) == (at(MAY), at(MAY))
    # The fast paths (snapshot CSV, change feed) agree with the careful one.
    values = row(MAY, MAY)
    code, chg_id, encoded, seq = RowParser(FIELDS).encode([values[name] for name in FIELDS])
    assert (code, chg_id, seq) == ("D110105000101", "s-1", 9)
    assert decode_record(encoded).periods == (parsed.period,)
    assert encode_change(values)[2] == encoded


@pytest.mark.parametrize("encode", [parse_row, encode_change, lambda r: RowParser(FIELDS).encode(list(r.values()))])
def test_only_an_endtime_before_the_begntime_is_broken(encode: object) -> None:
    with pytest.raises(RowError, match="endtime is before begntime"):
        encode(row(MAY, "2026-04-30 23:59:59"))  # type: ignore[operator]


def test_an_empty_window_covers_no_instant() -> None:
    empty_suspension = suspended(MAY, MAY, chg_id="s-1")
    empty_termination = terminated(MAY, MAY, chg_id="t-1")
    practitioner = record(registered("2020-01-01 00:00:00", chg_id="r"), empty_suspension, empty_termination)
    for moment in (at(MAY) - 1, at(MAY), at(MAY) + 1):
        assert not empty_suspension.covers(moment)
        assert standing_at(practitioner, moment).reason is Reason.OK


def test_an_empty_registration_registers_no_one() -> None:
    practitioner = record(registered(MAY, MAY, chg_id="r"))
    assert standing_at(practitioner, at(MAY)).reason is Reason.UNREGISTERED


def test_a_cancelled_window_is_not_announced_as_upcoming() -> None:
    practitioner = record(
        registered("2020-01-01 00:00:00", chg_id="r"),
        suspended("2026-06-01 00:00:00", "2026-06-01 00:00:00", chg_id="cancelled"),
        suspended("2026-07-01 00:00:00", "2026-08-01 00:00:00", chg_id="coming"),
    )
    view = describe_practitioner("D110105000101", practitioner, at(MAY), RegionPolicy())
    assert [(p.status, p.begntime) for p in view.upcoming] == [(Status.SUSPENDED, at("2026-07-01 00:00:00"))]
