"""A snapshot's rows in line-aligned chunks, each parsed into ready-to-send gk_insert calls."""

from __future__ import annotations

import csv
import io
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import hiredis
import msgspec

from gatekeeper.cache import keys
from gatekeeper.core.codes import PROVINCE_CODES
from gatekeeper.core.records import MAX_CHG_REA_LENGTH
from loader.rows import FAST_SEQ_DIGITS, MAX_CHG_ID_LENGTH, EncodedRow, RowError, RowParser

_speedups: Any
try:  # the rows' fast path in C (loader/_speedups.c), where it was built
    from loader import _speedups
except ImportError:
    _speedups = None
else:
    _speedups.configure(PROVINCE_CODES, MAX_CHG_ID_LENGTH, MAX_CHG_REA_LENGTH, FAST_SEQ_DIGITS)

CHUNK_BYTES = 1 << 20  # of CSV text per chunk: about 12,000 rows, tens of milliseconds to parse
READ_BYTES = 1 << 16  # per read: what a broken gzip stream gave before it broke is kept

_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, bytes, int]])
_row_decoder = msgspec.msgpack.Decoder(tuple[str, str, bytes, int])
_FIELD = b"$%d\r\n%b\r\n$%d\r\n%b\r\n"  # a hash field and its value as RESP bulk strings


@dataclass(frozen=True)
class Target:
    """Where rows go: the generation being loaded and its bucket count."""

    generation: int
    buckets: int


@dataclass
class Batch:
    """One gk_insert call, packed: its command bytes, and its rows for when Redis refuses
    some or hands some back (decoded only then)."""

    command: bytes
    packed_rows: bytes
    lines: list[int]
    indexed: list[bool]  # of each row: its chg_id is new and its index entry bulk-written

    def rows(self) -> list[EncodedRow]:
        """The rows of the call, in order."""
        return _rows_decoder.decode(self.packed_rows)


def _offsets() -> array[int]:
    return array("Q", [0])


@dataclass
class ParsedChunk:
    """What parsing one chunk gave: its good rows with what bulk-writing each takes, rows to
    quarantine, counts.

    It travels from a parsing process to the loader's own, so the per-row data is packed: a
    few arrays and byte strings pickle as buffers, where lists pickle (and unpickle) an object
    per row (1.6 µs a row, against a few hundredths). Row ``i``'s RESP-encoded fields are
    ``record_fields[record_offsets[i]:record_offsets[i + 1]]``, its chg_id index entry
    ``index_entries[index_offsets[i]:index_offsets[i + 1]]``, and its
    EncodedRow, MessagePack, ``packed_rows[row_offsets[i]:row_offsets[i + 1]]``: the loader
    decodes only the rows that are merged rather than bulk-written (:meth:`rows_at`)."""

    packed_rows: bytes = b""  # the good rows (EncodedRow), in the file's order
    row_offsets: array[int] = field(default_factory=_offsets)
    lines: array[int] = field(default_factory=lambda: array("Q"))  # of each good row
    code_crcs: array[int] = field(default_factory=lambda: array("I"))  # CRC-32 of each row's code (for FirstRows)
    chg_crcs: array[int] = field(default_factory=lambda: array("I"))  # CRC-32 of each row's chg_id (for FirstRows)
    buckets: array[int] = field(default_factory=lambda: array("I"))  # of each row's code
    chg_buckets: array[int] = field(default_factory=lambda: array("I"))  # chg_id index piece of each row's chg_id
    record_fields: bytes = b""  # code and record of each row, RESP-encoded
    record_offsets: array[int] = field(default_factory=_offsets)
    index_entries: bytes = b""  # each row's chg_id index entry (keys.index_entry)
    index_offsets: array[int] = field(default_factory=_offsets)
    count: int = 0  # data rows read, good and bad
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (line, what was cut to fit)
    truncated: int = 0  # rows loaded with a field cut
    unreadable: str = ""  # the CSV could not be read on from here (nothing after it is loaded)

    def rows(self) -> list[EncodedRow]:
        """The good rows, in the file's order (decoded: call once)."""
        return self.rows_at(range(len(self.lines)))

    def rows_at(self, positions: Iterable[int]) -> list[EncodedRow]:
        """The good rows at ``positions`` (decoded: call once)."""
        packed, offsets, decode = self.packed_rows, self.row_offsets, _row_decoder.decode
        return [decode(packed[offsets[position] : offsets[position + 1]]) for position in positions]


def split_lines(stream: io.BufferedIOBase, block_bytes: int | None = None) -> Iterator[bytes]:
    """The stream in pieces of at least ``block_bytes`` (CHUNK_BYTES), each ending at a line
    end outside any quoted field, the last one as it is. When the stream breaks (a gzip
    file cut short), the whole lines read before are yielded before the error is raised.

    Quotes inside a quoted field are doubled, so a quoted field always holds an even
    number of them: a line end with an odd count before it is inside a quoted field.
    """
    pending = b""

    def whole_lines() -> int:
        """The length of the longest prefix of ``pending`` that ends a record; 0 if none."""
        end = pending.rfind(b"\n") + 1
        quotes = pending.count(b'"', 0, end)
        while end and quotes % 2:  # that line end is inside a quoted field: try the one before
            previous = pending.rfind(b"\n", 0, end - 1) + 1
            quotes -= pending.count(b'"', previous, end)
            end = previous
        return end

    try:
        while block := stream.read1(READ_BYTES):  # one read of the file at most: none lost if it fails
            pending += block
            if len(pending) >= (block_bytes or CHUNK_BYTES) and (end := whole_lines()):
                yield pending[:end]
                pending = pending[end:]
    except (EOFError, OSError):
        if end := whole_lines():
            yield pending[:end]
        raise
    if pending:
        yield pending


def parse_chunk(text: bytes, first_line: int, header: list[str], target: Target) -> ParsedChunk:
    """Parse the CSV records of one chunk (starting at ``first_line`` of the file); bad rows
    are reported with their line. Each good row comes with the fields a bulk HSET of its
    bucket would write for it, and its entry in its piece of the chg_id index.

    The C parser (``_speedups.parse_rows``) reads the rows it reads exactly as
    :func:`parse_chunk_in_python` does and stops at any other record: that record (or, where
    its quoting is unusual, the rest of the chunk) is read by the Python, then the C goes on.
    """
    if _speedups is None:
        return parse_chunk_in_python(text, first_line, header, target)
    parser = RowParser(header)
    pieces = keys.index_pieces(target.buckets)
    into = {name: bytearray() for name in _PARSE_ROWS_APPENDS}
    whole = ParsedChunk()
    at, line = 0, first_line
    while True:
        taken, stop, line, end = _speedups.parse_rows(
            text, at, line, parser.columns, parser.width, target.buckets, pieces, tuple(into.values())
        )
        whole.count += taken
        if stop == len(text):
            break
        piece = text[stop:end]
        read = parse_chunk_in_python(piece, line, header, target)
        _append_packed(into, read)
        whole.count += read.count
        whole.bad += read.bad
        whole.notes += read.notes
        whole.truncated += read.truncated
        if read.unreadable:
            whole.unreadable = read.unreadable
            break
        at, line = end, line + piece.count(b"\n")
    for name, data in into.items():
        numbers = getattr(whole, name)
        if isinstance(numbers, array):
            numbers.frombytes(data)
        else:
            setattr(whole, name, bytes(data))
    return whole


# What _speedups.parse_rows appends to, in its order: ParsedChunk's byte strings and arrays,
# each offsets array without its leading 0 (the end of each row's bytes in the whole).
_PARSE_ROWS_APPENDS = (
    "packed_rows",
    "row_offsets",
    "lines",
    "code_crcs",
    "chg_crcs",
    "buckets",
    "chg_buckets",
    "record_fields",
    "record_offsets",
    "index_entries",
    "index_offsets",
)
_OFFSETS_INTO = {"row_offsets": "packed_rows", "record_offsets": "record_fields", "index_offsets": "index_entries"}


def _append_packed(into: dict[str, bytearray], read: ParsedChunk) -> None:
    """Append what the Python read to what parse_rows appends to, as parse_rows would."""
    for name, appended in into.items():
        value = getattr(read, name)
        if name in _OFFSETS_INTO:  # shifted past the bytes already there (appended below)
            appended += array("Q", [len(into[_OFFSETS_INTO[name]]) + end for end in value[1:]]).tobytes()
        elif isinstance(value, array):
            appended += value.tobytes()
    for data in _OFFSETS_INTO.values():
        into[data] += getattr(read, data)


def parse_chunk_in_python(text: bytes, first_line: int, header: list[str], target: Target) -> ParsedChunk:
    """:func:`parse_chunk` in Python alone: the reference, and the parser of every record
    the C leaves to it."""
    parser = RowParser(header)
    parsed = ParsedChunk()
    reader = csv.reader(io.StringIO(text.decode("utf-8", errors="replace"), newline=""))
    notes: list[str] = []
    buckets, crc32, resp_field = target.buckets, zlib.crc32, _FIELD
    pieces = keys.index_pieces(buckets)
    rows: list[bytes] = []
    encode_row = _rows_encoder.encode
    record_fields: list[bytes] = []
    index_entries: list[bytes] = []
    end_of_previous = 0
    try:
        for values in reader:
            # A record with a quoted newline spans lines: report the one it starts on.
            line, end_of_previous = first_line + end_of_previous, reader.line_num
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            parsed.count += 1
            try:
                row = parser.encode(values, notes)
            except RowError as error:
                parsed.bad.append((line, str(error)))
                continue
            if notes:
                parsed.truncated += 1
                parsed.notes.extend((line, note) for note in notes)
                notes.clear()
            code, chg_id, record, _ = row
            code_bytes, chg_id_bytes = code.encode(), chg_id.encode()
            # keys.bucket_of, chg_bucket_of and chg_tag_of, from the CRCs computed once (a
            # test checks they agree).
            code_crc, chg_crc = crc32(code_bytes), crc32(chg_id_bytes)
            bucket = code_crc % buckets
            rows.append(encode_row(row))
            parsed.lines.append(line)
            parsed.code_crcs.append(code_crc)
            parsed.chg_crcs.append(chg_crc)
            parsed.buckets.append(bucket)
            parsed.chg_buckets.append(chg_crc % pieces)
            record_fields.append(resp_field % (len(code_bytes), code_bytes, len(record), record))
            index_entries.append(keys.index_entry(keys.tag_of_crc(chg_crc), bucket))
    except csv.Error as error:
        parsed.unreadable = f"unreadable: {error}"
    parsed.packed_rows, parsed.row_offsets = _joined(rows)
    parsed.record_fields, parsed.record_offsets = _joined(record_fields)
    parsed.index_entries, parsed.index_offsets = _joined(index_entries)
    return parsed


def _joined(pieces: list[bytes]) -> tuple[bytes, array[int]]:
    """The pieces as one byte string, and where each starts (and the last ends)."""
    offsets = _offsets()
    offsets.extend(accumulate(len(piece) for piece in pieces))
    return b"".join(pieces), offsets


def pack_batch(rows: list[EncodedRow], lines: list[int], target: Target, indexed: list[bool]) -> Batch:
    """One gk_insert call for ``rows``: each row's bucket and chg_id index piece, then its
    code, chg_id, record, seq, chg_id tag and whether it is ``indexed`` (its chg_id is new
    to the generation and its index entry already written: gk_insert skips the index)."""
    generation, buckets = target.generation, target.buckets
    bucket_keys: list[str] = []
    arguments: list[str | bytes | int] = []
    for (code, chg_id, record, seq), known in zip(rows, indexed, strict=True):
        bucket_keys.append(keys.bucket_key(generation, keys.bucket_of(code, buckets)))
        bucket_keys.append(keys.chg_index_key(generation, keys.chg_bucket_of(chg_id, buckets)))
        arguments += (code, chg_id, record, seq, keys.chg_tag_of(chg_id), 1 if known else 0)
    # hiredis types its argument as a one-element tuple; it packs any number of values.
    command = hiredis.pack_command(("FCALL", "gk_insert", len(bucket_keys), *bucket_keys, *arguments))  # type: ignore[arg-type]
    return Batch(command, _rows_encoder.encode(rows), lines, indexed)
