"""The words of item messages: built-in templates per language, their placeholders, overrides checked once."""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass


class Language(enum.Enum):
    """The language of a region's item messages."""

    ZH = "zh"  # zh-CN, the default: what a cashier in China reads
    EN = "en"


# A template that long is a mistake, and it would be repeated on every item of a claim.
MAX_TEMPLATE_LENGTH = 200

_IDENTITY = frozenset({"role", "code"})
_WINDOW = frozenset({"window", "begntime", "endtime"})

# Every message a region can word, and the placeholders each may use. A message per reason;
# unverified items have two (settled or blocked), and "monitor" wraps the wording of a
# block that was not applied (monitor mode, or settled because it could not be recorded).
PLACEHOLDERS: Mapping[str, frozenset[str]] = {
    "ok": frozenset(),
    "emergency_exempt": _IDENTITY | _WINDOW | {"status"},
    "suspended": _IDENTITY | _WINDOW,
    "terminated": _IDENTITY | _WINDOW,
    "unregistered": _IDENTITY,
    "malformed_code": _IDENTITY,
    "missing_practitioner": frozenset({"role"}),
    "unverified": _IDENTITY,
    "unverified_blocked": _IDENTITY,
    "monitor": frozenset({"message"}),
}

# The official terms are those of the national guideline (医保发〔2024〕23号): 医保支付资格暂停
# and 终止, 不予结算, 急诊、抢救除外; 登记备案; 医保相关人员代码.
_ZH = {
    "ok": "审核通过",
    "emergency_exempt": "{role} {code} 医保支付资格{status}（{window}），本项目属急诊、抢救，予以医保结算",
    "suspended": "{role} {code} 医保支付资格暂停（{window}），本项目不予医保结算；急诊、抢救除外",
    "terminated": "{role} {code} 医保支付资格终止（{window}），本项目不予医保结算",
    "unregistered": "{role} {code} 服务发生时未在医保登记备案，本项目不予医保结算",
    "malformed_code": "{role}代码 {code} 不符合国家医保相关人员代码格式，本项目不予医保结算",
    "missing_practitioner": "未填写{role}代码，本项目不予医保结算",
    "unverified": "{role} {code} 医保支付资格暂时无法核验，本项目先予结算，事后复核",
    "unverified_blocked": "{role} {code} 医保支付资格暂时无法核验，本项目暂不予医保结算，请稍后重试",
    "monitor": "【仅提示，照常结算】{message}",
}
_EN = {
    "ok": "Approved",
    "emergency_exempt": (
        "Settled as emergency or rescue care: the {role} {code} has payment qualification {status} ({window})"
    ),
    "suspended": (
        "Not settled: the {role} {code} has payment qualification suspended ({window}); "
        "emergency and rescue care excepted"
    ),
    "terminated": "Not settled: the {role} {code} has payment qualification terminated ({window})",
    "unregistered": "Not settled: the {role} {code} was not registered with medical insurance at the service time",
    "malformed_code": "Not settled: the {role} code {code} is not a national practitioner code",
    "missing_practitioner": "Not settled: the {role} code is missing",
    "unverified": (
        "Settled unverified: the {role} {code}'s payment qualification cannot be checked now; the item will be reviewed"
    ),
    "unverified_blocked": (
        "Not settled for now: the {role} {code}'s payment qualification cannot be checked; try again later"
    ),
    "monitor": "[Notice only, settled as usual] {message}",
}
# Where the region applies the emergency exemption to terminations too, the termination's
# message says so, as the suspension's does.
_TERMINATED_EXEMPT = {
    Language.ZH: "{role} {code} 医保支付资格终止（{window}），本项目不予医保结算；急诊、抢救除外",
    Language.EN: (
        "Not settled: the {role} {code} has payment qualification terminated ({window}); "
        "emergency and rescue care excepted"
    ),
}


@dataclass(frozen=True, eq=False)
class Wording:
    """A region's words: one template per message, and the phrases its placeholders take.

    Compared by identity: it is built once per region when the policy is loaded, and the
    filled messages are memoised per wording.
    """

    templates: Mapping[str, str]
    ok: str  # the "ok" template, which has no placeholders: the message of most items
    ordering: str  # {role} for bilg_dr_codg
    executing: str  # {role} for orders_dr_code
    suspended: str  # {status}
    terminated: str
    window: str  # {window} with an end: {begin} and {end}
    open_window: str  # {window} without one: {begin}
    open_end: str  # {endtime} without one


_PHRASES = {
    Language.ZH: {
        "ordering": "开单医生",
        "executing": "受单医生",
        "suspended": "暂停",
        "terminated": "终止",
        "window": "{begin} 至 {end}",
        "open_window": "{begin} 起",
        "open_end": "长期",
    },
    Language.EN: {
        "ordering": "ordering doctor",
        "executing": "executing doctor",
        "suspended": "suspended",
        "terminated": "terminated",
        "window": "{begin} to {end}",
        "open_window": "from {begin}, no end date",
        "open_end": "no end date",
    },
}


class TemplateError(ValueError):
    """A message template that cannot be used; the text says why, the caller says where."""


def check_template(key: str, template: object) -> str:
    """``template`` when it is text that uses only the placeholders of message ``key``;
    TemplateError otherwise (an unknown key, a placeholder the message has not, a format
    spec or an attribute: a template is filled with plain text, nothing more)."""
    allowed = PLACEHOLDERS.get(key)
    if allowed is None:
        raise TemplateError(f"unknown message; expected one of {', '.join(PLACEHOLDERS)}")
    if not isinstance(template, str):
        raise TemplateError("expected a text")
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise TemplateError(f"is longer than {MAX_TEMPLATE_LENGTH} characters")
    usable = ", ".join(f"{{{name}}}" for name in sorted(allowed))
    usable = f"this message may use {usable}" if usable else "this message takes none"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        raise TemplateError("a brace without its pair; write {{ and }} for literal braces") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed:
            raise TemplateError(f"unknown placeholder {{{name}}}; {usable}")
        if spec or conversion:
            raise TemplateError(f"placeholder {{{name}}} takes no format or conversion")
    return template


def compile_wording(language: Language, overrides: Mapping[str, str], emergency_exempts_termination: bool) -> Wording:
    """A region's wording: the built-in templates of ``language``, with ``overrides`` (each
    checked) in their place."""
    templates = dict(_ZH if language is Language.ZH else _EN)
    if emergency_exempts_termination:
        templates["terminated"] = _TERMINATED_EXEMPT[language]
    for key, template in overrides.items():
        templates[key] = check_template(key, template)
    return Wording(templates=templates, ok=templates["ok"], **_PHRASES[language])
