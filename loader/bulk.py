"""A snapshot's first rows of each code and chg_id, written with one HSET per bucket.

Most snapshot rows are the only row of their code and of their chg_id: merging them is
writing them. Such a row is written as it is, gathered with the others of its bucket into
one plain HSET (and its index entry with the others of its piece of the chg_id index into
one SET), which costs Redis a fifth of a gk_insert row. Every other row goes through gk_insert afterwards, in the
file's order. That gives what merging every row in the file's order gives: a row written
early touches a code and a chg_id that no earlier row named, so it commutes with every
row before it (docs/cache-layout.md, "Snapshot load").
"""

from __future__ import annotations

import pickle
import struct
import tempfile
from array import array
from collections import defaultdict
from collections.abc import Iterator

from gatekeeper.cache import keys
from loader.chunks import Batch, ParsedChunk, Target, pack_batch
from loader.rows import EncodedRow

# Bits of each FirstRows filter: a row is sent to gk_insert when its code's two bits or its
# chg_id's two bits are all set already, so a fuller filter sends more rows the slow way,
# never a wrong one. 2**27 bits (16 MiB each) end a 15-million-row snapshot with about 21 %
# of each filter's bits set; with two bits a value, about 3 % of first rows take the slow way
# (with one, 11 % of the bits set, about 7 % did: 1.1 million of 16 million rows).
MAX_FILTER_BITS = 1 << 27
FILTER_BITS_PER_ROW = 16
PARTITIONS = 128  # ranges of buckets the first rows are spilled in: 1/128 of them in memory at the end
SPILL_BYTES = 1 << 17  # of one partition's fields held before they are spilled
_ENTRY = struct.Struct("<II")  # a gathered field's bucket and length, before its bytes


def second_bit(crc: int, mask: int) -> int:
    """A value's second bit in a filter of ``mask + 1`` bits (a power of two): the top bits
    of its CRC-32 times the golden ratio, which the first bit (``crc & mask``) does not
    predict."""
    return ((crc * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - mask.bit_length())


def python_split_first(
    codes: bytearray, chg_ids: bytearray, mask: int, code_crcs: array[int], chg_crcs: array[int]
) -> tuple[list[int], list[int], list[int]]:
    """The positions of the rows whose code and chg_id each have a bit still clear in their
    filter (``crc & mask`` and :func:`second_bit`), of the others, and of those others whose
    chg_id has a bit still clear, each in order; every row's bits are set."""
    first: list[int] = []
    others: list[int] = []
    new_chg_ids: list[int] = []
    for position, (code_crc, chg_crc) in enumerate(zip(code_crcs, chg_crcs, strict=True)):
        seen = []  # the code's bits, then the chg_id's, all set before this row
        for bits, crc in ((codes, code_crc), (chg_ids, chg_crc)):
            one, two = crc & mask, second_bit(crc, mask)
            seen.append(bool(bits[one >> 3] & 1 << (one & 7)) and bool(bits[two >> 3] & 1 << (two & 7)))
            bits[one >> 3] |= 1 << (one & 7)
            bits[two >> 3] |= 1 << (two & 7)
        code_seen, chg_id_seen = seen
        if code_seen or chg_id_seen:
            others.append(position)
            if not chg_id_seen:
                new_chg_ids.append(position)
        else:
            first.append(position)
    return first, others, new_chg_ids


def python_gather(
    positions: list[int],
    buckets: array[int],
    width: int,
    fields: bytes,
    offsets: array[int],
    pending: list[bytearray],
    base: int,
) -> None:
    """Append the fields of each row at ``positions`` (``fields[offsets[i]:offsets[i + 1]]``),
    behind its bucket and their length, to ``pending[base + bucket // width]``."""
    for position in positions:
        bucket, start, end = buckets[position], offsets[position], offsets[position + 1]
        gathered = pending[base + bucket // width]
        gathered += _ENTRY.pack(bucket, end - start)
        gathered += fields[start:end]


def python_grouped(gathered: bytes | bytearray) -> list[tuple[int, int, bytes]]:
    """What :func:`python_gather` appended, as (bucket, field count, the fields joined), by bucket
    number, each bucket's fields in the order gathered."""
    by_bucket: defaultdict[int, list[bytes]] = defaultdict(list)
    data = memoryview(gathered)
    offset = 0
    while offset < len(data):
        if len(data) - offset < _ENTRY.size:
            raise ValueError("grouped: an entry runs past the end")
        bucket, size = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        if size > len(data) - offset:
            raise ValueError("grouped: an entry runs past the end")
        by_bucket[bucket].append(bytes(data[offset : offset + size]))
        offset += size
    return [(bucket, len(fields), b"".join(fields)) for bucket, fields in sorted(by_bucket.items())]


try:  # the same three in C (loader/_speedups.c), where it was built
    from loader._speedups import gather, grouped, split_first
except ImportError:
    split_first, gather, grouped = python_split_first, python_gather, python_grouped


class FirstRows:
    """Tells a row that is certainly the first of its code and of its chg_id in the file.

    Two Bloom filters (one for codes, one for chg_ids) of two bits a value, from its CRC-32:
    both bits set means "perhaps seen", so a row called first is first; one called not
    first may be first too (it then takes the slow path, which gives the same result).
    """

    def __init__(self, expected_rows: int) -> None:
        bits = 1 << 16
        while bits < min(expected_rows * FILTER_BITS_PER_ROW, MAX_FILTER_BITS):
            bits <<= 1
        self._mask = bits - 1
        self._codes = bytearray(bits >> 3)
        self._chg_ids = bytearray(bits >> 3)

    def split(self, parsed: ParsedChunk) -> tuple[list[int], list[int], list[int]]:
        """The positions of ``parsed``'s rows that are first (bulk-written), of the others
        (merged by gk_insert), and of those others whose chg_id is certainly the first of
        its chg_id (its index entry bulk-written), each in the file's order; all are marked
        seen."""
        return split_first(self._codes, self._chg_ids, self._mask, parsed.code_crcs, parsed.chg_crcs)


class BulkBuffer:
    """First rows gathered by bucket, as the fields of one HSET per bucket and the entries of
    one SET per piece of the chg_id index, all written at the end by :meth:`commands`.

    A national snapshot's first rows do not fit in memory, and written as they come each
    HSET would carry one field: they are spilled to a temporary file in PARTITIONS ranges
    of buckets, and each range is read back and grouped by bucket when written.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._width = -(-target.buckets // PARTITIONS)  # buckets per partition
        self._index_width = -(-keys.index_pieces(target.buckets) // PARTITIONS)  # index pieces per partition
        # Per partition, records then chg_id index entries, as gather packs them.
        self._pending = [bytearray() for _ in range(2 * PARTITIONS)]
        self._spilled: list[list[tuple[int, int]]] = [[] for _ in range(2 * PARTITIONS)]  # (offset, size)
        self._file = tempfile.TemporaryFile(prefix="gk-snapshot-bulk-")  # noqa: SIM115  # closed by close()
        self.rows = 0  # rows gathered

    def add(self, parsed: ParsedChunk, positions: list[int], new_chg_ids: list[int]) -> None:
        """Gather the rows of ``parsed`` at ``positions``, and the index entries of those at
        ``new_chg_ids`` (rows first of their chg_id but not of their code, merged later)."""
        pending, width = self._pending, self._width
        gather(positions, parsed.buckets, width, parsed.record_fields, parsed.record_offsets, pending, 0)
        entries, ends = parsed.index_entries, parsed.index_offsets
        indexed = positions + new_chg_ids if new_chg_ids else positions
        gather(indexed, parsed.chg_buckets, self._index_width, entries, ends, pending, PARTITIONS)
        for part, gathered in enumerate(pending):
            if len(gathered) >= SPILL_BYTES:
                self._spill(part)
        self.rows += len(positions)

    def _spill(self, part: int) -> None:
        self._spilled[part].append((self._file.seek(0, 2), len(self._pending[part])))
        self._file.write(self._pending[part])
        self._pending[part] = bytearray()

    def commands(self) -> Iterator[bytes]:
        """One packed HSET per bucket and one SET NX per chg_id index piece gathered, then empty."""
        generation = self._target.generation
        for part in range(PARTITIONS):
            for number, count, fields in grouped(self._gathered(part)):
                key = keys.bucket_key(generation, number).encode()
                yield b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n%b" % (2 + 2 * count, len(key), key, fields)
        for part in range(PARTITIONS, 2 * PARTITIONS):
            for number, _, entries in grouped(self._gathered(part)):
                key = keys.chg_index_key(generation, number).encode()
                yield b"*4\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nNX\r\n" % (
                    len(key),
                    key,
                    len(entries),
                    entries,
                )
        self.rows = 0
        self._file.truncate(0)

    def _gathered(self, part: int) -> bytearray:
        """Everything gathered for ``part``, spilled or not; then it is forgotten."""
        gathered = bytearray()
        for offset, size in self._spilled[part]:
            self._file.seek(offset)
            gathered += self._file.read(size)
        self._spilled[part] = []
        gathered += self._pending[part]
        self._pending[part] = bytearray()
        return gathered

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()


class SlowRows:
    """The rows merged by gk_insert after the bulk writes, kept in a temporary file as packed
    calls of ``batch_rows`` rows, in the file's order."""

    def __init__(self, target: Target, batch_rows: int) -> None:
        self._target = target
        self._batch_rows = batch_rows
        self._rows: list[EncodedRow] = []
        self._lines: list[int] = []
        self._indexed: list[bool] = []
        self._file = tempfile.TemporaryFile(prefix="gk-snapshot-")  # noqa: SIM115  # closed by close()
        self.count = 0

    def add(self, parsed: ParsedChunk, positions: list[int], new_chg_ids: list[int]) -> None:
        """Keep the rows of ``parsed`` at ``positions``; those also at ``new_chg_ids`` have
        their index entries bulk-written (BulkBuffer.add)."""
        lines, indexed = parsed.lines, set(new_chg_ids)
        for position, row in zip(positions, parsed.rows_at(positions), strict=True):
            self._rows.append(row)
            self._lines.append(lines[position])
            self._indexed.append(position in indexed)
            if len(self._rows) == self._batch_rows:
                self._spill()
        self.count += len(positions)

    def _spill(self) -> None:
        pickle.dump(pack_batch(self._rows, self._lines, self._target, self._indexed), self._file)
        self._rows, self._lines, self._indexed = [], [], []

    def batches(self) -> Iterator[Batch]:
        """Every call kept, in order; then the file is gone."""
        if self._rows:
            self._spill()
        self._file.seek(0)
        try:
            while True:
                try:
                    batch = pickle.load(self._file)  # written by this process above
                except EOFError:
                    return
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()
