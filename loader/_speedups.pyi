# The C extension loader/_speedups.c: its functions, typed for mypy (loader/chunks.py, loader/bulk.py).
from array import array

def configure(
    province_codes: tuple[str, ...], max_chg_id_length: int, max_chg_rea_length: int, max_seq_digits: int
) -> None: ...
def parse_rows(
    text: bytes,
    start: int,
    line: int,
    columns: tuple[int, ...],
    width: int,
    buckets: int,
    pieces: int,
    into: tuple[bytearray, ...],
) -> tuple[int, int, int, int]: ...
def split_first(
    codes: bytearray, chg_ids: bytearray, mask: int, code_crcs: array[int], chg_crcs: array[int]
) -> tuple[list[int], list[int], list[int]]: ...
def gather(
    positions: list[int],
    buckets: array[int],
    width: int,
    fields: bytes,
    offsets: array[int],
    pending: list[bytearray],
    base: int,
) -> None: ...
def grouped(gathered: bytes | bytearray) -> list[tuple[int, int, bytes]]: ...
