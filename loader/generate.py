"""A synthetic national registry export (snapshot, manifest, change files) for demos, tests and benchmarks."""

from __future__ import annotations

import calendar
import gzip
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, TypeVar

from gatekeeper.core.cst import parse_cst
from loader.rows import FIELDS

# Real county-level administrative divisions, with a weight per province that follows its
# population roughly, so that big provinces hold more practitioners than Tibet or Qinghai.
_DIVISIONS_BY_PROVINCE: tuple[tuple[int, tuple[str, ...]], ...] = (
    (2, ("110101", "110102", "110105", "110106", "110108", "110114", "110115")),  # 北京
    (1, ("120101", "120103", "120104", "120116")),  # 天津
    (6, ("130102", "130104", "130202", "130602", "131002")),  # 河北
    (3, ("140105", "140106", "140107")),  # 山西
    (2, ("150102", "150103", "150203")),  # 内蒙古
    (3, ("210102", "210103", "210202", "210204")),  # 辽宁
    (2, ("220102", "220104", "220202")),  # 吉林
    (2, ("230102", "230103", "230202")),  # 黑龙江
    (2, ("310101", "310104", "310105", "310106", "310107", "310110", "310112", "310115")),  # 上海
    (7, ("320102", "320104", "320106", "320205", "320505", "320508", "320602", "321002")),  # 江苏
    (5, ("330102", "330105", "330106", "330203", "330302", "330522", "330602")),  # 浙江
    (5, ("340102", "340104", "340202")),  # 安徽
    (3, ("350102", "350203", "350206")),  # 福建
    (3, ("360102", "360103")),  # 江西
    (8, ("370102", "370103", "370202", "370203", "370602", "370702")),  # 山东
    (8, ("410102", "410105", "410302", "410702", "411302")),  # 河南
    (5, ("420102", "420106", "420111", "420502")),  # 湖北
    (5, ("430102", "430103", "430104", "430202")),  # 湖南
    (9, ("440103", "440104", "440105", "440106", "440303", "440304", "440305", "440604", "441900", "442000")),  # 广东
    (4, ("450102", "450103", "450302")),  # 广西
    (1, ("460105", "460106", "460202")),  # 海南
    (2, ("500103", "500105", "500106", "500108")),  # 重庆
    (6, ("510104", "510105", "510106", "510107", "510108", "510703")),  # 四川
    (3, ("520102", "520103")),  # 贵州
    (3, ("530102", "530103")),  # 云南
    (1, ("540102",)),  # 西藏
    (3, ("610102", "610103", "610104", "610113")),  # 陕西
    (2, ("620102", "620103")),  # 甘肃
    (1, ("630102", "630103")),  # 青海
    (1, ("640104", "640105")),  # 宁夏
    (2, ("650102", "650103")),  # 新疆
)
DIVISIONS: tuple[str, ...] = tuple(d for _, divisions in _DIVISIONS_BY_PROVINCE for d in divisions)
_SEQUENCE_LIMIT = 1_000_000  # a code's last 6 digits number the practitioners of one division

# (code prefix, prac_psn_type) per percent: 40 doctors, 45 nurses, 8 pharmacists,
# 5 technicians, 1 institution pharmacy and 1 institution technical staff.
_TYPES: tuple[tuple[str, str], ...] = (
    *[("D", "1")] * 40,
    *[("N", "2")] * 45,
    *[("Y", "3")] * 8,
    *[("J", "4")] * 5,
    ("HY", "3"),
    ("HJ", "4"),
)

# Cumulative shares of the standings at as_of; the rest (0.5 %) had their registration end.
_REGISTERED = 0.94
_SUSPENDED = _REGISTERED + 0.03
_TERMINATED = _SUSPENDED + 0.01
_REREGISTERED = _TERMINATED + 0.01
_WITHDRAWN = _REREGISTERED + 0.005

# Registrations began 11 months to about 17 years before as_of (2010-2025 for the default).
_REGISTRATION_NEWEST = 324
_REGISTRATION_SPAN = 5844

_REGISTRATION_REASONS = ("首次注册", "执业注册", "变更执业机构", "多机构备案")
_REREGISTRATION_REASON = "禁入期满重新登记备案"
_DEREGISTRATION_REASON = "注销执业注册"
# Some reasons carry ASCII commas and double quotes, as real exports do, to exercise CSV quoting.
_SUSPENSION_REASONS = (
    "年度累计记9分，暂停医保支付资格1个月",
    "违规开具处方，记9分",
    "串换药品, 分解收费; 累计记10分",
    '"挂床住院"，记9分',
    '诱导住院, 虚记"护理费"项目',
    "超适应症用药，记6分；累计9分",
    "药师未审核处方即调配, 记9分",
)
_TERMINATION_REASONS = (
    "年度累计记12分，终止医保支付资格",
    '伪造医学文书, "一次性记12分"',
    "欺诈骗保，记12分，3年内不得再次登记备案",
)
_WITHDRAWAL_REASONS = ('申诉成功, 撤销"暂停"决定', "复核撤销记分，暂停不再执行")
_SHORTENING_REASONS = ("修复记分，缩短暂停期", '完成"信用修复", 暂停期缩短')

# Shares of the change feed; anything the pools cannot serve becomes a new registration.
_NEW_REGISTRATION = 0.25
_NEW_SUSPENSION = _NEW_REGISTRATION + 0.40
_WITHDRAWAL = _NEW_SUSPENSION + 0.17

_SNAPSHOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FLUSH_LINES = 16_384
_T = TypeVar("_T")


@dataclass(frozen=True)
class GeneratedRegistry:
    """The files a call to :func:`generate` wrote; ``people`` counts the snapshot only."""

    snapshot: Path
    manifest: Path
    change_files: list[Path]
    people: int
    rows: int
    watermark_seq: int
    last_change_seq: int


@dataclass(slots=True)
class _Suspension:
    code: str
    prac_psn_type: str
    chg_id: str
    begin: int  # day ordinals
    end: int


class _HashingFile:
    """Passes bytes on to a file and hashes them, so the manifest needs no second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _add_months(day: int, months: int) -> int:
    start = date.fromordinal(day)
    year, month = divmod(start.month - 1 + months, 12)
    year += start.year
    return date(year, month + 1, min(start.day, calendar.monthrange(year, month + 1)[1])).toordinal()


class _Generator:
    """The state shared by the snapshot and the change feed: random source, codes, seq, days."""

    def __init__(self, seed: int, as_of: str) -> None:
        self.rng = random.Random(seed)
        self.as_day = date.fromisoformat(as_of[:10]).toordinal()
        # Every time is midnight of some day: real exports repeat a few thousand dates, and the
        # loader's parse cache counts on that.
        self.first_day = self.as_day - _REGISTRATION_NEWEST - _REGISTRATION_SPAN - 4000
        last_day = self.as_day + 4 * 366
        self.day_text = [date.fromordinal(day).isoformat() + " 00:00:00" for day in range(self.first_day, last_day + 1)]
        pool: list[int] = []
        index = 0
        for weight, divisions in _DIVISIONS_BY_PROVINCE:
            for _ in divisions:
                # Spread a province's weight over its divisions, but give every division a share.
                pool.extend([index] * max(1, round(weight * 12 / len(divisions))))
                index += 1
        self.division_pool = pool
        self.counters = [0] * len(DIVISIONS)
        self.seq = 0
        self.registered: list[tuple[str, str, int]] = []  # candidates for new suspensions
        self.suspensions: list[_Suspension] = []  # candidates for withdrawal and shortening

    def time(self, day: int) -> str:
        return self.day_text[day - self.first_day]

    def new_code(self) -> tuple[str, str]:
        """A fresh (code, prac_psn_type): division plus a per-division counter, so never repeated."""
        rng = self.rng
        prefix, prac_psn_type = _TYPES[int(rng.random() * 100)]
        division = self.division_pool[int(rng.random() * len(self.division_pool))]
        while self.counters[division] >= _SEQUENCE_LIMIT - 1:
            division = (division + 1) % len(DIVISIONS)
        self.counters[division] += 1
        return f"{prefix}{DIVISIONS[division]}{self.counters[division]:06d}", prac_psn_type

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def days(self, low: int, high: int) -> int:
        """A whole number of days in [low, high]."""
        return low + int(self.rng.random() * (high - low + 1))

    def registration_day(self) -> int:
        return self.as_day - _REGISTRATION_NEWEST - int(self.rng.random() * _REGISTRATION_SPAN)

    def choice(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.random() * len(options))]


def _snapshot_row(
    g: _Generator,
    code: str,
    prac_psn_type: str,
    status: int,
    begin: int,
    end: int | None,
    reason: str,
    *,
    ban_end: int | None = None,
    vali_flag: int = 1,
) -> str:
    seq = g.next_seq()
    endtime = "" if end is None else g.time(end)
    ban_endtime = "" if ban_end is None else g.time(ban_end)
    return (
        f"{code},{prac_psn_type},CHG{seq:010d},{status},{g.time(begin)},{endtime},{ban_endtime},"
        f"{_csv_field(reason)},{vali_flag},{seq}\r\n"
    )


def _unusual_person(g: _Generator, standing: float, sample_suspension: bool) -> list[str]:
    """The rows of one practitioner who is not simply registered (6 % of them)."""
    code, prac_psn_type = g.new_code()
    registration = g.registration_day()
    rows: list[str]
    if standing < _SUSPENDED or _REREGISTERED <= standing < _WITHDRAWN:
        withdrawn = standing >= _SUSPENDED
        # A withdrawn one was appealed some time ago; a standing one covers as_of, ended
        # recently or is about to start.
        begin = g.as_day - g.days(30, 700) if withdrawn else g.as_day + g.days(-270, 30)
        end = _add_months(begin, g.days(1, 6))
        rows = [_snapshot_row(g, code, prac_psn_type, 1, registration, None, g.choice(_REGISTRATION_REASONS))]
        rows.append(
            _snapshot_row(
                g, code, prac_psn_type, 2, begin, end, g.choice(_SUSPENSION_REASONS), vali_flag=0 if withdrawn else 1
            )
        )
        if not withdrawn and sample_suspension:
            g.suspensions.append(_Suspension(code, prac_psn_type, f"CHG{g.seq:010d}", begin, end))
    elif standing < _TERMINATED:
        terminated = g.as_day - g.days(0, 1100)
        ban_end = _add_months(terminated, 12 if g.rng.random() < 0.7 else 36)
        registration = min(registration, terminated - 330)
        reason = g.choice(_REGISTRATION_REASONS)
        rows = [
            _snapshot_row(g, code, prac_psn_type, 1, registration, terminated, reason),
            _snapshot_row(g, code, prac_psn_type, 3, terminated, None, g.choice(_TERMINATION_REASONS), ban_end=ban_end),
        ]
    elif standing < _REREGISTERED:
        ban_months = 12 if g.rng.random() < 0.7 else 36
        # Old enough that the ban had ended, and the person come back, by as_of.
        terminated = g.as_day - ban_months * 31 - 180 - g.days(0, 1500)
        ban_end = _add_months(terminated, ban_months)
        reregistered = ban_end + g.days(0, 180)
        registration = min(registration, terminated - 330)
        rows = [
            _snapshot_row(g, code, prac_psn_type, 1, registration, terminated, g.choice(_REGISTRATION_REASONS)),
            _snapshot_row(
                g, code, prac_psn_type, 3, terminated, reregistered, g.choice(_TERMINATION_REASONS), ban_end=ban_end
            ),
            _snapshot_row(g, code, prac_psn_type, 1, reregistered, None, _REREGISTRATION_REASON),
        ]
    else:
        ended = g.as_day - g.days(30, 2000)
        rows = [_snapshot_row(g, code, prac_psn_type, 1, ended - g.days(365, 5000), ended, _DEREGISTRATION_REASON)]
    return rows


def _write_snapshot(g: _Generator, write: Callable[[bytes], object], people: int, changes: int) -> int:
    """Stream the snapshot's rows through ``write``; the number of rows."""
    write((",".join(FIELDS) + "\r\n").encode("utf-8"))
    # Keep every n-th registered person and suspension as a subject of the change feed,
    # spread over the whole file, without holding the snapshot in memory.
    registered_stride = max(1, int(people * _REGISTERED / max(1, changes // 2)))
    suspension_stride = max(1, int(people * (_SUSPENDED - _REGISTERED) / max(1, changes // 3)))
    suspensions_seen = 0
    rng_random = g.rng.random
    types, pool, pool_size, divisions, counters = _TYPES, g.division_pool, len(g.division_pool), DIVISIONS, g.counters
    day_text, first_day = g.day_text, g.first_day
    newest = g.as_day - _REGISTRATION_NEWEST - first_day
    reasons = _REGISTRATION_REASONS
    lines: list[str] = []
    rows = 0
    # The common case (94 %) is inlined: this loop runs 15 million times for a national registry.
    for person in range(people):
        standing = rng_random()
        if standing >= _REGISTERED:
            suspensions_seen += standing < _SUSPENDED
            unusual = _unusual_person(g, standing, suspensions_seen % suspension_stride == 0)
            lines.extend(unusual)
            rows += len(unusual)
        else:
            prefix, prac_psn_type = types[int(rng_random() * 100)]
            division = pool[int(rng_random() * pool_size)]
            sequence = counters[division] + 1
            if sequence >= _SEQUENCE_LIMIT:  # this division is full: new_code moves on to the next
                code, prac_psn_type = g.new_code()
            else:
                counters[division] = sequence
                code = f"{prefix}{divisions[division]}{sequence:06d}"
            seq = g.seq = g.seq + 1
            begin = newest - int(rng_random() * _REGISTRATION_SPAN)
            lines.append(f"{code},{prac_psn_type},CHG{seq:010d},1,{day_text[begin]},,,{reasons[seq & 3]},1,{seq}\r\n")
            rows += 1
            if person % registered_stride == 0:
                g.registered.append((code, prac_psn_type, begin + first_day))
        if len(lines) >= _FLUSH_LINES:
            write("".join(lines).encode("utf-8"))
            lines.clear()
    write("".join(lines).encode("utf-8"))
    return rows


def _change(
    g: _Generator,
    code: str,
    prac_psn_type: str,
    chg_id: str,
    status: int,
    begin: int,
    end: int | None,
    reason: str,
    vali_flag: int = 1,
) -> dict[str, str | int]:
    change: dict[str, str | int] = {
        "prac_psn_code": code,
        "prac_psn_type": prac_psn_type,
        "chg_id": chg_id,
        "status": str(status),
        "begntime": g.time(begin),
        "endtime": "" if end is None else g.time(end),
        "ban_endtime": "",
        "chg_rea": reason,
        "vali_flag": str(vali_flag),
        "seq": g.seq,
    }
    return change


def _next_change(g: _Generator) -> dict[str, str | int]:
    """One change after the snapshot: a suspension, a withdrawal, a shortening or a newcomer."""
    seq = g.next_seq()
    kind = g.rng.random()
    if _NEW_REGISTRATION <= kind < _NEW_SUSPENSION and g.registered:
        code, prac_psn_type, registered = _take(g, g.registered)
        begin = max(g.as_day + g.days(-7, 14), registered + 1)
        suspension = _Suspension(code, prac_psn_type, f"CHG{seq:010d}", begin, _add_months(begin, g.days(1, 6)))
        g.suspensions.append(suspension)
        return _change(
            g, code, prac_psn_type, suspension.chg_id, 2, begin, suspension.end, g.choice(_SUSPENSION_REASONS)
        )
    if _NEW_SUSPENSION <= kind < _WITHDRAWAL and g.suspensions:
        s = _take(g, g.suspensions)
        reason = g.choice(_WITHDRAWAL_REASONS)
        return _change(g, s.code, s.prac_psn_type, s.chg_id, 2, s.begin, s.end, reason, vali_flag=0)
    if kind >= _WITHDRAWAL and g.suspensions:
        s = g.suspensions[int(g.rng.random() * len(g.suspensions))]
        if s.end - s.begin >= 2:
            s.end = s.begin + g.days(1, s.end - s.begin - 1)
            return _change(g, s.code, s.prac_psn_type, s.chg_id, 2, s.begin, s.end, g.choice(_SHORTENING_REASONS))
    code, prac_psn_type = g.new_code()
    begin = g.as_day - g.days(0, 30)
    g.registered.append((code, prac_psn_type, begin))
    return _change(g, code, prac_psn_type, f"CHG{seq:010d}", 1, begin, None, g.choice(_REGISTRATION_REASONS))


def _take(g: _Generator, pool: list[_T]) -> _T:
    """Remove a random element in O(1): order within the pool carries no meaning."""
    index = int(g.rng.random() * len(pool))
    pool[index], pool[-1] = pool[-1], pool[index]
    return pool.pop()


def _write_changes(g: _Generator, directory: Path, changes: int, changes_per_file: int) -> list[Path]:
    paths: list[Path] = []
    remaining = changes
    while remaining > 0:
        batch = [_next_change(g) for _ in range(min(changes_per_file, remaining))]
        remaining -= len(batch)
        path = directory / f"changes-{batch[0]['seq']}-{batch[-1]['seq']}.jsonl"
        text = "".join(json.dumps(change, ensure_ascii=False, separators=(",", ":")) + "\n" for change in batch)
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def generate(
    directory: Path,
    people: int,
    *,
    seed: int = 1,
    changes: int | None = None,
    compress: bool = False,
    snapshot_id: str | None = None,
    as_of: str = "2026-11-20 00:00:00",
    changes_per_file: int = 10_000,
) -> GeneratedRegistry:
    """Write a synthetic registry export of ``people`` practitioners into ``directory``.

    The snapshot ``registry-<snapshot_id>.csv`` (``.csv.gz`` with ``compress``) and its
    manifest describe the registry at ``as_of``: 94 % registered, 3 % suspended around
    ``as_of``, 1 % terminated, 1 % re-registered after a ban, 0.5 % with a withdrawn
    suspension, 0.5 % whose registration ended. ``changes`` change-feed records (default
    ``people // 100``, at least 10) follow in ``changes-<first>-<last>.jsonl`` files. The
    same arguments always give the same bytes. Files of the same names are replaced.
    """
    if people < 0:
        raise ValueError("people must not be negative")
    if changes is None:
        changes = max(10, people // 100)
    if changes < 0:
        raise ValueError("changes must not be negative")
    if changes_per_file < 1:
        raise ValueError("changes_per_file must be at least 1")
    if people + changes > len(DIVISIONS) * (_SEQUENCE_LIMIT - 1):
        raise ValueError(f"at most {len(DIVISIONS) * (_SEQUENCE_LIMIT - 1)} practitioners have distinct codes")
    parse_cst(as_of)  # refuses anything but "yyyy-MM-dd HH:mm:ss"
    if snapshot_id is None:
        snapshot_id = as_of[:10].replace("-", "")
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ValueError(f"snapshot_id {snapshot_id!r} is not a plain file-name part")

    directory.mkdir(parents=True, exist_ok=True)
    g = _Generator(seed, as_of)
    snapshot = directory / f"registry-{snapshot_id}.csv{'.gz' if compress else ''}"
    with snapshot.open("wb") as raw:
        sink = _HashingFile(raw)
        if compress:
            # mtime=0 and no file name in the header: the same seed gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=1, mtime=0) as packed:
                rows = _write_snapshot(g, packed.write, people, changes)
        else:
            rows = _write_snapshot(g, sink.write, people, changes)
    watermark_seq = g.seq
    manifest = snapshot.with_name(snapshot.name + ".manifest.json")
    document = {
        "snapshot_id": snapshot_id,
        "row_count": rows,
        "watermark_seq": watermark_seq,
        "sha256": sink.sha256.hexdigest(),
        "generated_at": as_of,
    }
    manifest.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    change_files = _write_changes(g, directory, changes, changes_per_file)
    return GeneratedRegistry(snapshot, manifest, change_files, people, rows, watermark_seq, g.seq)
