"""Redis key names of the eligibility cache: built here and nowhere else.

Layout (see docs/cache-layout.md):

- ``{gk}:meta`` (hash): the current generation and what it was loaded from.
- ``{gk}:loading``, ``{gk}:changes``, ``{gk}:generations``, ``{gk}:follow:after``: the
  loader's bookkeeping, below.
- ``{gk}:g<generation>:b<bucket>`` (hash): practitioner code -> encoded record, for the
  codes whose :func:`bucket_of` is ``bucket``; plus the field :data:`BUCKET_SENTINEL`,
  present in every bucket of a complete generation.
- ``{gk}:g<generation>:c<bucket>`` (hash): the generation's chg_id index, chg_id -> where its
  period lives, for the chg_ids whose :func:`chg_bucket_of` is ``bucket``. Only the
  loader's Redis Functions read it; they find an indexed code's bucket key by replacing
  the number after ``:b`` in a bucket key of the same generation.

Every key carries the hash tag ``{gk}``, so in a Redis Cluster they all live in one slot
(docs/cache-layout.md, "Redis Cluster"): each loader Function call touches one slot, a
claim's pipeline is one round trip to one node, and the snapshot switch stays a single
atomic command. Redis holds nothing the loader cannot rebuild: the decision record lives
in PostgreSQL (gatekeeper/audit/).
"""

from __future__ import annotations

import zlib

# The hash tag every key starts with: Redis Cluster hashes only what is inside the braces,
# so the whole cache is in one slot (the Functions need their keys in one slot).
PREFIX = "{gk}"
META = f"{PREFIX}:meta"
GENERATION_COUNTER = f"{PREFIX}:generation-counter"
GENERATIONS = f"{PREFIX}:generations"  # every generation not yet dropped
# "<generation> <buckets> <watermark_seq> <token>" of a snapshot being loaded, with a
# lease (PX): the snapshot lock, and where changes are written besides the current one.
LOADING = f"{PREFIX}:loading"
# Stream of applied changes and snapshot switches: the change notification readers
# follow, and the log a snapshot load replays (see docs/cache-layout.md).
CHANGES = f"{PREFIX}:changes"
FOLLOW_CURSOR = f"{PREFIX}:follow:after"  # the last feed seq `follow` applied

# A field present in every bucket of a complete generation: a reader that gets nil for
# it knows the generation is gone (switched and dropped mid-read) and reads again.
BUCKET_SENTINEL = "~"

# Target practitioners per bucket: small enough for listpack encoding, large enough that
# the per-key overhead (~90 bytes) costs about one byte per practitioner.
PRACTITIONERS_PER_BUCKET = 48


class MetaField:
    """Field names of the ``{gk}:meta`` hash."""

    GENERATION = "generation"
    BUCKETS = "buckets"
    SNAPSHOT_ID = "snapshot_id"
    WATERMARK_SEQ = "watermark_seq"
    APPLIED_SEQ = "applied_seq"  # the snapshot's watermark or the highest change applied since
    CHANGE_SEQ = "change_seq"  # the highest seq ever applied from the change feed
    RECORD_COUNT = "record_count"
    SWITCHED_AT = "switched_at"
    CHG_INDEX = "chg_index"  # "1" once the generation has a chg_id index (gk_apply refuses one without)


def bucket_key(generation: int, bucket: int) -> str:
    """The hash holding one bucket of one generation."""
    return f"{PREFIX}:g{generation}:b{bucket}"


def chg_index_key(generation: int, bucket: int) -> str:
    """The hash indexing one bucket of one generation's chg_ids (dropped with the generation)."""
    return f"{PREFIX}:g{generation}:c{bucket}"


def generation_pattern(generation: int) -> str:
    """A SCAN pattern matching every key of one generation."""
    return f"{PREFIX}:g{generation}:*"


def bucket_of(code: str, buckets: int) -> int:
    """Which bucket a practitioner code lives in."""
    return zlib.crc32(code.encode("utf-8")) % buckets


def chg_bucket_of(chg_id: str, buckets: int) -> int:
    """Which chg_id index hash a registry chg_id is in."""
    return zlib.crc32(chg_id.encode("utf-8")) % buckets


def bucket_count_for(practitioners: int) -> int:
    """How many buckets a generation of ``practitioners`` codes gets."""
    return max(1, -(-practitioners // PRACTITIONERS_PER_BUCKET))
