"""Code formats, China Standard Time strings, the region policy file, and enum numbers shared with the proto."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.core import rules
from gatekeeper.core.codes import (
    DEFAULT_PRACTITIONER_PREFIXES,
    PROVINCE_CODES,
    division_of,
    is_institution_code,
    practitioner_code_pattern,
)
from gatekeeper.core.cst import format_cst, parse_cst
from gatekeeper.core.policy import Mode, Policy, PolicyError, RegionPolicy, load_policy, parse_policy
from gatekeeper.core.records import Status
from gatekeeper.v1 import gatekeeper_pb2 as pb

REPO = Path(__file__).resolve().parents[2]

# --- China Standard Time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        pytest.param("1970-01-01 08:00:00", datetime(1970, 1, 1, tzinfo=UTC), id="epoch_is_08_00_in_china"),
        pytest.param("2026-10-01 00:00:00", datetime(2026, 9, 30, 16, tzinfo=UTC), id="midnight_is_16_00_utc"),
        pytest.param("2024-02-29 23:59:59", datetime(2024, 2, 29, 15, 59, 59, tzinfo=UTC), id="leap_day"),
        pytest.param("1969-12-31 23:59:59", datetime(1969, 12, 31, 15, 59, 59, tzinfo=UTC), id="before_epoch"),
        # China has no daylight saving time: summer and winter are both UTC+8.
        pytest.param("2026-07-01 12:00:00", datetime(2026, 7, 1, 4, tzinfo=UTC), id="summer_no_dst"),
    ],
)
def test_parse_cst_is_utc_plus_eight(text: str, utc: datetime) -> None:
    assert parse_cst(text) == int(utc.timestamp())
    assert format_cst(int(utc.timestamp())) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-10-01",
        "2026-10-01 00:00",
        "2026-10-01T00:00:00",
        "2026/10/01 00:00:00",
        "2026-10-01 00:00:00Z",
        "2026-10-01 00:00:00+08:00",
        "2026-10-01 00:00:00.0",
        " 2026-10-01 00:00:00",
        "2026-10-01 00:00:00 ",
        "2026-10-01  0:00:00",
        "2026-1-01 000:00:00",
        "２０２６-10-01 00:00:00",  # full-width digits
        "٢٠٢٦-10-01 00:00:00",  # Arabic-Indic digits
        "2026-10-01 00:00:0１",
        "+026-10-01 00:00:00",
        "2026-10-01 -0:00:00",
        "2026-02-29 00:00:00",  # not a leap year
        "2026-02-30 10:00:00",
        "2026-13-01 00:00:00",
        "2026-00-10 00:00:00",
        "2026-10-01 24:00:00",
        "2026-10-01 23:60:00",
        "2026-10-01 23:59:60",
        "0000-01-01 00:00:00",
    ],
)
def test_parse_cst_refuses_anything_but_the_national_format(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cst(text)


@settings(max_examples=200)
@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 31)))
def test_cst_string_round_trip(moment: datetime) -> None:
    text = moment.strftime("%Y-%m-%d %H:%M:%S")

    assert format_cst(parse_cst(text)) == text


@settings(max_examples=200)
@given(
    st.integers(int(datetime(1900, 1, 1, tzinfo=UTC).timestamp()), int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()))
)
def test_epoch_round_trip(epoch_seconds: int) -> None:
    assert parse_cst(format_cst(epoch_seconds)) == epoch_seconds


@settings(max_examples=200)
@given(st.dates(min_value=datetime(1970, 1, 2).date(), max_value=datetime(2199, 12, 31).date()))
def test_every_day_is_86400_seconds(day: object) -> None:
    midnight = parse_cst(f"{day} 00:00:00")

    assert parse_cst(f"{day} 23:59:59") - midnight == 86_399


def test_cst_round_trip_before_year_1000() -> None:
    assert format_cst(parse_cst("0999-12-31 23:59:59")) == "0999-12-31 23:59:59"


# --- Code formats -----------------------------------------------------------------------

NATIONAL = practitioner_code_pattern(DEFAULT_PRACTITIONER_PREFIXES)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("D510105000123", id="doctor"),
        pytest.param("N110105000017", id="nurse"),
        pytest.param("Y330522000001", id="pharmacist"),
        pytest.param("J820000000001", id="technician_macao"),
        pytest.param("HY110105000002", id="institution_pharmacy_staff"),
        pytest.param("HJ110105000002", id="institution_technical_staff"),
        pytest.param("D710000000001", id="province_71"),
        pytest.param("D650000000001", id="province_65"),
    ],
)
def test_national_practitioner_codes_accepted(code: str) -> None:
    assert NATIONAL.fullmatch(code)
    assert RegionPolicy().is_practitioner_code(code)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("009999", id="his_placeholder_009999"),
        pytest.param("D190", id="short_D190"),
        pytest.param("DOC001", id="his_local_DOC001"),
        pytest.param("", id="empty"),
        pytest.param("D990105000001", id="province_99"),
        pytest.param("D000105000001", id="province_00"),
        pytest.param("D160105000001", id="province_16"),
        pytest.param("D720105000001", id="province_72"),
        pytest.param("D11010500012", id="one_digit_short"),
        pytest.param("D1101050001234", id="one_digit_long"),
        pytest.param("d110105000123", id="lowercase_prefix"),
        pytest.param("X110105000123", id="unknown_prefix"),
        pytest.param("HX110105000123", id="unknown_two_letter_prefix"),
        pytest.param("HY11010500012", id="two_letter_prefix_one_digit_short"),
        pytest.param("DD110105000123", id="double_doctor_prefix"),
        pytest.param("D11010500012３", id="fullwidth_digit"),
        pytest.param("D11010500012٣", id="arabic_indic_digit"),
        pytest.param(" D110105000123", id="leading_space"),
        pytest.param("D110105000123\n", id="trailing_newline"),
        pytest.param("H41130200746", id="institution_code"),
        pytest.param("P33052200672", id="pharmacy_code"),
    ],
)
def test_malformed_practitioner_codes_refused(code: str) -> None:
    assert not NATIONAL.fullmatch(code)
    assert not RegionPolicy().is_practitioner_code(code)


@pytest.mark.parametrize(
    ("prefixes", "code", "accepted"),
    [
        pytest.param(("D",), "D110105000001", True, id="doctors_only_accepts_doctor"),
        pytest.param(("D",), "N110105000001", False, id="doctors_only_refuses_nurse"),
        pytest.param(("D",), "HY110105000001", False, id="doctors_only_refuses_hy"),
        pytest.param(("HY",), "Y110105000001", False, id="hy_does_not_accept_bare_y"),
        pytest.param(("Y",), "HY110105000001", False, id="y_does_not_accept_hy"),
        pytest.param(("H",), "H110105000001", True, id="a_new_single_letter"),
        pytest.param(("H", "HY"), "HY110105000001", True, id="longer_prefix_tried_too"),
        pytest.param(("H", "HY"), "H110105000001", True, id="shorter_prefix_still_works"),
        pytest.param(("YS",), "YS110105000001", True, id="a_new_two_letter_prefix"),
    ],
)
def test_practitioner_prefixes_are_configurable(prefixes: tuple[str, ...], code: str, accepted: bool) -> None:
    assert RegionPolicy(practitioner_prefixes=prefixes).is_practitioner_code(code) is accepted


@settings(max_examples=200)
@given(
    st.sampled_from(DEFAULT_PRACTITIONER_PREFIXES),
    st.sampled_from(PROVINCE_CODES),
    st.text(alphabet="0123456789", min_size=10, max_size=10),
)
def test_every_prefix_province_and_sequence_is_accepted(prefix: str, province: str, digits: str) -> None:
    assert RegionPolicy().is_practitioner_code(prefix + province + digits)


@settings(max_examples=200)
@given(st.integers(0, 99).map(lambda n: f"{n:02d}"), st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_province_digits_decide(province: str, digits: str) -> None:
    assert RegionPolicy().is_practitioner_code("D" + province + digits) is (province in PROVINCE_CODES)


def test_province_codes_are_the_national_list() -> None:
    expected = [*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55), *range(61, 66)]
    assert [str(n) for n in [*expected, 71, 81, 82]] == list(PROVINCE_CODES)


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        pytest.param("H41130200746", True, id="hospital"),
        pytest.param("P33052200672", True, id="retail_pharmacy"),
        pytest.param("H8200000000" + "1", True, id="macao"),
        pytest.param("H4113020074", False, id="short"),
        pytest.param("H411302007460", False, id="long"),
        pytest.param("H99130200746", False, id="province_99"),
        pytest.param("D41130200746", False, id="doctor_letter"),
        pytest.param("h41130200746", False, id="lowercase"),
        pytest.param("H4113020074６", False, id="fullwidth_digit"),
        pytest.param("", False, id="empty"),
    ],
)
def test_institution_codes(code: str, valid: bool) -> None:
    assert is_institution_code(code) is valid


def test_division_of_institution_code() -> None:
    assert division_of("H41130200746") == "411302"
    assert division_of("P33052200672") == "330522"


# --- Region policy ----------------------------------------------------------------------


def test_no_policy_means_domain_defaults() -> None:
    policy = load_policy(None)

    assert policy == Policy()
    region = policy.for_division("411302")
    assert region.mode is Mode.ENFORCE and region.enforced
    assert not region.emergency_exempts_termination
    assert region.practitioner_prefixes == ("D", "N", "Y", "J", "HY", "HJ")


def test_empty_policy_document_means_defaults() -> None:
    assert parse_policy({}) == Policy()


POLICY_TOML = """
[default]
mode = "monitor"

[regions."11"]
emergency_exempts_termination = true

[regions."41"]
mode = "enforce"

[regions."4113"]
practitioner_prefixes = ["D"]

[regions."411302"]
mode = "monitor"
"""


@pytest.mark.parametrize(
    ("division", "mode", "exempts_termination", "prefixes"),
    [
        pytest.param("110105", Mode.MONITOR, True, DEFAULT_PRACTITIONER_PREFIXES, id="region_inherits_default_mode"),
        pytest.param("410102", Mode.ENFORCE, False, DEFAULT_PRACTITIONER_PREFIXES, id="province_prefix"),
        pytest.param("411303", Mode.MONITOR, False, ("D",), id="city_prefix_beats_province"),
        pytest.param("411302", Mode.MONITOR, False, DEFAULT_PRACTITIONER_PREFIXES, id="full_division_is_longest"),
        pytest.param("330522", Mode.MONITOR, False, DEFAULT_PRACTITIONER_PREFIXES, id="no_match_is_default"),
        pytest.param("141130", Mode.MONITOR, False, DEFAULT_PRACTITIONER_PREFIXES, id="prefix_not_substring"),
    ],
)
def test_region_overrides_longest_prefix_wins(
    division: str, mode: Mode, exempts_termination: bool, prefixes: tuple[str, ...]
) -> None:
    region = parse_policy(tomllib.loads(POLICY_TOML)).for_division(division)

    assert (region.mode, region.emergency_exempts_termination, region.practitioner_prefixes) == (
        mode,
        exempts_termination,
        prefixes,
    )


def test_region_prefixes_change_what_is_well_formed() -> None:
    policy = parse_policy(tomllib.loads(POLICY_TOML))

    assert policy.for_division("411303").is_practitioner_code("D411303000001")
    assert not policy.for_division("411303").is_practitioner_code("N411303000001")
    assert policy.for_division("410102").is_practitioner_code("N411303000001")


def test_example_policy_file_loads() -> None:
    policy = load_policy(REPO / "policy.example.toml")

    assert policy.default == RegionPolicy()
    assert policy.for_division("110105").emergency_exempts_termination
    assert not policy.for_division("411302").enforced
    assert policy.for_division("410102").enforced


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"defaults": {}}, id="unknown_table"),
        pytest.param({"default": {"mode": "enforce", "colour": "red"}}, id="unknown_key_in_default"),
        pytest.param({"regions": {"41": {"emergency_exempts_suspension": True}}}, id="unknown_key_in_region"),
        pytest.param({"regions": {"41": {"code_format": "D.*"}}}, id="derived_field_not_settable"),
        pytest.param({"default": {"mode": "block"}}, id="bad_mode"),
        pytest.param({"default": {"mode": "Monitor"}}, id="mode_is_case_sensitive"),
        pytest.param({"regions": {"11": {"mode": ""}}}, id="empty_mode_in_region"),
        pytest.param({"default": {"mode": ["enforce"]}}, id="mode_not_a_string"),
        pytest.param({"default": {"emergency_exempts_termination": "yes"}}, id="exemption_not_bool"),
        pytest.param({"default": {"emergency_exempts_termination": 1}}, id="exemption_integer"),
        pytest.param({"default": {"practitioner_prefixes": []}}, id="no_prefixes"),
        pytest.param({"default": {"practitioner_prefixes": "D"}}, id="prefixes_not_a_list"),
        pytest.param({"default": {"practitioner_prefixes": ["d"]}}, id="lowercase_prefix"),
        pytest.param({"default": {"practitioner_prefixes": ["HYX"]}}, id="three_letter_prefix"),
        pytest.param({"default": {"practitioner_prefixes": ["D1"]}}, id="digit_in_prefix"),
        pytest.param({"default": {"practitioner_prefixes": [1]}}, id="prefix_not_a_string"),
        pytest.param({"regions": {"4": {}}}, id="region_one_digit"),
        pytest.param({"regions": {"4113021": {}}}, id="region_seven_digits"),
        pytest.param({"regions": {"4a": {}}}, id="region_not_digits"),
        pytest.param({"regions": {"41": "monitor"}}, id="region_not_a_table"),
    ],
)
def test_bad_policy_refused(document: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        parse_policy(document)


@pytest.mark.parametrize("text", ["default = 3", "regions = []"], ids=["default_is_an_integer", "regions_is_a_list"])
def test_policy_that_is_not_tables_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(tomllib.loads(text))


def test_unreadable_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[default\nmode = 'enforce'\n", encoding="utf-8")
    with pytest.raises(PolicyError):
        load_policy(broken)


# --- Enum numbers shared with the proto -------------------------------------------------


@pytest.mark.parametrize(
    ("enum", "proto", "prefix"),
    [
        pytest.param(rules.Reason, pb.Reason, "REASON_", id="Reason"),
        pytest.param(rules.Verdict, pb.Verdict, "VERDICT_", id="Verdict"),
        pytest.param(rules.ClaimVerdict, pb.ClaimVerdict, "CLAIM_VERDICT_", id="ClaimVerdict"),
    ],
)
def test_core_enums_have_the_proto_numbers(enum: type, proto: object, prefix: str) -> None:
    for member in enum:  # type: ignore[attr-defined]
        assert proto.Value(prefix + member.name) == member.value  # type: ignore[attr-defined]
    names = {name for name in proto.keys() if name != prefix + "UNSPECIFIED"}  # type: ignore[attr-defined]  # noqa: SIM118
    assert names == {prefix + member.name for member in enum}  # type: ignore[attr-defined]
    assert proto.Value(prefix + "UNSPECIFIED") == 0  # type: ignore[attr-defined]


def test_registry_statuses_have_the_proto_practitioner_status_numbers() -> None:
    for status in (Status.REGISTERED, Status.SUSPENDED, Status.TERMINATED):
        assert pb.PractitionerStatus.Value("PRACTITIONER_STATUS_" + status.name) == status.value


def test_a_division_gets_the_same_region_whether_remembered_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gatekeeper.core.policy.DIVISIONS_KEPT", 2)  # past it, what is remembered is dropped
    policy = parse_policy(tomllib.loads(POLICY_TOML))
    divisions = ["411303", "410102", "411302", "110105", "411303", "410102"]

    first = [policy.for_division(division) for division in divisions]
    again = [policy.for_division(division) for division in divisions]
    fresh = [parse_policy(tomllib.loads(POLICY_TOML)).for_division(division) for division in divisions]

    assert first == again == fresh
    assert policy == parse_policy(tomllib.loads(POLICY_TOML))  # what it remembers is not part of the policy
