"""The committed gatekeeper/v1 code is what scripts/proto generates from the .proto."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    arguments = ["protoc", f"-I{REPO / 'proto'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    arguments += [f"--grpc_python_out={tmp_path}", str(REPO / "proto/gatekeeper/v1/gatekeeper.proto")]
    assert protoc.main(arguments) == 0
    for name in ("gatekeeper_pb2.py", "gatekeeper_pb2.pyi", "gatekeeper_pb2_grpc.py"):
        generated = (tmp_path / "gatekeeper/v1" / name).read_text()
        committed = (REPO / "gatekeeper/v1" / name).read_text()
        assert generated == committed, f"gatekeeper/v1/{name} is stale: run scripts/proto"
