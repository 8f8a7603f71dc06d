"""The common claim's path in C (gatekeeper/_speedups.c), where it was built; None where not.

Each function answers exactly as the Python it stands in for, or declines (None) and the
Python answers: the C handles only plain claims, whose practitioners have only ever been
registered, and whose items are all allowed. tests/unit/test_native.py holds each to its
Python on generated and mutated inputs.

- ``parse_claim(data, bounds)``: the Claim that ``claim_from_request`` makes of
  ``CheckClaimRequest.FromString(data)``, checked against the Python's own bounds
  (``validation.wire_bounds``; the province codes come from ``codes.PROVINCE_CODES``);
- ``decide_registered(items, records, codes, enforced)``: ``decide_claim``'s decision when
  every practitioner named (``codes``: those well-formed in the region) has only ever been
  registered, and is at the item's service time;
- ``encode_allowed(decision, decision_id, registry_version, ok_message)``: the serialized
  CheckClaimResponse of a decision that allows every item for reason OK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import Any

from gatekeeper.core.codes import PROVINCE_CODES
from gatekeeper.core.records import PractitionerRecord, StatusPeriod
from gatekeeper.core.rules import Claim, ClaimDecision, ClaimVerdict, Item, ItemDecision, Reason, Verdict

parse_claim: Callable[[bytes, tuple[int, ...]], Claim | None] | None = None
decide_registered: (
    Callable[[tuple[Item, ...], Mapping[str, PractitionerRecord], Set[str], bool], ClaimDecision | None] | None
) = None
encode_allowed: Callable[[ClaimDecision, str, str, str], bytes | None] | None = None

_speedups: Any
try:
    from gatekeeper import _speedups
except ImportError:  # built without a C compiler: the Python serves alone
    _speedups = None
else:
    _speedups.configure(
        Item,
        Claim,
        ItemDecision,
        ClaimDecision,
        PractitionerRecord,
        StatusPeriod,
        Verdict.ALLOW,
        Reason.OK,
        ClaimVerdict.ALLOW,
        PROVINCE_CODES,
    )
    parse_claim = _speedups.parse_claim
    decide_registered = _speedups.decide_registered
    encode_allowed = _speedups.encode_allowed

BUILT = _speedups is not None
