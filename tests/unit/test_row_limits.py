"""Registry rows at the loader's limits: text the store cannot encode, reasons too long."""

from __future__ import annotations

import json

import pytest

from gatekeeper.core.records import MAX_CHG_REA_LENGTH, decode_record
from loader.changes import parse_change
from loader.rows import FIELDS, RowError, RowParser, encode_change

ROW = {
    "prac_psn_code": "D510105000123",
    "prac_psn_type": "1",
    "chg_id": "susp-1",
    "status": "2",
    "begntime": "2026-11-01 00:00:00",
    "endtime": "2026-12-01 00:00:00",
    "ban_endtime": "",
    "chg_rea": "记分9分",
    "vali_flag": "1",
    "seq": "7",
}


@pytest.mark.parametrize("field", ["chg_id", "chg_rea"])
def test_a_lone_surrogate_is_a_bad_row_with_the_same_reason_from_a_feed_page_and_a_change_file(field: str) -> None:
    row = {**ROW, field: "a\udc00b"}
    with pytest.raises(RowError) as from_page:
        encode_change(row)  # what follow does with a page's parsed object
    with pytest.raises(RowError) as from_file:
        parse_change(json.dumps(row))  # what apply does with the same line
    assert str(from_page.value) == str(from_file.value)
    assert str(from_page.value).startswith(f"{field} holds '\\udc00'")


def test_a_registration_keeps_no_reason_so_a_broken_one_does_not_lose_it() -> None:
    _, _, record, _ = encode_change({**ROW, "status": "1", "chg_rea": "\ud800" + "x" * 10_000})
    assert decode_record(record).periods[0].chg_rea == ""


@pytest.mark.parametrize("length", [MAX_CHG_REA_LENGTH, MAX_CHG_REA_LENGTH + 1, 1_000_000])
def test_a_reason_is_kept_up_to_its_limit_and_a_longer_one_cut_and_noted(length: int) -> None:
    reason = "违" * length
    for encode in (
        lambda notes: encode_change({**ROW, "chg_rea": reason}, notes),
        lambda notes: RowParser(FIELDS).encode([{**ROW, "chg_rea": reason}[name] for name in FIELDS], notes),
    ):
        notes: list[str] = []
        _, _, record, _ = encode(notes)
        assert decode_record(record).periods[0].chg_rea == reason[:MAX_CHG_REA_LENGTH]
        assert len(notes) == (length > MAX_CHG_REA_LENGTH)
