"""Region policy: enforce or monitor, the emergency exemption's reach, accepted code prefixes, degraded mode, words."""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from gatekeeper.core.codes import DEFAULT_PRACTITIONER_PREFIXES, PractitionerCodeFormat
from gatekeeper.core.wording import Language, TemplateError, Wording, check_template, compile_wording


class Mode(enum.Enum):
    """Whether a region's blocks are binding (enforce) or only recorded (monitor, 分步实施)."""

    ENFORCE = "enforce"
    MONITOR = "monitor"


class Unverified(enum.Enum):
    """What degraded mode does with an item whose practitioner's record could not be read."""

    ALLOW = "allow"  # settle it, marked REASON_UNVERIFIED with enforced = false, audited for review
    BLOCK = "block"  # block it with REASON_UNVERIFIED


class Unrecorded(enum.Enum):
    """What a claim gets when its decision cannot be recorded (the database and the spool
    both unwritable): a decision that cannot be recorded must not be settled unseen."""

    REFUSE = "refuse"  # UNAVAILABLE: the HIS retries, on another instance
    SETTLE = "settle"  # settle it unenforced (every item allowed, enforced = false), unrecorded


@dataclass(frozen=True)
class RegionPolicy:
    """The settings that decide claims for institutions of one region."""

    mode: Mode = Mode.ENFORCE
    # The national summary names the exemption for suspensions only; Beijing applies it
    # to terminations too.
    emergency_exempts_termination: bool = False
    practitioner_prefixes: tuple[str, ...] = DEFAULT_PRACTITIONER_PREFIXES
    # Degraded mode (the eligibility cache unreachable): settle unverified items by default.
    # A gatekeeper that blocks on its own outage stops every patient's settlement, while
    # barred practitioners are a few percent of the registry; each unverified item is
    # marked and audited, so a payment made in error can be recovered afterwards.
    unverified: Unverified = Unverified.ALLOW
    # The decision record unwritable: refuse the claim (the default) or settle it unenforced.
    unrecorded: Unrecorded = Unrecorded.REFUSE
    # Stand-in limit (like card networks' stand-in processing): at most this many
    # unverified items per institution per minute are settled, the rest are blocked.
    # 0: no limit. Counted per worker process.
    stand_in_per_minute: int = 0
    # The language of item messages, and templates in place of its built-in ones (by message:
    # "suspended", "ok", ...; see gatekeeper/core/wording.py).
    language: Language = Language.ZH
    messages: Mapping[str, str] = field(default_factory=dict)
    code_format: PractitionerCodeFormat = field(init=False, repr=False, compare=False)
    wording: Wording = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_format", PractitionerCodeFormat(self.practitioner_prefixes))
        wording = compile_wording(self.language, self.messages, self.emergency_exempts_termination)
        object.__setattr__(self, "wording", wording)

    @property
    def enforced(self) -> bool:
        """False in monitor mode."""
        return self.mode is Mode.ENFORCE

    def is_practitioner_code(self, code: str) -> bool:
        """True when ``code`` has a national practitioner format accepted in this region."""
        return self.code_format.matches(code)


# Divisions whose policy is remembered: claims come from a few thousand; emptied when full.
DIVISIONS_KEPT = 10_000


@dataclass(frozen=True)
class Policy:
    """The default region policy and overrides keyed by division-code prefixes ("41", "4113")."""

    default: RegionPolicy = RegionPolicy()
    regions: Mapping[str, RegionPolicy] = field(default_factory=dict)
    _of_division: dict[str, RegionPolicy] = field(default_factory=dict, init=False, repr=False, compare=False)

    def for_division(self, division: str) -> RegionPolicy:
        """The policy of the longest configured prefix of a 6-digit division code."""
        region = self._of_division.get(division)
        if region is None:
            region = self._longest_prefix(division)
            if len(self._of_division) >= DIVISIONS_KEPT:
                self._of_division.clear()
            self._of_division[division] = region
        return region

    def _longest_prefix(self, division: str) -> RegionPolicy:
        for length in range(len(division), 0, -1):
            region = self.regions.get(division[:length])
            if region is not None:
                return region
        return self.default


class PolicyError(ValueError):
    """A policy file that cannot be used."""


_KNOWN_KEYS = {f.name for f in fields(RegionPolicy) if f.init}


Choice = TypeVar("Choice", bound=enum.Enum)


def _choice(kind: type[Choice], value: object, where: str) -> Choice:
    """One of an enum's values, or a PolicyError listing them."""
    try:
        return kind(value)
    except ValueError:
        allowed = " or ".join(repr(member.value) for member in kind)
        raise PolicyError(f"{where}: expected {allowed}, got {value!r}") from None


def _region_from_table(base: RegionPolicy, table: object, where: str) -> RegionPolicy:
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}: expected a table of settings")
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    if "mode" in table:
        changes["mode"] = _choice(Mode, table["mode"], f"{where}.mode")
    if "emergency_exempts_termination" in table:
        value = table["emergency_exempts_termination"]
        if not isinstance(value, bool):
            raise PolicyError(f"{where}.emergency_exempts_termination: expected true or false")
        changes["emergency_exempts_termination"] = value
    if "practitioner_prefixes" in table:
        prefixes = table["practitioner_prefixes"]
        if (
            not isinstance(prefixes, list)
            or not prefixes
            or not all(isinstance(p, str) and re.fullmatch("[A-Z]{1,2}", p) for p in prefixes)
        ):
            raise PolicyError(f"{where}.practitioner_prefixes: expected a list of one or two capital letters")
        changes["practitioner_prefixes"] = tuple(prefixes)
    if "unverified" in table:
        changes["unverified"] = _choice(Unverified, table["unverified"], f"{where}.unverified")
    if "unrecorded" in table:
        changes["unrecorded"] = _choice(Unrecorded, table["unrecorded"], f"{where}.unrecorded")
    if "stand_in_per_minute" in table:
        limit = table["stand_in_per_minute"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise PolicyError(f"{where}.stand_in_per_minute: expected a whole number, 0 for no limit")
        changes["stand_in_per_minute"] = limit
    if "language" in table:
        changes["language"] = _choice(Language, table["language"], f"{where}.language")
    own = _messages_from_table(table["messages"], f"{where}.messages") if "messages" in table else {}
    if changes.get("language", base.language) is not base.language:
        # Templates are words of one language: a region that speaks another does not inherit them.
        changes["messages"] = own
    elif own:
        changes["messages"] = {**base.messages, **own}
    return replace(base, **changes)


def _messages_from_table(table: object, where: str) -> dict[str, str]:
    """Message templates, each checked, or a PolicyError naming the first bad one."""
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}: expected a table of message templates")
    messages = {}
    for key, template in table.items():
        try:
            messages[key] = check_template(key, template)
        except TemplateError as error:
            raise PolicyError(f"{where}.{key}: {error}") from None
    return messages


def parse_policy(document: Mapping[str, Any]) -> Policy:
    """Build a policy from a parsed TOML document (see ``policy.example.toml``)."""
    unknown = set(document) - {"default", "regions"}
    if unknown:
        raise PolicyError(f"unknown table(s) {', '.join(sorted(unknown))}")
    default = _region_from_table(RegionPolicy(), document.get("default", {}), "default")
    region_tables = document.get("regions", {})
    if not isinstance(region_tables, Mapping):
        raise PolicyError("regions: expected a table of regions")
    regions: dict[str, RegionPolicy] = {}
    for prefix, table in region_tables.items():
        if not re.fullmatch("[0-9]{2,6}", prefix):
            raise PolicyError(f"regions.{prefix}: a region is 2 to 6 digits of the division code")
        regions[prefix] = _region_from_table(default, table, f"regions.{prefix}")
    return Policy(default=default, regions=regions)


def load_policy(path: Path | None) -> Policy:
    """Read a policy file; no file means the defaults of DOMAIN.md."""
    if path is None:
        return Policy()
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PolicyError(f"{path}: {error}") from error
    return parse_policy(document)
