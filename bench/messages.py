"""What the item messages cost per item, in process: the line fill_item adds, and the bytes on the wire.

No servers: a 10-item claim decision (one item blocked by a suspension, nine allowed) is
turned into a CheckClaimResponse as the servicer does; each figure is the best of several
timeit repeats of this process's CPU time, in nanoseconds per item.

    .venv/bin/python -m bench.messages [--number 200000]

Writes bench/results/messages.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import time
import timeit

from bench.harness import publish
from gatekeeper.api.servicer import claim_response
from gatekeeper.core.cst import parse_cst
from gatekeeper.core.messages import fill, item_message
from gatekeeper.core.policy import RegionPolicy
from gatekeeper.core.records import Status, StatusPeriod
from gatekeeper.core.rules import ClaimDecision, ClaimVerdict, ItemDecision, Reason, Verdict
from gatekeeper.v1 import gatekeeper_pb2 as pb

ITEMS = 10
SUSPENSION = StatusPeriod(
    Status.SUSPENDED,
    parse_cst("2026-10-01 00:00:00"),
    1,
    1,
    parse_cst("2027-01-01 00:00:00"),
    0,
    "年度累计记分9分,暂停医保支付资格3个月",
)
ALLOWED = ItemDecision("1", Verdict.ALLOW, Reason.OK, "", None, True, 2500)
BLOCKED = ItemDecision("2", Verdict.BLOCK, Reason.SUSPENDED, "D410102000002", SUSPENSION, True, 3850)


def per_item(statement: object, number: int) -> float:
    """Nanoseconds of this process's CPU per call of ``statement``, minus the cost of calling
    an empty one. CPU time, not wall time: the development machine is shared."""
    best = min(timeit.repeat(statement, number=number, repeat=7, timer=time.process_time))  # type: ignore[arg-type]
    empty = min(timeit.repeat(lambda: None, number=number, repeat=7, timer=time.process_time))
    return (best - empty) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timeit repeat (default: 200000)")
    args = parser.parse_args()
    wording = RegionPolicy().wording
    item = pb.ItemDecision()
    claim = ClaimDecision(ClaimVerdict.PARTIAL, (BLOCKED, *[ALLOWED] * (ITEMS - 1)), 22500, 3850, True)
    response = claim_response(claim, "0" * 32, "snapshot@1", wording)
    silent = pb.CheckClaimResponse()
    silent.CopyFrom(response)
    for each in silent.items:
        each.ClearField("message")

    def set_allowed() -> None:
        item.message = item_message(ALLOWED, wording)

    def set_blocked() -> None:
        item.message = item_message(BLOCKED, wording)

    figures = {
        "item_message, allowed item (the constant)": per_item(lambda: item_message(ALLOWED, wording), args.number),
        "item_message, blocked item (memoised)": per_item(lambda: item_message(BLOCKED, wording), args.number),
        "item_message, blocked item, filled afresh (a miss)": per_item(
            lambda: fill(BLOCKED, wording), args.number // 20
        ),
        "fill_item's added line, allowed item": per_item(set_allowed, args.number),
        "fill_item's added line, blocked item": per_item(set_blocked, args.number),
        "claim_response, whole 10-item claim, per item": per_item(
            lambda: claim_response(claim, "0" * 32, "snapshot@1", wording), args.number // 10
        )
        / ITEMS,
        "SerializeToString with messages, per item": per_item(response.SerializeToString, args.number // 10) / ITEMS,
        "SerializeToString without messages, per item": per_item(silent.SerializeToString, args.number // 10) / ITEMS,
    }
    sizes = {"with messages": response.ByteSize(), "without messages": silent.ByteSize()}
    lines = [
        "# Item messages: cost per item, in process",
        "",
        f"`python -m bench.messages --number {args.number}`, Python {platform.python_version()}; a 10-item claim,",
        "one item blocked by a suspension. Process CPU time, best of 7 timeit repeats, an empty call subtracted.",
        "",
        "| what | ns per item |",
        "|---|---|",
        *(f"| {name} | {value:,.0f} |" for name, value in figures.items()),
        "",
        f"Response size: {sizes['with messages']} bytes with messages, {sizes['without messages']} without.",
        "",
    ]
    results = {"ns_per_item": figures, "response_bytes": sizes, "python": platform.python_version()}
    publish("messages", results, "\n".join(lines))


if __name__ == "__main__":
    main()
