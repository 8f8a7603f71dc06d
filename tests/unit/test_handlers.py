"""The admission around every RPC: undecodable bytes, expired deadlines and requests that
do not arrive in time never reach the servicer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

from gatekeeper.api.admission import Admission, ReadDeadlines, Undecodable, tolerant
from gatekeeper.api.handlers import claim_or_message
from gatekeeper.api.validation import Limits
from gatekeeper.core import native
from gatekeeper.core.rules import Claim
from gatekeeper.v1 import gatekeeper_pb2 as pb


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.aio.ServicerContext the admission uses; ``read`` answers ``request``
    (never, when it is None)."""

    def __init__(self, request: Any, time_remaining: float | None = None) -> None:
        self._request = request
        self._remaining = time_remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> Any:
        if self._request is None:
            await asyncio.Event().wait()
        return self._request

    def time_remaining(self) -> float | None:
        return self._remaining

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


def handled(context: Context, admission: Admission | None = None) -> list[Any]:
    """Serve one RPC through the admission; the requests the behaviour saw."""
    seen: list[Any] = []

    async def behaviour(request: Any, _context: Any) -> pb.CheckClaimResponse:
        seen.append(request)
        return pb.CheckClaimResponse(decision_id="d")

    admission = admission or Admission(max_concurrent_rpcs=4, request_read_seconds=0.2)
    handler = admission.handler(
        behaviour, "gatekeeper.v1.Gatekeeper/CheckClaim", bytes, bytes, request_type="gatekeeper.v1.CheckClaimRequest"
    )

    async def serve() -> None:
        with contextlib.suppress(Aborted):
            await handler.stream_unary(None, context)  # type: ignore[arg-type,misc]

    asyncio.run(serve())
    return seen


def test_a_request_whose_deadline_has_passed_is_not_worked_on() -> None:
    context = Context(pb.CheckClaimRequest(claim_id="c"), time_remaining=-0.01)
    assert handled(context) == []
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("remaining", [None, 0.5], ids=["no_deadline", "time_left"])
def test_a_request_with_time_left_is_worked_on(remaining: float | None) -> None:
    context = Context(pb.CheckClaimRequest(claim_id="c"), remaining)
    assert [r.claim_id for r in handled(context)] == ["c"] and context.aborted is None


def test_undecodable_bytes_become_invalid_argument() -> None:
    request = tolerant(pb.CheckClaimRequest.FromString)(b"\xff\xff")
    assert isinstance(request, Undecodable)
    context = Context(request, 1.0)
    assert handled(context) == []
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert context.aborted[1].startswith("request: not a valid gatekeeper.v1.CheckClaimRequest message")


def test_valid_bytes_decode_as_usual() -> None:
    message = pb.CheckClaimRequest(claim_id="c")
    assert tolerant(pb.CheckClaimRequest.FromString)(message.SerializeToString()) == message


def test_a_request_that_does_not_arrive_in_time_is_deadline_exceeded_and_frees_its_slot() -> None:
    admission = Admission(max_concurrent_rpcs=1, request_read_seconds=0.1)
    context = Context(None)
    assert handled(context, admission) == []
    assert context.aborted == (grpc.StatusCode.DEADLINE_EXCEEDED, "request: not received in full within 0.1 s")
    assert admission.active == 0
    assert [r.claim_id for r in handled(Context(pb.CheckClaimRequest(claim_id="next")), admission)] == ["next"]


def test_reads_are_cancelled_only_once_their_time_is_up() -> None:
    async def scenario() -> tuple[list[str | float], bool]:
        deadlines = ReadDeadlines(0.3)
        loop = asyncio.get_running_loop()
        outcomes: list[str | float] = []

        async def read(context: Context) -> None:
            started = loop.time()
            try:
                outcomes.append(await deadlines.read(context))  # type: ignore[arg-type]
            except TimeoutError:
                outcomes.append(loop.time() - started)

        fast = Context("fast")
        await asyncio.gather(read(fast), read(Context(None)))  # the second request never arrives
        return outcomes, deadlines._sweeper is None  # the sweeper stops with nothing to watch

    outcomes, stopped = asyncio.run(scenario())
    assert outcomes[0] == "fast"
    waited = outcomes[1]
    assert isinstance(waited, float) and 0.3 <= waited < 0.3 + 0.5  # the limit, plus a sweep and a busy machine
    assert stopped


def test_a_full_admission_refuses_with_resource_exhausted() -> None:
    admission = Admission(max_concurrent_rpcs=1, request_read_seconds=1.0)
    admission.active = 1  # another RPC holds the only slot
    context = Context(pb.CheckClaimRequest(claim_id="c"))
    assert handled(context, admission) == []
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert admission.active == 1


def test_checkclaim_parser_reads_a_plain_request_in_c_unless_the_c_path_is_off() -> None:
    request = pb.CheckClaimRequest(
        claim_id="C1",
        fixmedins_code="H41130200746",
        items=[pb.LineItem(feedetl_sn="1", fee_ocur_time="2026-11-20 08:00:00", bilg_dr_codg="D410102000002")],
    )
    data = request.SerializeToString()
    assert claim_or_message(Limits(), c_path=False)(data) == request
    parsed = claim_or_message(Limits())(data)
    assert isinstance(parsed, Claim) if native.BUILT else parsed == request
