"""A snapshot cut into pieces at record ends, each parsed on its own with its lines numbered."""

from __future__ import annotations

import io

from loader.chunks import Target, parse_chunk, split_lines
from loader.rows import FIELDS

HEADER = list(FIELDS)
QUOTED = b'D110105000002,1,c2,2,2026-01-01 00:00:00,,,"a ""b""\nc",1,2\n'  # a record on two lines
TEXT = (
    b"D110105000001,1,c1,1,2020-01-01 00:00:00,,,,1,1\n"
    + QUOTED
    + b"\nD110105000003,1,c3,9,2020-01-01 00:00:00,,,,1,3\n"
)


def test_pieces_end_at_record_ends_never_inside_a_quoted_field() -> None:
    for size in range(1, len(TEXT) + 2):
        pieces = list(split_lines(io.BufferedReader(io.BytesIO(TEXT)), size))  # type: ignore[arg-type]
        assert b"".join(pieces) == TEXT, size
        for piece in pieces:
            assert piece.endswith(b"\n") and piece.count(b'"') % 2 == 0, (size, piece)
        assert not any(piece.startswith(b"c") for piece in pieces)  # the quoted newline stayed whole


def test_a_chunk_reports_lines_from_where_it_starts_and_batches_its_rows() -> None:
    parsed = parse_chunk(TEXT, 10, HEADER, Target(generation=7, buckets=3), batch_rows=1)
    assert parsed.rows == 3  # the blank line is no row
    assert parsed.bad == [(14, "status '9' is not 1, 2 or 3")]  # after the two-line record and a blank line
    assert [batch.lines for batch in parsed.batches] == [[10], [11]]
    assert [row[:2] for batch in parsed.batches for row in batch.rows()] == [
        ("D110105000001", "c1"),
        ("D110105000002", "c2"),
    ]
    assert b"gk:g7:b" in parsed.batches[0].command and b"gk_insert" in parsed.batches[0].command
