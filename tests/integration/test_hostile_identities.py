"""Client certificates whose names try to pass for another caller's."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import redis

from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.certs import CertificateAuthority, Issued
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import DEMO_REGISTRY, load
from tests.integration.test_mtls import CALLERS, claim_for


@pytest.mark.parametrize(
    ("common_name", "dns_names", "institution"),
    [
        pytest.param("his.hospital-a.example\x00.evil.example", (), "H41010200001", id="nul_in_common_name"),
        pytest.param(
            "zz-other", ("settlement.zhengzhou.example\x00.evil.example",), "H41010599999", id="nul_in_dns_name"
        ),
    ],
)
def test_a_name_with_a_nul_byte_is_not_taken_for_the_part_before_it(
    tmp_path: Path,
    start_gatekeeper: StartGatekeeper,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    common_name: str,
    dns_names: tuple[str, ...],
    institution: str,
) -> None:
    load(redis_client, DEMO_REGISTRY)
    server_ca = CertificateAuthority(tmp_path, "server-ca")
    client_ca = CertificateAuthority(tmp_path, "client-ca")
    server = server_ca.issue("gatekeeper", server=True)
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS, encoding="utf-8")
    gatekeeper = start_gatekeeper(
        tls_cert_path=server.cert_path,
        tls_key_path=server.key_path,
        tls_client_ca_path=client_ca.cert_path,
        callers_path=callers,
    )
    # Signed by the very CA the server trusts: a CA that checked only the part after the NUL.
    impostor: Issued = client_ca.issue(common_name, dns_names=dns_names)
    credentials = grpc.ssl_channel_credentials(server_ca.cert_pem, impostor.key_pem, impostor.cert_pem)
    with (
        caplog.at_level(logging.WARNING),
        grpc.secure_channel(gatekeeper.target, credentials) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.GatekeeperStub(channel).CheckClaim(claim_for(institution), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "NUL" in raised.value.details()
    assert any("NUL" in record.getMessage() for record in caplog.records)
