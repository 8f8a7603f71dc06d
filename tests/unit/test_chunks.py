"""A snapshot cut into pieces at record ends, each parsed on its own with its lines numbered."""

from __future__ import annotations

import io
import pickle
import zlib
from array import array

from gatekeeper.cache import keys
from loader.bulk import BulkBuffer, FirstRows
from loader.chunks import ParsedChunk, Target, parse_chunk, split_lines
from loader.rows import FIELDS

HEADER = list(FIELDS)
QUOTED = b'D110105000002,1,c2,2,2026-01-01 00:00:00,,,"a ""b""\nc",1,2\n'  # a record on two lines
FIRST = b"D110105000001,1,c1,1,2020-01-01 00:00:00,,,,1,1\n"
TEXT = FIRST + QUOTED + b"\nD110105000003,1,c3,9,2020-01-01 00:00:00,,,,1,3\n"


def test_pieces_end_at_record_ends_never_inside_a_quoted_field() -> None:
    for size in range(1, len(TEXT) + 2):
        pieces = list(split_lines(io.BufferedReader(io.BytesIO(TEXT)), size))  # type: ignore[arg-type]
        assert b"".join(pieces) == TEXT, size
        for piece in pieces:
            assert piece.endswith(b"\n") and piece.count(b'"') % 2 == 0, (size, piece)
        assert not any(piece.startswith(b"c") for piece in pieces)  # the quoted newline stayed whole


def test_a_chunk_reports_lines_from_where_it_starts() -> None:
    parsed = parse_chunk(TEXT, 10, HEADER, Target(generation=7, buckets=3))
    assert parsed.count == 3  # the blank line is no row
    assert parsed.bad == [(14, "status '9' is not 1, 2 or 3")]  # after the two-line record and a blank line
    rows = parsed.rows()
    assert [row[:2] for row in rows] == [("D110105000001", "c1"), ("D110105000002", "c2")]
    assert list(parsed.lines) == [10, 11]
    assert list(parsed.buckets) == [keys.bucket_of(code, 3) for code, *_ in rows]
    assert list(parsed.chg_buckets) == [keys.chg_bucket_of(chg_id, 3) for _, chg_id, *_ in rows]


def test_the_rows_merged_rather_than_bulk_written_are_decoded_alone() -> None:
    parsed = parse_chunk(FIRST + QUOTED, 2, HEADER, Target(generation=7, buckets=3))
    both = parsed.rows()
    assert parsed.rows_at([1]) == [both[1]] and parsed.rows_at([1, 0]) == [both[1], both[0]]
    assert parsed.rows_at([]) == []


def test_first_rows_are_the_first_of_their_code_and_of_their_chg_id() -> None:
    rows = [
        ("D110105000001", "c1"),
        ("D110105000002", "c2"),
        ("D110105000001", "c3"),  # a second period of a code: merged, its chg_id new
        ("D110105000003", "c2"),  # a chg_id moved to another code: merged
        ("D110105000004", "c4"),
    ]
    parsed = ParsedChunk(
        code_crcs=array("I", [zlib.crc32(code.encode()) for code, _ in rows]),
        chg_crcs=array("I", [zlib.crc32(chg_id.encode()) for _, chg_id in rows]),
    )
    first_rows = FirstRows(expected_rows=5)
    assert first_rows.split(parsed) == ([0, 1, 4], [2, 3], [2])
    # Marked seen: in a later chunk the same rows are all merged, none with a new chg_id.
    assert first_rows.split(parsed) == ([], [0, 1, 2, 3, 4], [])


def test_a_bulk_buffer_sends_one_hset_per_bucket_and_one_set_per_index_piece() -> None:
    parsed = parse_chunk(FIRST + QUOTED, 2, HEADER, Target(generation=7, buckets=1))
    bulk = BulkBuffer(Target(generation=7, buckets=1))
    bulk.add(parsed, [0, 1], [])
    assert bulk.rows == 2
    records, index = bulk.commands()
    bucket, piece = keys.bucket_key(7, 0).encode(), keys.chg_index_key(7, 0).encode()
    assert records.startswith(b"*6\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$13\r\nD110105000001\r\n" % (len(bucket), bucket))
    entries = keys.index_entry(keys.chg_tag_of("c1"), 0) + keys.index_entry(keys.chg_tag_of("c2"), 0)
    assert index == b"*4\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$10\r\n%s\r\n$2\r\nNX\r\n" % (len(piece), piece, entries)
    assert (bulk.rows, list(bulk.commands())) == (0, [])  # emptied


def test_a_parsed_chunk_crosses_to_the_loaders_process_whole() -> None:
    """What a parsing process sends back (pickled) is what it parsed: the rows, and each row's
    fields for the bulk HSETs."""
    parsed = parse_chunk(TEXT, 10, HEADER, Target(generation=7, buckets=3))
    crossed = pickle.loads(pickle.dumps(parsed, protocol=pickle.HIGHEST_PROTOCOL))
    assert crossed == parsed
    assert [row[0] for row in crossed.rows()] == ["D110105000001", "D110105000002"]
    fields = [crossed.record_fields[crossed.record_offsets[n] : crossed.record_offsets[n + 1]] for n in range(2)]
    assert [field.split(b"\r\n")[1] for field in fields] == [b"D110105000001", b"D110105000002"]
