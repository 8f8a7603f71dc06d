"""JSON log lines: one object per line, with the extra fields such as decision_id."""

from __future__ import annotations

import json
import logging
import os
import sys

from gatekeeper.ops.logs import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.makeLogRecord({"name": "gatekeeper.api.servicer", "levelno": logging.ERROR, "levelname": "ERROR"})
    entry.msg, entry.args, entry.created = message, args, 1_800_000_000.25
    entry.__dict__.update(extra)
    return entry


def test_a_line_has_time_level_logger_message_and_extras() -> None:
    line = JsonFormatter().format(record("claim %s failed", "C1", decision_id="abc123"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250+00:00",
        "level": "ERROR",
        "logger": "gatekeeper.api.servicer",
        "message": "claim C1 failed",
        "pid": os.getpid(),
        "decision_id": "abc123",
    }


def test_a_traceback_stays_inside_the_one_line() -> None:
    try:
        raise KeyError("boom")
    except KeyError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    assert "KeyError: 'boom'" in json.loads(line)["exception"]


def test_chinese_text_and_odd_values_are_kept_readable() -> None:
    parsed = json.loads(JsonFormatter().format(record("暂停 %s", "D410102000002", window=(1, 2), where=object())))
    assert parsed["message"] == "暂停 D410102000002"
    assert parsed["window"] == [1, 2]
    assert parsed["where"].startswith("<object object")
