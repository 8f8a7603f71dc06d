"""The guards around every RPC: undecodable bytes and expired deadlines never reach the servicer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

from gatekeeper.api.handlers import Undecodable, _guarded, _tolerant
from gatekeeper.v1 import gatekeeper_pb2 as pb


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.aio.ServicerContext the guards use."""

    def __init__(self, time_remaining: float | None) -> None:
        self._remaining = time_remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self._remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


def handled(request: Any, context: Context) -> tuple[list[Any], Context]:
    seen: list[Any] = []

    async def behaviour(request: Any, _context: Any) -> pb.CheckClaimResponse:
        seen.append(request)
        return pb.CheckClaimResponse(decision_id="d")

    guarded = _guarded(behaviour, "gatekeeper.v1.CheckClaimRequest")
    with contextlib.suppress(Aborted):
        asyncio.run(guarded(request, context))  # type: ignore[arg-type]
    return seen, context


def test_a_request_whose_deadline_has_passed_is_not_worked_on() -> None:
    seen, context = handled(pb.CheckClaimRequest(claim_id="c"), Context(time_remaining=-0.01))
    assert seen == []
    assert context.aborted is not None and context.aborted[0] is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("remaining", [None, 0.5], ids=["no_deadline", "time_left"])
def test_a_request_with_time_left_is_worked_on(remaining: float | None) -> None:
    seen, context = handled(pb.CheckClaimRequest(claim_id="c"), Context(remaining))
    assert [r.claim_id for r in seen] == ["c"] and context.aborted is None


def test_undecodable_bytes_become_invalid_argument() -> None:
    request = _tolerant(pb.CheckClaimRequest.FromString)(b"\xff\xff")
    assert isinstance(request, Undecodable)
    seen, context = handled(request, Context(1.0))
    assert seen == []
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert context.aborted[1].startswith("request: not a valid gatekeeper.v1.CheckClaimRequest message")


def test_valid_bytes_decode_as_usual() -> None:
    message = pb.CheckClaimRequest(claim_id="c")
    assert _tolerant(pb.CheckClaimRequest.FromString)(message.SerializeToString()) == message
