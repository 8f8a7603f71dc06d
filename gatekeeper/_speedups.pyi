# The C extension gatekeeper/_speedups.c: its functions, typed for mypy (gatekeeper/core/native.py).
from collections.abc import Mapping, Set
from typing import Any

def configure(
    item: type,
    claim: type,
    item_decision: type,
    claim_decision: type,
    practitioner_record: type,
    status_period: type,
    allow: Any,
    ok: Any,
    claim_allow: Any,
    province_codes: tuple[str, ...],
) -> None: ...
def parse_claim(data: bytes, bounds: tuple[int, ...]) -> Any | None: ...
def decide_registered(
    items: tuple[Any, ...], records: Mapping[str, Any], codes: Set[str], enforced: bool
) -> Any | None: ...
def encode_allowed(decision: Any, decision_id: str, registry_version: str, ok_message: str) -> bytes | None: ...
