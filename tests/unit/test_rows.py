"""Registry rows (REGISTRY_FORMAT.md) into status periods, and the record bytes the cache holds."""

from __future__ import annotations

import msgspec
import pytest
from builders import at
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.core.records import (
    OPEN_ENDED,
    PractitionerRecord,
    Status,
    StatusPeriod,
    decode_record,
    encode_record,
)
from loader.rows import FIELDS, MAX_SEQ, HeaderError, RegistryRow, RowError, RowParser, parse_row


def row(**fields: object) -> dict[str, object]:
    """A valid suspension row unless ``fields`` says otherwise."""
    values: dict[str, object] = {
        "prac_psn_code": "D410102000002",
        "prac_psn_type": "1",
        "chg_id": "C0003",
        "status": "2",
        "begntime": "2026-10-01 00:00:00",
        "endtime": "2027-01-01 00:00:00",
        "ban_endtime": "",
        "chg_rea": '年度累计记分9分,暂停医保支付资格3个月 "quoted"',
        "vali_flag": "1",
        "seq": "20",
    }
    values.update(fields)
    return values


# --- Good rows --------------------------------------------------------------------------


def test_suspension_row() -> None:
    parsed = parse_row(row())

    assert parsed == RegistryRow(
        prac_psn_code="D410102000002",
        prac_psn_type=1,
        chg_id="C0003",
        period=StatusPeriod(
            status=Status.SUSPENDED,
            begntime=at("2026-10-01 00:00:00"),
            chg_id="C0003",
            seq=20,
            endtime=at("2027-01-01 00:00:00"),
            ban_endtime=OPEN_ENDED,
            chg_rea='年度累计记分9分,暂停医保支付资格3个月 "quoted"',
        ),
    )


def test_termination_row_keeps_ban_endtime_and_open_end() -> None:
    parsed = parse_row(
        row(status="3", endtime="", ban_endtime="2029-06-01 00:00:00", chg_rea="一次性记满12分,终止医保支付资格")
    )

    assert parsed.period.status == Status.TERMINATED
    assert parsed.period.endtime == OPEN_ENDED
    assert parsed.period.ban_endtime == at("2029-06-01 00:00:00")
    assert parsed.period.chg_rea == "一次性记满12分,终止医保支付资格"


def test_registration_row_drops_chg_rea() -> None:
    parsed = parse_row(row(status="1", endtime="", chg_rea="首次登记备案"))

    assert parsed.period.status == Status.REGISTERED
    assert parsed.period.chg_rea == ""


@pytest.mark.parametrize("status", ["1", "2", "3"])
def test_vali_flag_0_gives_status_withdrawn(status: str) -> None:
    parsed = parse_row(row(status=status, vali_flag="0"))

    assert parsed.period.status == Status.WITHDRAWN
    assert parsed.period.chg_id == "C0003"
    assert parsed.period.seq == 20


def test_fields_are_trimmed() -> None:
    parsed = parse_row(
        row(
            prac_psn_code=" D410102000002 ",
            prac_psn_type=" 1",
            chg_id=" C0003\t",
            status="2 ",
            begntime=" 2026-10-01 00:00:00 ",
            endtime="2027-01-01 00:00:00\r",
            vali_flag=" 1 ",
            seq=" 20 ",
        )
    )

    assert parsed == parse_row(row())


@pytest.mark.parametrize(
    ("code", "prac_psn_type"),
    [
        pytest.param("N330522000004", "2", id="nurse"),
        pytest.param("Y110105000010", "3", id="pharmacist"),
        pytest.param("J110105000013", "4", id="technician"),
        pytest.param("HY110105000011", "3", id="institution_pharmacy_staff"),
        pytest.param("HJ110105000002", "4", id="institution_technical_staff"),
        # Which letters a region accepts on a claim is the policy's business, not the loader's.
        pytest.param("X110105000013", "4", id="unknown_letter_is_still_loaded"),
    ],
)
def test_practitioner_kinds(code: str, prac_psn_type: str) -> None:
    parsed = parse_row(row(prac_psn_code=code, prac_psn_type=prac_psn_type))

    assert (parsed.prac_psn_code, parsed.prac_psn_type) == (code, int(prac_psn_type))


def test_highest_seq_lua_can_hold_is_accepted() -> None:
    assert parse_row(row(seq=str(MAX_SEQ))).period.seq == 2**53 - 1


def test_extra_columns_are_ignored() -> None:
    assert parse_row({**row(), "extra": "x", None: "overflow"}) == parse_row(row())  # type: ignore[dict-item]


# --- Bad rows ---------------------------------------------------------------------------


OPTIONAL_FIELDS = ("endtime", "ban_endtime", "chg_rea")


@pytest.mark.parametrize("field", [name for name in FIELDS if name not in OPTIONAL_FIELDS])
def test_missing_field(field: str) -> None:
    fields = row()
    del fields[field]

    with pytest.raises(RowError, match=f"missing field.*{field}"):
        parse_row(fields)


@pytest.mark.parametrize("field", OPTIONAL_FIELDS)
def test_absent_optional_field_is_empty(field: str) -> None:
    fields = row()
    del fields[field]

    assert parse_row(fields) == parse_row(row(**{field: ""}))


@pytest.mark.parametrize("field", [name for name in FIELDS if name not in OPTIONAL_FIELDS])
def test_null_required_field_is_missing(field: str) -> None:
    with pytest.raises(RowError, match=f"missing field.*{field}"):
        parse_row(row(**{field: None}))


@pytest.mark.parametrize("field", OPTIONAL_FIELDS)
def test_null_optional_field_is_empty(field: str) -> None:
    # A change-feed object may carry JSON null for "no end" or "no reason".
    assert parse_row(row(**{field: None})) == parse_row(row(**{field: ""}))


def test_change_feed_numbers_are_read_like_their_text() -> None:
    feed_object = {**row(), "prac_psn_type": 1, "status": 2, "vali_flag": 1, "seq": 20}

    assert parse_row(feed_object) == parse_row(row())


def test_missing_fields_are_all_named() -> None:
    with pytest.raises(RowError, match="seq") as refused:
        parse_row({"prac_psn_code": "D410102000002"})

    assert "begntime" in str(refused.value) and "vali_flag" in str(refused.value)


BAD_ROWS = [
    # Malformed codes
    pytest.param({"prac_psn_code": ""}, "prac_psn_code", id="empty_code"),
    pytest.param({"prac_psn_code": "009999"}, "prac_psn_code", id="code_009999"),
    pytest.param({"prac_psn_code": "D190"}, "prac_psn_code", id="code_D190"),
    pytest.param({"prac_psn_code": "DOC001"}, "prac_psn_code", id="code_DOC001"),
    pytest.param({"prac_psn_code": "D990102000002"}, "prac_psn_code", id="code_province_99"),
    pytest.param({"prac_psn_code": "d410102000002"}, "prac_psn_code", id="code_lowercase"),
    pytest.param({"prac_psn_code": "D41010200000２"}, "prac_psn_code", id="code_fullwidth_digit"),
    pytest.param({"prac_psn_code": "HYX410102000002"}, "prac_psn_code", id="code_three_letters"),
    pytest.param({"prac_psn_code": "D4101020000021"}, "prac_psn_code", id="code_too_long"),
    # Practitioner type
    pytest.param({"prac_psn_type": "0"}, "prac_psn_type", id="type_0"),
    pytest.param({"prac_psn_type": "5"}, "prac_psn_type", id="type_5"),
    pytest.param({"prac_psn_type": ""}, "prac_psn_type", id="type_empty"),
    pytest.param({"prac_psn_type": "doctor"}, "prac_psn_type", id="type_word"),
    # chg_id
    pytest.param({"chg_id": ""}, "chg_id", id="chg_id_empty"),
    pytest.param({"chg_id": "   "}, "chg_id", id="chg_id_blank"),
    pytest.param({"chg_id": "C" * 129}, "chg_id", id="chg_id_too_long"),
    # Unknown status
    pytest.param({"status": "0"}, "status", id="status_0"),
    pytest.param({"status": "4"}, "status", id="status_4"),
    pytest.param({"status": ""}, "status", id="status_empty"),
    pytest.param({"status": "暂停"}, "status", id="status_word"),
    pytest.param({"status": "２"}, "status", id="status_fullwidth"),
    # vali_flag
    pytest.param({"vali_flag": ""}, "vali_flag", id="vali_flag_empty"),
    pytest.param({"vali_flag": "2"}, "vali_flag", id="vali_flag_2"),
    pytest.param({"vali_flag": "true"}, "vali_flag", id="vali_flag_word"),
    pytest.param({"vali_flag": "Y"}, "vali_flag", id="vali_flag_Y"),
    # seq
    pytest.param({"seq": ""}, "seq", id="seq_empty"),
    pytest.param({"seq": "-1"}, "seq", id="seq_negative"),
    pytest.param({"seq": "+1"}, "seq", id="seq_plus"),
    pytest.param({"seq": "1.5"}, "seq", id="seq_decimal"),
    pytest.param({"seq": "1e3"}, "seq", id="seq_exponent"),
    pytest.param({"seq": "２０"}, "seq", id="seq_fullwidth"),
    pytest.param({"seq": "abc"}, "seq", id="seq_word"),
    pytest.param({"seq": str(MAX_SEQ + 1)}, "seq", id="seq_beyond_2_pow_53"),
    # Bad times
    pytest.param({"begntime": ""}, "begntime", id="begntime_empty"),
    pytest.param({"begntime": "2026/10/01 00:00:00"}, "begntime", id="begntime_slashes"),
    pytest.param({"begntime": "2026-10-01T00:00:00"}, "begntime", id="begntime_iso_t"),
    pytest.param({"begntime": "2026-02-30 00:00:00"}, "begntime", id="begntime_not_a_day"),
    pytest.param({"begntime": "2026-10-01"}, "begntime", id="begntime_date_only"),
    pytest.param({"endtime": "2027-01-01 24:00:00"}, "endtime", id="endtime_hour_24"),
    pytest.param({"endtime": "２０２７-01-01 00:00:00"}, "endtime", id="endtime_fullwidth"),
    pytest.param({"ban_endtime": "never"}, "ban_endtime", id="ban_endtime_word"),
    # endtime before begntime (equal is an empty window: tests/unit/test_empty_windows.py)
    pytest.param({"endtime": "2026-09-30 23:59:59"}, "endtime is before begntime", id="endtime_before_begntime"),
    pytest.param({"endtime": "1970-01-01 07:59:59"}, "endtime .* after 1970", id="endtime_before_epoch"),
]


@pytest.mark.parametrize(("fields", "problem"), BAD_ROWS)
def test_bad_row(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(RowError, match=problem):
        parse_row(row(**fields))


def test_endtime_at_epoch_zero_is_refused_not_taken_as_open_ended() -> None:
    # Epoch 0 is the record's "open-ended" marker: accepting it would make the window permanent.
    with pytest.raises(RowError, match=r"endtime .* after 1970"):
        parse_row(row(endtime="1970-01-01 08:00:00"))


# --- CSV rows by header position ------------------------------------------------------

# Any column order, names trimmed, unknown columns ignored.
HEADER = (
    *("seq", " vali_flag", "chg_rea", "ban_endtime", "endtime", "begntime"),
    *("status", "chg_id", "prac_psn_type", "prac_psn_code ", "remark"),
)


def csv_values(**fields: object) -> list[str]:
    values = {**row(**fields), "remark": "ignored"}
    return [str(values[name.strip()]) for name in HEADER]


def test_csv_row_in_any_column_order_matches_parse_row() -> None:
    parser = RowParser(HEADER)

    assert parser.parse(csv_values()) == parse_row(row())
    assert parser.parse(csv_values(status="1", endtime="")) == parse_row(row(status="1", endtime=""))


@pytest.mark.parametrize("dropped", FIELDS)
def test_header_without_a_registry_field_is_refused(dropped: str) -> None:
    with pytest.raises(HeaderError, match=dropped):
        RowParser([name for name in HEADER if name.strip() != dropped])


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(csv_values()[:-1], id="missing_column"),
        pytest.param([*csv_values(), "extra"], id="extra_column"),
        pytest.param([], id="empty_row"),
    ],
)
def test_csv_row_with_wrong_column_count_is_refused(values: list[str]) -> None:
    with pytest.raises(RowError, match="columns"):
        RowParser(HEADER).parse(values)


def test_csv_row_problems_are_the_same_as_parse_row() -> None:
    with pytest.raises(RowError, match="endtime is before begntime"):
        RowParser(HEADER).parse(csv_values(endtime="2026-09-30 23:59:59"))


# --- The record bytes -------------------------------------------------------------------


def registration_only(seq: int = 1) -> PractitionerRecord:
    registration = parse_row(row(status="1", endtime="", chg_rea="首次登记备案", seq=str(seq))).period
    return PractitionerRecord(prac_psn_type=1, periods=(registration,))


@pytest.mark.parametrize(
    "practitioner",
    [
        pytest.param(registration_only(), id="registration_only"),
        pytest.param(PractitionerRecord(prac_psn_type=2, periods=()), id="no_periods"),
        pytest.param(
            PractitionerRecord(
                prac_psn_type=1,
                periods=(
                    parse_row(row(status="1", endtime="", seq="2", chg_id="C0002")).period,
                    parse_row(row()).period,
                    parse_row(row(status="3", endtime="", ban_endtime="2029-06-01 00:00:00", seq="21")).period,
                    parse_row(row(vali_flag="0", seq="40", chg_id="C0016")).period,
                ),
            ),
            id="every_kind_of_period",
        ),
        pytest.param(
            # A default endtime before a non-default ban_endtime must keep its place in the array.
            PractitionerRecord(
                prac_psn_type=1,
                periods=(StatusPeriod(3, at("2026-06-01 00:00:00"), "c-7", 21, ban_endtime=at("2029-06-01 00:00:00")),),
            ),
            id="open_end_before_ban_endtime",
        ),
        pytest.param(
            PractitionerRecord(prac_psn_type=1, periods=(StatusPeriod(1, at("1950-01-01 00:00:00"), "~" * 128, 0),)),
            id="before_epoch_and_longest_chg_id",
        ),
    ],
)
def test_record_round_trip(practitioner: PractitionerRecord) -> None:
    assert decode_record(encode_record(practitioner)) == practitioner


def test_registration_only_record_is_its_chg_id_and_at_most_16_bytes() -> None:
    # A seq of a national registry (hundreds of millions of changes), a present-day begntime.
    practitioner = registration_only(seq=2**32 - 1)
    assert practitioner.periods[0].chg_rea == ""

    assert len(encode_record(practitioner)) <= 16 + len("C0003")


def test_registration_only_record_at_the_largest_seq_is_its_chg_id_and_at_most_20_bytes() -> None:
    assert len(encode_record(registration_only(seq=MAX_SEQ))) <= 20 + len("C0003")


def test_record_is_a_plain_array_in_field_order() -> None:
    # The loader's Redis Function (Lua cmsgpack) reads and writes the same arrays.
    practitioner = registration_only(seq=30)
    period = practitioner.periods[0]

    decoded = msgspec.msgpack.decode(encode_record(practitioner))

    assert decoded[0] == 1
    assert decoded[1][0][:4] == [int(Status.REGISTERED), period.begntime, "C0003", 30]


def test_record_leaves_trailing_defaults_out() -> None:
    practitioner = registration_only(seq=30)
    period = practitioner.periods[0]

    assert msgspec.msgpack.decode(encode_record(practitioner)) == [
        1,
        [[int(Status.REGISTERED), period.begntime, period.chg_id, 30]],
    ]


def test_shorter_arrays_decode_with_defaults() -> None:
    # What the Lua merge or a leaner encoder writes must still be readable.
    begntime = at("2026-10-01 00:00:00")
    lean = msgspec.msgpack.encode([1, [[1, begntime, "c-7", 30], [2, begntime, "c-8", 31, begntime + 86_400]]])

    assert decode_record(lean) == PractitionerRecord(
        prac_psn_type=1,
        periods=(StatusPeriod(1, begntime, "c-7", 30), StatusPeriod(2, begntime, "c-8", 31, endtime=begntime + 86_400)),
    )


def test_a_record_from_a_cache_loaded_before_chg_ids_were_kept_still_decodes() -> None:
    # Its periods held the chg_id's CRC-32: a service upgraded first reads it until a snapshot is loaded.
    old = msgspec.msgpack.encode([1, [[2, 1_767_196_800, 1839701840, 30, 1_777_000_000]]])

    assert decode_record(old).periods[0] == StatusPeriod(2, 1_767_196_800, 1839701840, 30, endtime=1_777_000_000)


int64 = st.integers(-(2**53) + 1, 2**53 - 1)
lua_periods = st.builds(
    StatusPeriod,
    status=st.sampled_from([int(s) for s in Status]),
    begntime=int64,
    chg_id=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128),
    seq=st.integers(0, MAX_SEQ),
    endtime=int64,
    ban_endtime=int64,
    chg_rea=st.text(max_size=40),
)


@settings(max_examples=200)
@given(st.integers(1, 4), st.lists(lua_periods, max_size=5).map(tuple))
def test_any_record_round_trips(prac_psn_type: int, periods: tuple[StatusPeriod, ...]) -> None:
    practitioner = PractitionerRecord(prac_psn_type=prac_psn_type, periods=periods)

    assert decode_record(encode_record(practitioner)) == practitioner
