"""The loader's C (loader/_speedups.c) reads and gathers rows exactly as its Python does.

parse_chunk, with the C reading the rows it can and the Python the others, is held to
parse_chunk_in_python on generated snapshots, on generated rows of every kind (good, bad,
odd quoting, other line ends, other column orders) and on chunks mutated byte by byte. The
bookkeeping functions are held to their Python versions in loader/bulk.py.
"""

from __future__ import annotations

import csv
import io
import os
import random
import zlib
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.cache import keys
from loader import bulk
from loader.chunks import ParsedChunk, Target, parse_chunk, parse_chunk_in_python, split_lines
from loader.generate import generate
from loader.rows import FIELDS

try:
    from loader import _speedups
except ImportError:  # built without a C compiler
    _speedups = None  # type: ignore[assignment]

built = pytest.mark.skipif(_speedups is None, reason="loader._speedups was not built (no C compiler)")
EXAMPLES = settings(max_examples=300, deadline=None)
TARGET = Target(generation=3, buckets=97)
HEADER = list(FIELDS)


def test_the_loaders_c_is_built_where_the_tests_require_it() -> None:
    # scripts/test requires it: scripts/install puts a C compiler on the machine.
    if os.environ.get("GATEKEEPER_REQUIRE_SPEEDUPS") == "1":
        assert _speedups is not None, "loader._speedups was not built: is a C compiler installed?"
    else:
        pytest.skip("GATEKEEPER_REQUIRE_SPEEDUPS is not set")


def both(text: bytes, header: list[str] = HEADER, first_line: int = 2) -> tuple[ParsedChunk, ParsedChunk]:
    return parse_chunk(text, first_line, header, TARGET), parse_chunk_in_python(text, first_line, header, TARGET)


def taken_by_c(text: bytes, header: list[str] = HEADER) -> int:
    """How many rows of ``text`` the C read itself (the Python read none of them)."""
    assert _speedups is not None
    into = tuple(bytearray() for _ in range(11))
    columns = tuple(header.index(name) for name in FIELDS)
    pieces = keys.index_pieces(TARGET.buckets)
    taken, stop, _, _ = _speedups.parse_rows(text, 0, 2, columns, len(header), TARGET.buckets, pieces, into)
    return int(taken) if stop == len(text) else -1


# --- rows ---------------------------------------------------------------------------------

PLAIN = b"D110105000001,1,c1,1,2020-01-01 00:00:00,,,,1,1\n"
SUSPENDED = b'N310105000002,2,c2,2,2026-01-01 08:00:00,2026-03-01 00:00:00,,"\xe5\x81\x9c\xe6\x9c\xba, ""1""\nx",1,20\n'
TERMINATED = b"D110105000003,1,c3,3,2025-01-01 00:00:00,2025-06-01 00:00:00,2027-01-01 00:00:00,fraud,0,7\n"


@built
def test_the_c_reads_plain_suspended_and_terminated_rows_itself() -> None:
    text = PLAIN + SUSPENDED + b"\r\n" + TERMINATED.replace(b"\n", b"\r\n")
    assert taken_by_c(text) == 3
    in_c, in_python = both(text)
    assert in_c == in_python
    assert list(in_c.lines) == [2, 3, 6]  # the quoted newline and the blank line counted


@built
@pytest.mark.parametrize(
    "odd",
    [
        b" D110105000009,1,c9,1,2020-01-01 00:00:00,,,,1,9\n",  # whitespace: the careful path trims it
        b"D110105000009,1,c9,1,2020-02-30 00:00:00,,,,1,9\n",  # no such day
        b"D110105000009,1,c9,1,1970-01-01 08:00:00,,,,1,9\n",  # not after the epoch
        b"D110105000009,1,c9,1,2020-01-01 00:00:00,2019-01-01 00:00:00,,,1,9\n",  # ends before it begins
        b"D990105000009,1,c9,1,2020-01-01 00:00:00,,,,1,9\n",  # no such province
        b"D110105000009,1,c9,1,2020-01-01 00:00:00,,,,1,9,extra\n",  # a column too many
        b"D110105000009,1,c9,1,2020-01-01 00:00:00,,,,1,1234567890123456\n",  # a 16-digit seq
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,,\xff\xfe,1,9\n",  # not UTF-8
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,,\xed\xa0\x80,1,9\n",  # an encoded surrogate
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,,a\x1fb,1,9\n",  # the fast path's separator
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,," + ("长" * 501).encode() + b",1,9\n",  # cut to 500
        b'D110105000009,1,c9,2,2020-01-01 00:00:00,,,a"b,1,9\n',  # a quote inside an unquoted field
        b'D110105000009,1,c9,2,2020-01-01 00:00:00,,,"a"b,1,9\n',  # text after a closing quote
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,,a\rb,1,9\n",  # a lone carriage return
        b"D110105000009,1,c9,2,2020-01-01 00:00:00,,,a\x00b,1,9\n",  # a NUL: the rest unreadable
        b'D110105000009,1,c9,2,2020-01-01 00:00:00,,,"never closed,1,9\n',
        b"   \n",  # a blank line of spaces
        b"D110105000009,1,c9,1,2020-01-01 00:00:00,,,,1",  # cut short
    ],
)
def test_a_record_the_c_does_not_take_is_read_by_the_python_between_the_rows_it_does(odd: bytes) -> None:
    text = PLAIN + odd + (b"\n" if not odd.endswith(b"\n") else b"") + TERMINATED
    assert taken_by_c(text) == -1  # the C stopped there
    in_c, in_python = both(text)
    assert in_c == in_python
    assert in_c.rows()[0][0] == "D110105000001"


_TIMES = st.sampled_from(
    [
        "2020-01-01 00:00:00",
        "2024-02-29 23:59:59",
        "2000-02-29 12:00:00",
        "1970-01-01 08:00:01",
        "9999-12-31 23:59:59",
        # not real times, or not after the epoch
        "2023-02-29 00:00:00",
        "1900-02-29 00:00:00",
        "2020-04-31 00:00:00",
        "2020-13-01 00:00:00",
        "2020-00-10 00:00:00",
        "2020-01-00 00:00:00",
        "2020-01-01 24:00:00",
        "2020-01-01 23:60:00",
        "2020-01-01 23:59:60",
        "1970-01-01 08:00:00",
        "1970-01-01 07:59:59",
        "0000-01-01 00:00:00",
        "2020-01-01T00:00:00",
        "2020-1-01 00:00:00",
    ]
)


@st.composite
def values(draw: st.DrawFn) -> list[str]:
    """One row's values in FIELDS order: mostly good, some of every kind of bad."""
    good = {
        "prac_psn_code": draw(st.sampled_from(["D110105000001", "N310105000002", "HY440105000003", "J650105000004"])),
        "prac_psn_type": draw(st.sampled_from("1234")),
        "chg_id": draw(st.from_regex(r"[!-~]{1,20}", fullmatch=True).filter(lambda t: "," not in t)),
        "status": draw(st.sampled_from("123")),
        "begntime": draw(_TIMES),
        "endtime": draw(st.one_of(st.just(""), _TIMES)),
        "ban_endtime": draw(st.one_of(st.just(""), _TIMES)),
        "chg_rea": draw(st.text(max_size=12)),
        "vali_flag": draw(st.sampled_from("01")),
        "seq": str(draw(st.integers(0, 10**16))),
    }
    if draw(st.booleans()):  # one field made odd
        name = draw(st.sampled_from(FIELDS))
        good[name] = draw(st.sampled_from(["", " ", f" {good[name]}", f"{good[name]} ", "x", "9", "长", "a,b", 'a"b']))
    return [good[name] for name in FIELDS]


def rendered(rows: list[list[str]], order: list[int], quote_all: bool, line_end: str, blanks: list[bool]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator=line_end)
    for row, blank in zip(rows, blanks, strict=True):
        writer.writerow([row[position] for position in order])
        if blank:
            out.write(line_end)
    return out.getvalue().encode("utf-8", errors="surrogatepass")


@built
@EXAMPLES
@given(
    rows=st.lists(values(), min_size=1, max_size=8),
    order=st.permutations(range(len(FIELDS))),
    quote_all=st.booleans(),
    line_end=st.sampled_from(["\n", "\r\n"]),
    data=st.data(),
)
def test_generated_rows_are_read_as_the_python_reads_them(
    rows: list[list[str]], order: list[int], quote_all: bool, line_end: str, data: st.DataObject
) -> None:
    blanks = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    header = [FIELDS[position] for position in order]
    text = rendered(rows, order, quote_all, line_end, blanks)
    in_c, in_python = both(text, header, first_line=data.draw(st.integers(2, 10**6)))
    assert in_c == in_python


@built
def test_chunks_mutated_byte_by_byte_are_read_as_the_python_reads_them() -> None:
    rng = random.Random(12)
    base = PLAIN + SUSPENDED + TERMINATED + PLAIN.replace(b"c1", b"c4") + SUSPENDED.replace(b"\n", b"\r\n")
    alphabet = b'",\r\n \x00\x1f\xe4\xb8\xad\xff\xed\xa0aZ09-:'
    for _ in range(3000):
        text = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            change = rng.randrange(3)
            if change == 0:
                text[at] = rng.choice(alphabet)
            elif change == 1:
                text.insert(at, rng.choice(alphabet))
            else:
                del text[at]
        in_c, in_python = both(bytes(text))
        assert in_c == in_python, bytes(text)


@built
def test_a_generated_snapshot_is_read_as_the_python_reads_it(tmp_path: Path) -> None:
    registry = generate(tmp_path, 3_000, seed=4, changes=10)
    data = registry.snapshot.read_bytes()
    header_end = data.index(b"\n") + 1
    header = data[:header_end].decode().strip().split(",")
    pieces = list(split_lines(io.BufferedReader(io.BytesIO(data[header_end:])), 1 << 14))  # type: ignore[arg-type]
    line = 2
    for piece in pieces:
        in_c, in_python = both(piece, header, line)
        assert in_c == in_python
        line += piece.count(b"\n")
    assert sum(len(parse_chunk(piece, 2, header, TARGET).lines) for piece in pieces) > 3_000


# --- the loader's own bookkeeping ---------------------------------------------------------

crcs = st.lists(st.integers(0, 2**32 - 1), max_size=60)


@built
@EXAMPLES
@given(code_crcs=crcs, data=st.data())
def test_split_first_is_the_pythons(code_crcs: list[int], data: st.DataObject) -> None:
    chg_crcs = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(code_crcs), max_size=len(code_crcs)))
    mask = (1 << data.draw(st.integers(3, 10))) - 1
    filters = [bytearray(data.draw(st.binary(min_size=(mask >> 3) + 1, max_size=(mask >> 3) + 1))) for _ in range(2)]
    python_filters = [bytearray(f) for f in filters]
    arguments = (array("I", code_crcs), array("I", chg_crcs))
    assert _speedups is not None
    assert _speedups.split_first(*filters, mask, *arguments) == bulk.python_split_first(
        *python_filters, mask, *arguments
    )
    assert filters == python_filters  # every row marked seen alike


@built
@EXAMPLES
@given(fields=st.lists(st.binary(max_size=20), max_size=30), data=st.data())
def test_gather_and_grouped_are_the_pythons(fields: list[bytes], data: st.DataObject) -> None:
    buckets = array("I", data.draw(st.lists(st.integers(0, 40), min_size=len(fields), max_size=len(fields))))
    offsets = array("Q", [0])
    for field in fields:
        offsets.append(offsets[-1] + len(field))
    positions = data.draw(st.lists(st.sampled_from(range(len(fields))), unique=True)) if fields else []
    width, base = data.draw(st.integers(1, 50)), data.draw(st.integers(0, 2))
    parts = base + 40 // width + 1
    in_c, in_python = [bytearray() for _ in range(parts)], [bytearray() for _ in range(parts)]
    assert _speedups is not None
    _speedups.gather(positions, buckets, width, b"".join(fields), offsets, in_c, base)
    bulk.python_gather(positions, buckets, width, b"".join(fields), offsets, in_python, base)
    assert in_c == in_python
    for gathered in in_c:
        assert _speedups.grouped(gathered) == bulk.python_grouped(gathered)


@built
def test_what_does_not_fit_is_refused_not_read_past() -> None:
    assert _speedups is not None
    with pytest.raises(ValueError, match="runs past the end"):
        _speedups.grouped(b"\x01\x00\x00\x00\x09\x00\x00\x00abc")
    with pytest.raises(ValueError, match="runs past the end"):
        bulk.python_grouped(b"\x01\x00\x00\x00\x09\x00\x00\x00abc")
    with pytest.raises(IndexError):
        _speedups.gather([5], array("I", [0]), 1, b"", array("Q", [0, 0]), [bytearray()], 0)
    with pytest.raises(TypeError):
        _speedups.split_first(bytearray(8), bytearray(8), 7, array("Q", [1]), array("I", [1]))
    with pytest.raises(ValueError, match="2\\*\\*k - 1"):
        _speedups.split_first(bytearray(8), bytearray(8), 5, array("I", [1]), array("I", [1]))


def test_a_value_sets_two_bits_and_is_seen_only_when_both_are_set() -> None:
    mask = (1 << 16) - 1
    crc = zlib.crc32(b"D110105000001")
    one, two = crc & mask, bulk.second_bit(crc, mask)
    assert one != two
    codes, chg_ids = bytearray(mask + 1 >> 3), bytearray(mask + 1 >> 3)
    codes[one >> 3] |= 1 << (one & 7)  # another value set one of its bits: not seen yet
    assert bulk.python_split_first(codes, chg_ids, mask, array("I", [crc]), array("I", [5])) == ([0], [], [])
    assert codes[two >> 3] & 1 << (two & 7)  # now both are
    assert bulk.python_split_first(codes, chg_ids, mask, array("I", [crc]), array("I", [6])) == ([], [0], [0])
