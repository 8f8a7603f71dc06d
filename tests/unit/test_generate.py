"""The synthetic registry: valid rows, a true manifest, unique codes, a realistic mix, ordered change files."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.core.cst import parse_cst
from loader.generate import GeneratedRegistry, generate
from loader.rows import FIELDS, parse_row

PEOPLE = 2_000
AS_OF = "2026-11-20 00:00:00"
CHANGE_FILE = re.compile(r"changes-(\d+)-(\d+)\.jsonl")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRegistry:
    return generate(tmp_path_factory.mktemp("registry"), PEOPLE, changes=300, changes_per_file=70, as_of=AS_OF)


def snapshot_rows(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def changes_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def rows(registry: GeneratedRegistry) -> list[dict[str, str]]:
    return snapshot_rows(registry.snapshot)


@pytest.fixture(scope="module")
def people(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    by_code: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_code[row["prac_psn_code"]].append(row)
    return by_code


def standing_at(periods: list[dict[str, str]], moment: int) -> str:
    """The interpretation rules of REGISTRY_FORMAT.md, for checking the mix."""

    def covering(status: str) -> bool:
        return any(
            p["status"] == status
            and p["vali_flag"] == "1"
            and parse_cst(p["begntime"]) <= moment
            and (not p["endtime"] or moment < parse_cst(p["endtime"]))
            for p in periods
        )

    for status, name in (("3", "terminated"), ("2", "suspended"), ("1", "registered")):
        if covering(status):
            return name
    return "unregistered"


def test_the_header_is_the_registry_fields(registry: GeneratedRegistry) -> None:
    assert registry.snapshot.name == "registry-20261120.csv"
    assert registry.snapshot.read_text(encoding="utf-8").splitlines()[0] == ",".join(FIELDS)


def test_every_snapshot_row_passes_the_loader_validation(
    registry: GeneratedRegistry, rows: list[dict[str, str]]
) -> None:
    assert len(rows) == registry.rows > PEOPLE
    for row in rows:
        parse_row(row)


def test_the_manifest_matches_the_file(registry: GeneratedRegistry, rows: list[dict[str, str]]) -> None:
    manifest = json.loads(registry.manifest.read_text(encoding="utf-8"))
    assert registry.manifest.name == registry.snapshot.name + ".manifest.json"
    assert manifest["snapshot_id"] == "20261120"
    assert manifest["row_count"] == len(rows)
    assert manifest["sha256"] == hashlib.sha256(registry.snapshot.read_bytes()).hexdigest()
    assert manifest["watermark_seq"] == registry.watermark_seq == max(int(row["seq"]) for row in rows)
    assert manifest["generated_at"] == AS_OF


def test_seqs_increase_and_chg_ids_are_unique(rows: list[dict[str, str]]) -> None:
    seqs = [int(row["seq"]) for row in rows]
    assert all(a < b for a, b in pairwise(seqs))
    assert len({row["chg_id"] for row in rows}) == len(rows)


def test_codes_are_unique_per_person_and_match_their_type(people: dict[str, list[dict[str, str]]]) -> None:
    assert len(people) == PEOPLE
    type_of_prefix = {"D": "1", "N": "2", "Y": "3", "J": "4", "HY": "3", "HJ": "4"}
    for code, periods in people.items():
        prefix = code[:-12]
        assert {p["prac_psn_type"] for p in periods} == {type_of_prefix[prefix]}
    provinces = {code[-12:-10] for code in people}
    assert len(provinces) >= 20


def test_the_type_mix_is_realistic(people: dict[str, list[dict[str, str]]]) -> None:
    prefixes = Counter(code[:-12] for code in people)
    assert 0.35 < prefixes["D"] / PEOPLE < 0.45
    assert 0.40 < prefixes["N"] / PEOPLE < 0.50
    assert 0.05 < prefixes["Y"] / PEOPLE < 0.11
    assert 0.02 < prefixes["J"] / PEOPLE < 0.08
    assert prefixes["HY"] + prefixes["HJ"] > 0


def test_the_status_mix_is_realistic(people: dict[str, list[dict[str, str]]]) -> None:
    def share(condition: Callable[[list[dict[str, str]]], object]) -> float:
        return sum(1 for periods in people.values() if condition(periods)) / PEOPLE

    assert share(lambda ps: len(ps) == 1 and ps[0]["status"] == "1" and not ps[0]["endtime"]) > 0.88
    assert 0.01 < share(lambda ps: any(p["status"] == "2" and p["vali_flag"] == "1" for p in ps)) < 0.06
    assert 0.01 < share(lambda ps: any(p["status"] == "3" for p in ps)) < 0.04
    assert 0.001 < share(lambda ps: any(p["vali_flag"] == "0" for p in ps)) < 0.015
    assert 0.002 < share(lambda ps: any(p["status"] == "3" and p["endtime"] for p in ps)) < 0.025
    assert share(lambda ps: len(ps) == 1 and ps[0]["endtime"]) > 0

    standings = Counter(standing_at(periods, parse_cst(AS_OF)) for periods in people.values())
    assert standings["registered"] > 0.9 * PEOPLE
    assert standings["suspended"] > 0
    assert standings["terminated"] > 0
    assert standings["unregistered"] > 0


def test_reasons_exercise_csv_quoting(registry: GeneratedRegistry, rows: list[dict[str, str]]) -> None:
    reasons = {row["chg_rea"] for row in rows}
    assert any("," in reason for reason in reasons)
    assert any('"' in reason for reason in reasons)
    assert '""' in registry.snapshot.read_text(encoding="utf-8")


def test_terminations_close_and_reregistrations_respect_the_ban(people: dict[str, list[dict[str, str]]]) -> None:
    for periods in people.values():
        for termination in (p for p in periods if p["status"] == "3"):
            assert termination["ban_endtime"] > termination["begntime"]
            registrations = [p for p in periods if p["status"] == "1"]
            # The registration before the termination was closed at its start.
            assert any(p["endtime"] == termination["begntime"] for p in registrations)
            if termination["endtime"]:
                after = [p for p in registrations if p["begntime"] == termination["endtime"]]
                assert len(after) == 1
                assert after[0]["begntime"] >= termination["ban_endtime"]


def test_change_files_follow_the_snapshot_in_seq_order(registry: GeneratedRegistry) -> None:
    assert len(registry.change_files) == 5  # 300 changes, 70 per file
    seqs: list[int] = []
    for path in registry.change_files:
        file_seqs = [change["seq"] for change in changes_of(path)]
        assert all(isinstance(seq, int) for seq in file_seqs)
        assert len(file_seqs) <= 70
        match = CHANGE_FILE.fullmatch(path.name)
        assert match is not None
        assert (int(match.group(1)), int(match.group(2))) == (file_seqs[0], file_seqs[-1])
        seqs.extend(file_seqs)
    assert len(seqs) == 300
    assert seqs[0] > registry.watermark_seq
    assert all(a < b for a, b in pairwise(seqs))
    assert seqs[-1] == registry.last_change_seq


def test_every_change_passes_the_loader_validation(registry: GeneratedRegistry) -> None:
    for path in registry.change_files:
        for change in changes_of(path):
            assert list(change) == list(FIELDS)
            assert all(isinstance(value, str) for name, value in change.items() if name != "seq")
            parse_row({name: str(value) for name, value in change.items()})


def test_changes_suspend_withdraw_shorten_and_register(
    registry: GeneratedRegistry, people: dict[str, list[dict[str, str]]]
) -> None:
    periods = {row["chg_id"]: row for rows in people.values() for row in rows}
    kinds: Counter[str] = Counter()
    for path in registry.change_files:
        for change in changes_of(path):
            earlier = periods.get(change["chg_id"])
            if earlier is None:
                new_person = change["prac_psn_code"] not in people
                kinds["registration" if new_person and change["status"] == "1" else "suspension"] += 1
            elif change["vali_flag"] == "0":
                assert change["status"] == "2"
                kinds["withdrawal"] += 1
            else:
                assert earlier["endtime"] > change["endtime"] > change["begntime"]
                kinds["shortening"] += 1
            assert earlier is None or int(earlier["seq"]) < change["seq"]
            periods[change["chg_id"]] = {name: str(value) for name, value in change.items()}
    assert set(kinds) == {"registration", "suspension", "withdrawal", "shortening"}


def test_the_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 300, seed=7)
    second = generate(tmp_path / "b", 300, seed=7)
    other = generate(tmp_path / "c", 300, seed=8)
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first.snapshot.read_bytes() != other.snapshot.read_bytes()
    assert len(first.change_files) == len(second.change_files) == 1
    assert second.last_change_seq - second.watermark_seq == 10  # the default: people / 100, at least 10


def test_a_compressed_snapshot_hashes_the_compressed_bytes(tmp_path: Path) -> None:
    plain = generate(tmp_path / "plain", 500, seed=3, snapshot_id="s1")
    packed = generate(tmp_path / "packed", 500, seed=3, snapshot_id="s1", compress=True)
    assert packed.snapshot.name == "registry-s1.csv.gz"
    assert packed.manifest.name == "registry-s1.csv.gz.manifest.json"
    data = packed.snapshot.read_bytes()
    assert gzip.decompress(data) == plain.snapshot.read_bytes()
    manifest = json.loads(packed.manifest.read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["row_count"] == len(snapshot_rows(packed.snapshot)) == packed.rows


@pytest.mark.parametrize(
    "arguments",
    [
        {"people": -1},
        {"changes": -1},
        {"changes_per_file": 0},
        {"as_of": "2026-11-20"},
        {"snapshot_id": "../escape"},
    ],
    ids=["negative-people", "negative-changes", "empty-change-files", "as-of-not-a-time", "snapshot-id-a-path"],
)
def test_bad_arguments_are_refused(tmp_path: Path, arguments: dict[str, object]) -> None:
    options: dict[str, object] = {"people": 10, **arguments}
    with pytest.raises(ValueError):
        generate(tmp_path, **options)  # type: ignore[arg-type]  # wrong on purpose
    assert not list(tmp_path.iterdir())
