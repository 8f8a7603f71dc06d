"""Words for the cashier: the message on each item decision, per reason, role, window and region policy."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from builders import at, claim, item, record, registered, suspended, terminated

from gatekeeper.core import messages
from gatekeeper.core.messages import item_message
from gatekeeper.core.policy import Mode, PolicyError, RegionPolicy, Unverified, load_policy, parse_policy
from gatekeeper.core.records import PractitionerRecord, Status, StatusPeriod
from gatekeeper.core.rules import ItemDecision, Reason, Role, Verdict, decide_claim, decide_item, unenforced
from gatekeeper.core.wording import PLACEHOLDERS, Language, TemplateError, check_template, compile_wording

REPO = Path(__file__).resolve().parents[2]

ENFORCE = RegionPolicy()
MONITOR = RegionPolicy(mode=Mode.MONITOR)
BEIJING = RegionPolicy(emergency_exempts_termination=True)  # the exemption reaches terminations
ENGLISH = RegionPolicy(language=Language.EN)

REGULAR = "D110105000001"
SUSPENDED = "D410102000002"  # suspended [2026-10-01, 2027-01-01)
TERMINATED = "D410102000003"  # terminated from 2026-06-01, open-ended
MIDDAY = "D410102000004"  # suspended [2026-10-01 08:30, 2026-10-15 12:00)
UNKNOWN = "D110105999999"
SERVICE = "2026-11-20 09:00:00"

REGISTRY: dict[str, PractitionerRecord] = {
    REGULAR: record(registered("2020-01-01 00:00:00", chg_id="R1")),
    SUSPENDED: record(
        registered("2019-05-01 00:00:00", chg_id="R2"),
        suspended("2026-10-01 00:00:00", "2027-01-01 00:00:00", chg_id="S2"),
    ),
    TERMINATED: record(
        registered("2018-03-01 00:00:00", "2026-06-01 00:00:00", chg_id="R3"),
        terminated("2026-06-01 00:00:00", chg_id="T3"),
    ),
    MIDDAY: record(
        registered("2019-05-01 00:00:00", chg_id="R4"),
        suspended("2026-10-01 08:30:00", "2026-10-15 12:00:00", chg_id="S4"),
    ),
}


def message_for(*practitioners: str, policy: RegionPolicy = ENFORCE, when: str = SERVICE, **flags: bool) -> str:
    """The message a line item served at ``when`` by ``practitioners`` (ordering first) gets."""
    decision = decide_item(item(when, *practitioners, **flags), REGISTRY, policy)
    return item_message(decision, policy.wording)


# --- Each reason's words (zh-CN, the default) ----------------------------------------------


def test_an_allowed_item_is_approved() -> None:
    assert message_for(REGULAR) == "审核通过"


def test_a_suspension_blocks_with_its_window_and_names_the_emergency_exemption() -> None:
    assert message_for(SUSPENDED) == (
        "开单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），本项目不予医保结算；急诊、抢救除外"
    )


def test_the_executing_doctor_is_named_as_such() -> None:
    assert message_for(REGULAR, SUSPENDED) == (
        "受单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），本项目不予医保结算；急诊、抢救除外"
    )


def test_a_code_in_both_fields_is_named_as_the_ordering_doctor() -> None:
    assert message_for(SUSPENDED, SUSPENDED).startswith("开单医生 D410102000002 ")


def test_an_open_ended_termination_says_from_when_and_no_exemption() -> None:
    assert message_for(TERMINATED) == "开单医生 D410102000003 医保支付资格终止（2026-06-01 起），本项目不予医保结算"


def test_a_termination_names_the_exemption_where_the_region_applies_it() -> None:
    assert message_for(TERMINATED, policy=BEIJING) == (
        "开单医生 D410102000003 医保支付资格终止（2026-06-01 起），本项目不予医保结算；急诊、抢救除外"
    )


def test_an_exempt_emergency_item_says_it_is_settled_and_why() -> None:
    assert message_for(SUSPENDED, emergency=True) == (
        "开单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），本项目属急诊、抢救，予以医保结算"
    )
    assert message_for(TERMINATED, policy=BEIJING, emergency=True) == (
        "开单医生 D410102000003 医保支付资格终止（2026-06-01 起），本项目属急诊、抢救，予以医保结算"
    )


def test_an_unregistered_code_is_blocked_as_not_registered_at_the_service_time() -> None:
    assert message_for(UNKNOWN) == "开单医生 D110105999999 服务发生时未在医保登记备案，本项目不予医保结算"


def test_a_malformed_code_is_named_as_sent() -> None:
    assert message_for("DOC001") == "开单医生代码 DOC001 不符合国家医保相关人员代码格式，本项目不予医保结算"
    assert message_for(REGULAR, "009999").startswith("受单医生代码 009999 ")


def test_a_code_that_looks_like_a_placeholder_is_shown_as_sent_not_filled() -> None:
    # Codes come from the HIS; a template is filled once, and its values are never read as templates.
    assert message_for("{window}") == "开单医生代码 {window} 不符合国家医保相关人员代码格式，本项目不予医保结算"
    assert message_for(REGULAR, "{0.__class__}").startswith("受单医生代码 {0.__class__} 不符合")


def test_a_missing_ordering_doctor_is_asked_for() -> None:
    assert message_for("") == "未填写开单医生代码，本项目不予医保结算"


def test_an_unverified_item_says_whether_it_was_settled() -> None:
    region = ENFORCE
    settled = decide_item(item(SERVICE, UNKNOWN), {}, region, frozenset({UNKNOWN}))
    refused = decide_item(item(SERVICE, UNKNOWN), {}, RegionPolicy(unverified=Unverified.BLOCK), frozenset({UNKNOWN}))

    assert item_message(settled, region.wording) == (
        "开单医生 D110105999999 医保支付资格暂时无法核验，本项目先予结算，事后复核"
    )
    assert item_message(refused, region.wording) == (
        "开单医生 D110105999999 医保支付资格暂时无法核验，本项目暂不予医保结算，请稍后重试"
    )


def test_monitor_mode_gives_the_blocks_words_marked_as_a_notice_only() -> None:
    assert message_for(SUSPENDED, policy=MONITOR) == (
        "【仅提示，照常结算】开单医生 D410102000002 医保支付资格暂停（2026-10-01 至 2027-01-01），"
        "本项目不予医保结算；急诊、抢救除外"
    )
    assert message_for(REGULAR, policy=MONITOR) == "审核通过"


def test_a_block_settled_because_it_could_not_be_recorded_is_a_notice_too() -> None:
    decision = unenforced(decide_claim(claim(item(SERVICE, UNKNOWN)), REGISTRY, ENFORCE))

    assert item_message(decision.items[0], ENFORCE.wording) == (
        "【仅提示，照常结算】开单医生 D110105999999 服务发生时未在医保登记备案，本项目不予医保结算"
    )


# --- Windows: China Standard Time, whole days as dates ------------------------------------


def test_window_bounds_are_cst_dates_and_times_only_when_not_midnight() -> None:
    # 2026-10-01 08:30 CST is 2026-10-01 00:30 UTC; a UTC rendering would say 00:30:00.
    assert message_for(MIDDAY, when="2026-10-02 09:00:00") == (
        "开单医生 D410102000004 医保支付资格暂停（2026-10-01 08:30:00 至 2026-10-15 12:00:00），"
        "本项目不予医保结算；急诊、抢救除外"
    )


def test_a_window_starting_at_cst_midnight_is_that_cst_date() -> None:
    # 2026-10-01 00:00 CST is 2026-09-30 16:00 UTC.
    window = StatusPeriod(Status.SUSPENDED, at("2026-10-01 00:00:00"), 1, 1, at("2026-10-08 00:00:00"))
    decision = ItemDecision("1", Verdict.BLOCK, Reason.SUSPENDED, SUSPENDED, window, True, 100)

    assert "（2026-10-01 至 2026-10-08）" in item_message(decision, ENFORCE.wording)


# --- English, where the policy says so ------------------------------------------------------


@pytest.mark.parametrize(
    ("practitioners", "flags", "expected"),
    [
        pytest.param((REGULAR,), {}, "Approved", id="ok"),
        pytest.param(
            (SUSPENDED,),
            {},
            "Not settled: the ordering doctor D410102000002 has payment qualification suspended "
            "(2026-10-01 to 2027-01-01); emergency and rescue care excepted",
            id="suspended",
        ),
        pytest.param(
            (REGULAR, TERMINATED),
            {},
            "Not settled: the executing doctor D410102000003 has payment qualification terminated "
            "(from 2026-06-01, no end date)",
            id="terminated_open_ended",
        ),
        pytest.param(
            (SUSPENDED,),
            {"emergency": True},
            "Settled as emergency or rescue care: the ordering doctor D410102000002 has payment qualification "
            "suspended (2026-10-01 to 2027-01-01)",
            id="emergency_exempt",
        ),
        pytest.param(
            ("DOC001",),
            {},
            "Not settled: the ordering doctor code DOC001 is not a national practitioner code",
            id="malformed",
        ),
        pytest.param(("",), {}, "Not settled: the ordering doctor code is missing", id="missing"),
    ],
)
def test_english_where_the_policy_says_so(
    practitioners: tuple[str, ...], flags: dict[str, bool], expected: str
) -> None:
    assert message_for(*practitioners, policy=ENGLISH, **flags) == expected


def test_the_language_is_set_in_the_policy_file_per_region() -> None:
    policy = parse_policy(tomllib.loads('[regions."81"]\nlanguage = "en"\n'))

    assert policy.for_division("810000").language is Language.EN
    assert message_for(UNKNOWN, policy=policy.for_division("810000")).startswith("Not settled: the ordering doctor")
    assert message_for(UNKNOWN, policy=policy.for_division("410102")).startswith("开单医生")


# --- Overrides in the policy file -----------------------------------------------------------

OVERRIDES = """
[default.messages]
suspended = "{role}{code}暂停医保支付资格至{endtime}，请改由其他医师开单"
ok = ""

[regions."41".messages]
terminated = "{role}{code}已终止医保支付资格（{begntime}起）"

[regions."81"]
language = "en"
"""


def test_a_policy_override_replaces_the_built_in_words() -> None:
    policy = parse_policy(tomllib.loads(OVERRIDES)).for_division("110105")

    expected = "开单医生D410102000002暂停医保支付资格至2027-01-01，请改由其他医师开单"
    assert message_for(SUSPENDED, policy=policy) == expected
    assert message_for(REGULAR, policy=policy) == ""  # a region may send nothing for allowed items
    assert message_for(TERMINATED, policy=policy).endswith("本项目不予医保结算")  # not overridden: built in


def test_a_region_inherits_the_default_overrides_and_adds_its_own() -> None:
    region = parse_policy(tomllib.loads(OVERRIDES)).for_division("410102")

    assert message_for(TERMINATED, policy=region) == "开单医生D410102000003已终止医保支付资格（2026-06-01起）"
    assert message_for(SUSPENDED, policy=region).endswith("请改由其他医师开单")


def test_a_region_in_another_language_does_not_inherit_words_of_the_default_language() -> None:
    region = parse_policy(tomllib.loads(OVERRIDES)).for_division("810000")

    assert message_for(REGULAR, policy=region) == "Approved"
    assert message_for(SUSPENDED, policy=region).startswith("Not settled: the ordering doctor")


def test_the_example_policy_file_words_loaded_as_written() -> None:
    policy = load_policy(REPO / "policy.example.toml")

    assert policy.default.language is Language.ZH
    assert policy.default.wording.ok == "审核通过"
    assert policy.for_division("469002").language is Language.EN
    assert policy.for_division("469002").wording.ok == "Approved"  # not the default's zh override


@pytest.mark.parametrize(
    ("table", "error"),
    [
        pytest.param(
            "[default.messages]\nsuspend = 'x'",
            "default.messages.suspend: unknown message; expected one of ok, emergency_exempt, suspended, terminated, "
            "unregistered, malformed_code, missing_practitioner, unverified, unverified_blocked, monitor",
            id="unknown_reason",
        ),
        pytest.param(
            "[default.messages]\nsuspended = '{doctor} 暂停'",
            "default.messages.suspended: unknown placeholder {doctor}; "
            "this message may use {begntime}, {code}, {endtime}, {role}, {window}",
            id="unknown_placeholder",
        ),
        pytest.param(
            "[regions.'41'.messages]\nunregistered = '{role} {code} {window}'",
            "regions.41.messages.unregistered: unknown placeholder {window}; this message may use {code}, {role}",
            id="placeholder_the_message_has_not",
        ),
        pytest.param(
            "[default.messages]\nok = '{code}'",
            "default.messages.ok: unknown placeholder {code}; this message takes none",
            id="ok_takes_no_placeholders",
        ),
        pytest.param(
            "[default.messages]\nsuspended = '{code.__class__}'",
            "default.messages.suspended: unknown placeholder {code.__class__}; "
            "this message may use {begntime}, {code}, {endtime}, {role}, {window}",
            id="attribute_access",
        ),
        pytest.param(
            "[default.messages]\nsuspended = '{code:>20}'",
            "default.messages.suspended: placeholder {code} takes no format or conversion",
            id="format_spec",
        ),
        pytest.param(
            "[default.messages]\nok = '审核{通过'",
            "default.messages.ok: a brace without its pair; write {{ and }} for literal braces",
            id="unbalanced_brace",
        ),
        pytest.param(
            "[default.messages]\nok = '审核}通过'",
            "default.messages.ok: a brace without its pair; write {{ and }} for literal braces",
            id="lone_closing_brace",
        ),
        pytest.param("[default.messages]\nok = 1", "default.messages.ok: expected a text", id="not_a_text"),
        pytest.param(
            "[default]\nmessages = 'x'", "default.messages: expected a table of message templates", id="not_a_table"
        ),
        pytest.param(
            f"[default.messages]\nok = '{'长' * 201}'",
            "default.messages.ok: is longer than 200 characters",
            id="too_long",
        ),
        pytest.param(
            "[default]\nlanguage = 'zh-CN'", "default.language: expected 'zh' or 'en', got 'zh-CN'", id="language"
        ),
    ],
)
def test_a_bad_template_is_refused_in_one_line_naming_the_key(table: str, error: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(tomllib.loads(table))

    assert str(refused.value) == error


def test_a_literal_brace_is_written_twice() -> None:
    policy = parse_policy(tomllib.loads("[default.messages]\nunregistered = '{{{code}}} 未备案'")).default

    assert message_for(UNKNOWN, policy=policy) == "{D110105999999} 未备案"


# --- Every reason has words, in every language ----------------------------------------------


@pytest.mark.parametrize("language", list(Language))
def test_every_built_in_template_is_valid_and_there_is_one_per_message(language: Language) -> None:
    for exempt in (False, True):
        wording = compile_wording(language, {}, exempt)
        assert set(wording.templates) == set(PLACEHOLDERS)
        for key, template in wording.templates.items():
            assert check_template(key, template) == template


@pytest.mark.parametrize("policy", [ENFORCE, MONITOR, BEIJING, ENGLISH, RegionPolicy(unverified=Unverified.BLOCK)])
@pytest.mark.parametrize(
    "practitioners", [(REGULAR,), (SUSPENDED,), (TERMINATED,), (UNKNOWN,), ("DOC001",), ("",), (REGULAR, SUSPENDED)]
)
@pytest.mark.parametrize("emergency", [False, True])
def test_every_decision_gets_words_with_every_placeholder_filled(
    policy: RegionPolicy, practitioners: tuple[str, ...], emergency: bool
) -> None:
    text = message_for(*practitioners, policy=policy, emergency=emergency)

    assert text
    assert "{" not in text


def test_an_unknown_message_key_is_refused_by_the_template_check() -> None:
    with pytest.raises(TemplateError):
        check_template("blocked", "x")


# --- Formatted once per distinct decision, in a bounded memo ---------------------------------


def test_a_message_is_filled_once_and_then_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    filled: list[ItemDecision] = []
    real_fill = messages.fill

    def counting_fill(decision: ItemDecision, wording: object) -> str:
        filled.append(decision)
        return real_fill(decision, wording)  # type: ignore[arg-type]

    monkeypatch.setattr(messages, "fill", counting_fill)
    monkeypatch.setattr(messages, "_FILLED", {})
    first = message_for(SUSPENDED)
    again = [message_for(SUSPENDED, when=f"2026-11-{day} 09:00:00") for day in range(10, 20)]

    assert len(filled) == 1
    assert set(again) == {first}


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "_FILLED", {})
    monkeypatch.setattr(messages, "FILLED_KEPT", 8)
    texts = [message_for(f"D1101059{n:05d}") for n in range(50)]

    assert len(messages._FILLED) <= 8
    assert texts[0] == message_for("D110105900000")  # refilled after the memo was emptied


def test_the_role_of_a_decision_is_the_field_that_named_its_practitioner() -> None:
    assert decide_item(item(SERVICE, SUSPENDED, REGULAR), REGISTRY, ENFORCE).role is Role.ORDERING
    assert decide_item(item(SERVICE, REGULAR, SUSPENDED), REGISTRY, ENFORCE).role is Role.EXECUTING
