"""The metrics every RPC counts, as Prometheus reads them: buckets hold durations up to and
including their bound, cumulatively; claims and items add up by kind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.core.rules import ClaimVerdict, Reason, Verdict
from gatekeeper.ops import metrics

METHOD = "test.Service/Hot"
BOUNDS = ("0.0005", "0.001", "0.002", "0.005", "5.0", "+Inf")


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(REGISTRY).decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


@pytest.mark.parametrize(
    ("observe", "name"),
    [
        (metrics.observe_duration, "gatekeeper_rpc_duration_seconds"),
        (metrics.observe_http, "gatekeeper_http_duration_seconds"),
    ],
)
def test_a_duration_on_a_bound_is_in_that_bucket_and_every_bucket_above(
    observe: Callable[[str, str, float], None], name: str
) -> None:
    for seconds in (0.0005, 0.0004, 0.003, 0.002, 7.0):
        observe(METHOD, "OK", seconds)
    buckets = samples(f"{name}_bucket")
    assert [buckets[(("code", "OK"), ("le", le), ("method", METHOD))] for le in BOUNDS] == [2, 2, 3, 4, 4, 5]
    assert samples(f"{name}_count")[(("code", "OK"), ("method", METHOD))] == 5
    assert round(samples(f"{name}_sum")[(("code", "OK"), ("method", METHOD))], 6) == 7.0059


def test_claims_and_items_are_counted_by_kind() -> None:
    def counted() -> tuple[float, float]:
        items = samples("gatekeeper_item_decisions_total")
        claims = samples("gatekeeper_claim_decisions_total")
        blocked = items.get((("enforced", "false"), ("reason", "SUSPENDED"), ("verdict", "BLOCK")), 0.0)
        return claims.get((("verdict", "PARTIAL"),), 0.0), blocked

    claims_before, items_before = counted()
    kinds = {(Verdict.BLOCK, Reason.SUSPENDED, False): 3, (Verdict.ALLOW, Reason.OK, False): 2}
    metrics.count_claim(ClaimVerdict.PARTIAL, kinds)
    metrics.count_claim(ClaimVerdict.PARTIAL, kinds)
    assert counted() == (claims_before + 2, items_before + 6)
