"""The ceiling server: the gatekeeper's contract with a CheckClaim that checks nothing.

It parses the request and returns a prebuilt 10-item response, so what it costs per call
is the gRPC stack's own cost on this machine: the floor the gatekeeper is measured against.

    .venv/bin/python -m bench.ceiling --listen 127.0.0.1:50100 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from grpc import aio

from gatekeeper.server import run_workers, stop_event
from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

log = logging.getLogger("ceiling")
APPROVED = "审核通过"  # what the gatekeeper says of an item allowed without remark (core/wording.py)


def constant_response(items: int = 10) -> pb.CheckClaimResponse:
    """A response shaped like the gatekeeper's for an all-clear claim (the cashier's words included)."""
    return pb.CheckClaimResponse(
        decision_id="0" * 32,
        registry_version="ceiling@0",
        verdict=pb.CLAIM_VERDICT_ALLOW,
        allowed_amount_fen=1000 * items,
        items=[
            pb.ItemDecision(
                feedetl_sn=str(n), verdict=pb.VERDICT_ALLOW, reason=pb.REASON_OK, enforced=True, message=APPROVED
            )
            for n in range(items)
        ],
        enforced=True,
    )


class CeilingServicer(pb_grpc.GatekeeperServicer):
    """Answers every claim with the same response."""

    def __init__(self) -> None:
        self._response = constant_response()

    async def CheckClaim(self, request: pb.CheckClaimRequest, context: object) -> pb.CheckClaimResponse:  # noqa: N802
        return self._response


async def serve(listen: str, reuse_port: bool) -> None:
    stopping = stop_event()
    server = aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    pb_grpc.add_GatekeeperServicer_to_server(CeilingServicer(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    log.info("ceiling pid %d listening on port %d", os.getpid(), port)
    await stopping.wait()
    await server.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:50100")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_workers(args.workers, lambda _index: asyncio.run(serve(args.listen, args.workers > 1)))


if __name__ == "__main__":
    sys.exit(main())
