"""The eligibility record: the one schema the loader writes and the gatekeeper reads.

A practitioner's record holds all of their status periods. It is stored as the value
of a hash field in Redis, encoded as MessagePack arrays (``array_like``) with trailing
defaults left out, so that a plain registration costs about 30 bytes (its chg_id whole). Every value is a
non-nil integer or string: the loader's Redis Function (Lua ``cmsgpack``) decodes and
re-encodes records when it merges changes, and Lua tables cannot carry nil holes or
integers above 2**53.
"""

from __future__ import annotations

import enum

import msgspec

OPEN_ENDED = 0  # endtime / ban_endtime value meaning "no end"
# The longest reason text kept: the national interfaces give chg_rea a few hundred
# characters. The loader cuts longer ones (and reports it); responses never carry more.
MAX_CHG_REA_LENGTH = 500


class Status(enum.IntEnum):
    """A status period's kind, as the registry numbers them; WITHDRAWN is ours."""

    WITHDRAWN = 0  # vali_flag = 0: kept only so that an older change cannot revive it
    REGISTERED = 1  # 正常
    SUSPENDED = 2  # 暂停
    TERMINATED = 3  # 终止


class StatusPeriod(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One status window ``[begntime, endtime)`` of one practitioner, in epoch seconds."""

    # The order is the storage order: fields that are usually at their default come last.
    status: int
    begntime: int
    # The registry's id of this period, whole: its identity (a later version with the same
    # chg_id replaces it). An int in a cache loaded before it was kept here (the chg_id's
    # CRC-32): still read, so a service can be upgraded before its cache is reloaded.
    chg_id: str | int
    seq: int  # the registry's change sequence number for this period
    endtime: int = OPEN_ENDED
    ban_endtime: int = OPEN_ENDED
    chg_rea: str = ""

    def covers(self, moment: int) -> bool:
        """True when ``moment`` lies in ``[begntime, endtime)``."""
        return self.begntime <= moment and (self.endtime == OPEN_ENDED or moment < self.endtime)


class PractitionerRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Everything the gatekeeper knows about one practitioner code."""

    prac_psn_type: int  # 1 doctor, 2 nurse, 3 pharmacist, 4 technician
    periods: tuple[StatusPeriod, ...]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PractitionerRecord)


def period_array(
    status: int,
    begntime: int,
    chg_id: str | int,
    seq: int,
    endtime: int = OPEN_ENDED,
    ban_endtime: int = OPEN_ENDED,
    chg_rea: str = "",
) -> tuple[object, ...]:
    """A period as stored: the fields in order, trailing defaults left out.

    msgspec writes every field of an ``array_like`` struct, defaults included, but decodes
    shorter arrays; leaving them out here saves 3 bytes a registration (45 MB nationally).
    """
    if chg_rea:
        return (status, begntime, chg_id, seq, endtime, ban_endtime, chg_rea)
    if ban_endtime:
        return (status, begntime, chg_id, seq, endtime, ban_endtime)
    if endtime:
        return (status, begntime, chg_id, seq, endtime)
    return (status, begntime, chg_id, seq)


def encode_record(record: PractitionerRecord) -> bytes:
    """The bytes stored in Redis for ``record``."""
    return _encoder.encode(
        (record.prac_psn_type, tuple(period_array(*msgspec.structs.astuple(p)) for p in record.periods))
    )


def decode_record(data: bytes) -> PractitionerRecord:
    """Decode bytes written by :func:`encode_record` (or the loader's Redis Function)."""
    return _decoder.decode(data)


def one_period_record(prac_psn_type: int, period: tuple[object, ...]) -> bytes:
    """The encoded record holding just one period (from :func:`period_array`): what the
    loader's merge functions take."""
    return _encoder.encode((prac_psn_type, (period,)))


def merge_period(periods: tuple[StatusPeriod, ...], incoming: StatusPeriod) -> tuple[StatusPeriod, ...] | None:
    """``periods`` with ``incoming`` replacing the period of the same ``chg_id``.

    None when a period with that key already has a ``seq`` at least as high: a change
    never overwrites a newer one, so duplicates and reordered deliveries are harmless.
    The loader's Redis Function implements the same rule in Lua.
    """
    for index, period in enumerate(periods):
        if period.chg_id == incoming.chg_id:
            if period.seq >= incoming.seq:
                return None
            return (*periods[:index], incoming, *periods[index + 1 :])
    return (*periods, incoming)
