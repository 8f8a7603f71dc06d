"""The gRPC servicer: a thin adapter between protobuf messages and the decision core."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import NoReturn

from grpc import aio

from gatekeeper.api.callers import ANONYMOUS, ANYONE, Caller, Callers, caller_from_auth_context
from gatekeeper.api.errors import abort, status_code
from gatekeeper.api.validation import Limits, claim_from_request, institution_code, practitioner_code, service_time
from gatekeeper.audit.writer import DecisionLog
from gatekeeper.core import native
from gatekeeper.core.codes import division_of
from gatekeeper.core.cst import format_cst
from gatekeeper.core.eligibility import EligibilityStore, Lookup, version_seq
from gatekeeper.core.errors import CacheUnavailable, GatekeeperError, InvalidArgument, RegistryBehind, Unrecordable
from gatekeeper.core.messages import item_message
from gatekeeper.core.policy import Policy, RegionPolicy, Unrecorded
from gatekeeper.core.records import MAX_CHG_REA_LENGTH, OPEN_ENDED, StatusPeriod
from gatekeeper.core.rules import (
    Claim,
    ClaimDecision,
    ItemDecision,
    PractitionerView,
    Reason,
    Verdict,
    decide_claim,
    describe_practitioner,
    unenforced,
)
from gatekeeper.core.standin import StandInLimiter
from gatekeeper.core.wording import Wording
from gatekeeper.ops import metrics
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
DEFAULT_LIMITS = Limits()

_STATUS_OF_REASON = {
    Reason.OK: pb.PRACTITIONER_STATUS_REGISTERED,
    Reason.SUSPENDED: pb.PRACTITIONER_STATUS_SUSPENDED,
    Reason.TERMINATED: pb.PRACTITIONER_STATUS_TERMINATED,
    Reason.UNREGISTERED: pb.PRACTITIONER_STATUS_UNREGISTERED,
    Reason.MALFORMED_CODE: pb.PRACTITIONER_STATUS_MALFORMED,
}


def _time_text(epoch_seconds: int) -> str:
    return "" if epoch_seconds == OPEN_ENDED else format_cst(epoch_seconds)


def fill_item(message: pb.ItemDecision, decision: ItemDecision, wording: Wording) -> None:
    """Write one item decision into ``message`` (one added to a response's items in place:
    cheaper than building each with keyword arguments and copying it in), its text in the
    region's ``wording``."""
    message.feedetl_sn = decision.feedetl_sn
    message.verdict = decision.verdict  # type: ignore[assignment]  # an IntEnum with the proto's numbers
    message.reason = decision.reason  # type: ignore[assignment]
    message.prac_psn_code = decision.prac_psn_code
    message.enforced = decision.enforced
    message.amount_fen = decision.amount_fen
    message.message = item_message(decision, wording)
    window = decision.window
    if window is not None:
        message.begntime = format_cst(window.begntime)
        message.endtime = _time_text(window.endtime)
        # A record stored by an older loader (or by hand) may hold any length: never let one
        # multiply through every item of a claim.
        message.chg_rea = window.chg_rea[:MAX_CHG_REA_LENGTH]


def new_decision_id() -> str:
    """A random 128-bit decision id (hex); cheaper than uuid4 on the hot path."""
    return os.urandom(16).hex()


def fill_claim_response(
    message: pb.CheckClaimResponse, decision: ClaimDecision, decision_id: str, registry_version: str, wording: Wording
) -> pb.CheckClaimResponse:
    """Write a claim decision into ``message`` (a new one, or one inside a batch result)."""
    message.decision_id = decision_id
    message.registry_version = registry_version
    message.verdict = decision.verdict  # type: ignore[assignment]
    message.allowed_amount_fen = decision.allowed_amount_fen
    message.blocked_amount_fen = decision.blocked_amount_fen
    message.enforced = decision.enforced
    add = message.items.add
    for item in decision.items:
        fill_item(add(), item, wording)
    return message


def claim_response(
    decision: ClaimDecision, decision_id: str, registry_version: str, wording: Wording
) -> pb.CheckClaimResponse:
    """The protobuf form of a claim decision, its item messages in the region's ``wording``."""
    return fill_claim_response(pb.CheckClaimResponse(), decision, decision_id, registry_version, wording)


def window_message(period: StatusPeriod) -> pb.StatusWindow:
    """The protobuf form of a status period."""
    return pb.StatusWindow(
        status=period.status,  # type: ignore[arg-type]
        begntime=format_cst(period.begntime),
        endtime=_time_text(period.endtime),
        ban_endtime=_time_text(period.ban_endtime),
        chg_rea=period.chg_rea[:MAX_CHG_REA_LENGTH],
    )


def claim_error(error: GatekeeperError) -> pb.ClaimError:
    """A claim's error inside a batch, with the status it would have had alone."""
    return pb.ClaimError(code=status_code(error).value[0], message=str(error))


def practitioner_response(
    code: str, prac_psn_type: int, view: PractitionerView, at_time: str, registry_version: str
) -> pb.GetPractitionerResponse:
    """The protobuf form of a practitioner's standing."""
    response = pb.GetPractitionerResponse(
        prac_psn_code=code,
        prac_psn_type=str(prac_psn_type) if prac_psn_type else "",
        status=_STATUS_OF_REASON[view.standing.reason],
        may_bill=view.may_bill,
        may_bill_emergency=view.may_bill_emergency,
        upcoming=[window_message(p) for p in view.upcoming],
        at_time=at_time,
        registry_version=registry_version,
    )
    if view.current is not None:
        response.current.CopyFrom(window_message(view.current))
    return response


async def fail(
    context: aio.ServicerContext,  # type: ignore[type-arg]
    method: str,
    error: Exception,
    decision_id: str = "",
) -> NoReturn:
    """End a failed RPC: an expected error with its own status; anything else (a bug, or an
    error that is INTERNAL by nature, such as an undecodable cache record) logged with a
    traceback and answered INTERNAL without details."""
    if isinstance(error, GatekeeperError) and error.status != "INTERNAL":
        await abort(context, error)
    log.error("%s failed", method, exc_info=error, extra={"decision_id": decision_id} if decision_id else None)
    await abort(
        context, GatekeeperError(f"internal error; decision id {decision_id}" if decision_id else "internal error")
    )


def min_seq_of(version: str, field: str = "min_registry_version") -> int:
    """The registry seq a request demands (0: none), or InvalidArgument."""
    if not version:
        return 0
    try:
        return version_seq(version)
    except ValueError as error:
        raise InvalidArgument(field, str(error)) from None


# Says who is calling (or raises Unauthenticated): asked only when callers are checked.
CallerOf = Callable[[], Caller]


def _grpc_caller(context: aio.ServicerContext) -> CallerOf:  # type: ignore[type-arg]
    """Who calls an RPC, from its TLS connection's auth context."""
    return lambda: caller_from_auth_context(context.auth_context())


class GatekeeperServicer(pb_grpc.GatekeeperServicer):
    """Decides claims with the records of an injected store under a region policy."""

    def __init__(
        self,
        store: EligibilityStore,
        policy: Policy,
        audit: DecisionLog,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        callers: Callers = ANYONE,
        stand_in: StandInLimiter | None = None,
        c_path: bool = True,
    ) -> None:
        self._store = store
        self._policy = policy
        self._limits = limits
        self._clock = clock
        self._callers = callers
        self._stand_in = stand_in or StandInLimiter(time.monotonic)
        self._audit = audit  # every decision is recorded: there is no servicer without one
        # The plain claim's path in C (core/native.py), unless built without it or turned off.
        self._decide_registered = native.decide_registered if c_path else None
        self._encode_allowed = native.encode_allowed if c_path else None

    def _region(self, fixmedins_code: str) -> RegionPolicy:
        return self._policy.for_division(division_of(fixmedins_code))

    def _identify(self, caller: CallerOf) -> Caller:
        """Who is calling, from the client certificate; not looked at when callers are not checked."""
        return caller() if self._callers.identifies else ANONYMOUS

    def _prepare(self, claim: Claim, caller: Caller) -> tuple[RegionPolicy, set[str]]:
        """Authorize a validated claim's caller: the claim's region policy, and the codes to
        look up (those well-formed in the region)."""
        self._callers.authorize(caller, claim.fixmedins_code)
        region = self._region(claim.fixmedins_code)
        named = {c for item in claim.items for c in item.practitioners}  # a few, each on many items
        return region, {c for c in named if region.is_practitioner_code(c)}

    def _decide(
        self, claim: Claim, region: RegionPolicy, codes: set[str], lookup: Lookup
    ) -> tuple[ClaimDecision, bool]:
        """Decide a claim, and say whether it is plain: every item allowed for reason OK by
        the C path (core/native.py). In degraded mode, within the institution's stand-in
        limit. ``codes``: the claim's codes well-formed in the region."""
        if not lookup.unverified:
            if self._decide_registered is not None:
                decision = self._decide_registered(claim.items, lookup.records, codes, region.enforced)
                if decision is not None:
                    return decision, True
            return decide_claim(claim, lookup.records, region), False
        institution, limit = claim.fixmedins_code, region.stand_in_per_minute
        allowance = self._stand_in.available(institution, limit)
        decision = decide_claim(claim, lookup.records, region, lookup.unverified, allowance)
        self._stand_in.take(institution, limit, decision.stood_in)
        return decision, False

    def _recorded(
        self,
        decision_id: str,
        claim: Claim,
        region: RegionPolicy,
        decided: tuple[ClaimDecision, bool],
        registry_version: str,
    ) -> ClaimDecision:
        """Hand a decision (from :meth:`_decide`) to the record and count the decision
        answered; when it cannot be recorded, what the region's policy says: Unrecordable
        (refuse), or the decision settled unenforced."""
        decision, plain = decided
        if not self._audit.record(decision_id, claim, decision, registry_version, self._clock()):
            if region.unrecorded is Unrecorded.REFUSE:
                metrics.UNRECORDED.labels("refused").inc()
                raise Unrecordable()
            metrics.UNRECORDED.labels("settled").inc()
            decision = unenforced(decision)  # still plain if it was: allowed for reason OK, unenforced
        items = decision.items
        kinds: Mapping[tuple[int, int, bool], int]
        if plain:
            kinds = {(Verdict.ALLOW, Reason.OK, decision.enforced): len(items)}
        else:
            kinds = Counter([(item.verdict, item.reason, item.enforced) for item in items])
        metrics.count_claim(decision.verdict, kinds)
        return decision

    # The decision path, shared by the gRPC methods below and the JSON-over-HTTP door
    # (gatekeeper/api/http_json.py): each takes the request message and a function that says
    # who is calling (asked only when callers are checked, and only when needed), and raises
    # an expected error (GatekeeperError) or a bug; the door reports it in its own way.

    async def _decision(
        self, claim: Claim, min_version: str, caller: CallerOf, decision_id: str
    ) -> tuple[ClaimDecision, str, RegionPolicy]:
        """Decide a validated claim and hand it to the record: the decision, the registry
        version it was made against, and the region's policy."""
        region, codes = self._prepare(claim, self._identify(caller))
        lookup = await self._store.lookup(codes, min_seq_of(min_version))
        version = lookup.registry_version
        decision = self._recorded(decision_id, claim, region, self._decide(claim, region, codes, lookup), version)
        return decision, version, region

    async def check_claim(
        self, request: pb.CheckClaimRequest, caller: CallerOf, decision_id: str, *, sized: bool = False
    ) -> pb.CheckClaimResponse:
        """Decide one claim (``sized``: its size was checked when it arrived)."""
        claim = claim_from_request(request, self._limits, sized=sized)
        decision, version, region = await self._decision(claim, request.min_registry_version, caller, decision_id)
        return claim_response(decision, decision_id, version, region.wording)

    async def check_claims(self, request: pb.CheckClaimsRequest, caller: CallerOf) -> pb.CheckClaimsResponse:
        """Decide each claim as check_claim would, with one lookup for the whole batch."""
        if len(request.claims) > self._limits.max_batch_claims:
            count, most = len(request.claims), self._limits.max_batch_claims
            raise InvalidArgument("claims", f"has {count} claims, more than the maximum of {most}")
        batch_min_seq = min_seq_of(request.min_registry_version)
        who = self._identify(caller)
        prepared: list[tuple[Claim, RegionPolicy, set[str], int] | GatekeeperError] = []
        codes: set[str] = set()
        for claim_request in request.claims:
            try:
                claim = claim_from_request(claim_request, self._limits)
                region, claim_codes = self._prepare(claim, who)
                min_seq = min_seq_of(claim_request.min_registry_version)
            except GatekeeperError as error:
                prepared.append(error)
                continue
            prepared.append((claim, region, claim_codes, max(min_seq, batch_min_seq)))
            codes |= claim_codes
        demanded = max((p[3] for p in prepared if not isinstance(p, GatekeeperError)), default=0)
        try:
            lookup = await self._store.lookup(codes, demanded)
        except RegistryBehind:
            # Some claims demand more than the cache has: decide the others.
            lookup = await self._store.lookup(codes, batch_min_seq)
        # Results are added to the response in place: a response built from a list of them
        # would copy each one (a twentieth of a batch's CPU).
        version = lookup.registry_version
        response = pb.CheckClaimsResponse()
        add = response.results.add
        for claim_request, item in zip(request.claims, prepared, strict=True):
            result = add(claim_id=claim_request.claim_id)
            if isinstance(item, GatekeeperError):
                result.error.CopyFrom(claim_error(item))
            elif item[3] > lookup.applied_seq:
                result.error.CopyFrom(claim_error(RegistryBehind(item[3], lookup.applied_seq)))
            else:
                claim, region, claim_codes, _ = item
                decision_id = new_decision_id()
                try:
                    decided = self._decide(claim, region, claim_codes, lookup)
                    decision = self._recorded(decision_id, claim, region, decided, version)
                except Unrecordable as error:
                    result.error.CopyFrom(claim_error(error))
                else:
                    fill_claim_response(result.response, decision, decision_id, version, region.wording)
        return response

    async def get_practitioner(
        self, request: pb.GetPractitionerRequest, caller: CallerOf
    ) -> pb.GetPractitionerResponse:
        """One practitioner's standing at a time (default now)."""
        code = practitioner_code(request.prac_psn_code)
        moment = service_time(request.at_time, "at_time") if request.at_time else int(self._clock())
        region = self._policy.default
        if request.fixmedins_code:
            institution = institution_code(request.fixmedins_code)
            self._callers.authorize(self._identify(caller), institution)
            region = self._region(institution)
        min_seq = min_seq_of(request.min_registry_version)
        lookup = await self._store.lookup([code] if region.is_practitioner_code(code) else [], min_seq)
        if code in lookup.unverified:  # degraded mode, and no recent record of this code held
            raise CacheUnavailable("eligibility cache unavailable: the practitioner's status cannot be checked")
        record = lookup.records.get(code)
        view = describe_practitioner(code, record, moment, region)
        prac_psn_type = record.prac_psn_type if record is not None else 0
        return practitioner_response(code, prac_psn_type, view, format_cst(moment), lookup.registry_version)

    async def CheckClaim(  # noqa: N802 - the gRPC method name
        self,
        request: Claim | pb.CheckClaimRequest,
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.CheckClaimResponse | bytes:
        decision_id = new_decision_id()
        try:
            if isinstance(request, Claim):  # a plain request, validated as it was read (api/handlers.py)
                decision, version, region = await self._decision(request, "", _grpc_caller(context), decision_id)
                if self._encode_allowed is not None:
                    encoded = self._encode_allowed(decision, decision_id, version, region.wording.ok)
                    if encoded is not None:  # every item allowed
                        return encoded
                return claim_response(decision, decision_id, version, region.wording)
            # Its size was checked before it was decoded (api/handlers.py).
            return await self.check_claim(request, _grpc_caller(context), decision_id, sized=True)
        except Exception as error:
            await fail(context, "CheckClaim", error, decision_id)

    async def CheckClaims(  # noqa: N802 - the gRPC method name
        self,
        request: pb.CheckClaimsRequest,
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.CheckClaimsResponse:
        try:
            return await self.check_claims(request, _grpc_caller(context))
        except Exception as error:
            await fail(context, "CheckClaims", error)

    async def GetPractitioner(  # noqa: N802 - the gRPC method name
        self,
        request: pb.GetPractitionerRequest,
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> pb.GetPractitionerResponse:
        try:
            return await self.get_practitioner(request, _grpc_caller(context))
        except Exception as error:
            await fail(context, "GetPractitioner", error)
