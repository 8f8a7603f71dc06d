"""Redis key names of the eligibility cache: built here and nowhere else.

Layout (see docs/cache-layout.md):

- ``{gk}:meta`` (hash): the current generation and what it was loaded from.
- ``{gk}:loading``, ``{gk}:changes``, ``{gk}:generations``, ``{gk}:follow:after``: the
  loader's bookkeeping, below.
- ``{gk}:g<generation>:b<bucket>`` (hash): practitioner code -> encoded record, for the
  codes whose :func:`bucket_of` is ``bucket``; plus the field :data:`BUCKET_SENTINEL`,
  present in every bucket of a complete generation.
- ``{gk}:g<generation>:c<n>`` (string): one piece of the generation's chg_id index, which
  bucket holds the period of each chg_id whose :func:`chg_bucket_of` is ``n``, as
  :data:`INDEX_ENTRY_BYTES`-byte entries (:func:`index_entry`). Only the loader reads and
  writes it (its Redis Functions find a bucket's key by replacing the number after ``:b``
  in a bucket key of the same generation).

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
# "<host> <pid> <token>" of the `follow` applying changes, with a lease (PX): one at a time,
# any other waits as its standby.
FOLLOWING = f"{PREFIX}:following"

# A field present in every bucket of a complete generation: a reader that gets nil for
# it knows the generation is gone (switched and dropped mid-read) and reads again.
BUCKET_SENTINEL = "~"

# Target practitioners per bucket: small enough for listpack encoding, large enough that
# the per-key overhead (~90 bytes) costs about one byte per practitioner.
PRACTITIONERS_PER_BUCKET = 64
# Buckets per piece of the chg_id index: about 400 entries, 2 KB, a piece (its ~100 bytes
# of key overhead a quarter of a byte an entry; one merge copies and searches one piece).
BUCKETS_PER_INDEX_PIECE = 8
# An index entry: the chg_id's tag (2 bytes, chg_tag_of), then the bucket number of the
# code holding its period (3 bytes, big-endian): so at most 2**24 buckets.
INDEX_ENTRY_BYTES = 5
MAX_BUCKETS = 1 << 24


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
    # The layout of the generation's records and chg_id index: CHG_INDEX_LAYOUT once records
    # hold their chg_ids whole and the index says where each lives (gk_apply refuses others).
    CHG_INDEX = "chg_index"


CHG_INDEX_LAYOUT = "2"  # "1" was the index of chg_id -> [code, bucket, seq] hashes


def bucket_key(generation: int, bucket: int) -> str:
    """The hash holding one bucket of one generation."""
    return f"{PREFIX}:g{generation}:b{bucket}"


def chg_index_key(generation: int, piece: int) -> str:
    """One piece of a generation's chg_id index (dropped with the generation)."""
    return f"{PREFIX}:g{generation}:c{piece}"


def generation_pattern(generation: int) -> str:
    """A SCAN pattern matching every key of one generation."""
    return f"{PREFIX}:g{generation}:*"


def bucket_of(code: str, buckets: int) -> int:
    """Which bucket a practitioner code lives in."""
    return zlib.crc32(code.encode("utf-8")) % buckets


def index_pieces(buckets: int) -> int:
    """How many pieces the chg_id index of a generation of ``buckets`` buckets has."""
    return -(-buckets // BUCKETS_PER_INDEX_PIECE)


def chg_bucket_of(chg_id: str, buckets: int) -> int:
    """Which piece of the chg_id index (of a generation of ``buckets``) a chg_id is in."""
    return zlib.crc32(chg_id.encode("utf-8")) % index_pieces(buckets)


def chg_tag_of(chg_id: str) -> bytes:
    """The 2 bytes that stand for a chg_id in its piece of the index. Other chg_ids of the
    piece may share them: an entry says where to look, the record there says whose it is."""
    return tag_of_crc(zlib.crc32(chg_id.encode("utf-8")))


def tag_of_crc(crc: int) -> bytes:
    """:func:`chg_tag_of` from the chg_id's CRC-32: the top 16 bits of the CRC times the
    golden ratio, which its piece (the CRC modulo the piece count) does not predict."""
    return (((crc * 0x9E3779B1) & 0xFFFFFFFF) >> 16).to_bytes(2, "big")


def index_entry(tag: bytes, bucket: int) -> bytes:
    """An entry of the chg_id index: a chg_id's tag and the bucket of the code holding it."""
    return tag + bucket.to_bytes(3, "big")


def bucket_count_for(practitioners: int) -> int:
    """How many buckets a generation of ``practitioners`` codes gets (at most MAX_BUCKETS - 1,
    about 800 million practitioners: the index entries number buckets in 3 bytes)."""
    return min(MAX_BUCKETS - 1, max(1, -(-practitioners // PRACTITIONERS_PER_BUCKET)))
