"""Reporting expected errors to gRPC: each error's status, and one helper that ends the RPC with it."""

from __future__ import annotations

from typing import NoReturn

import grpc
from grpc import aio

from gatekeeper.core.errors import GatekeeperError


def status_code(error: GatekeeperError) -> grpc.StatusCode:
    """The gRPC status ``error`` is reported as."""
    return grpc.StatusCode[error.status]


async def abort(context: aio.ServicerContext, error: GatekeeperError) -> NoReturn:  # type: ignore[type-arg]
    """End the RPC with the error's status and message."""
    await context.abort(status_code(error), str(error))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
