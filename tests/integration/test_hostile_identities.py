"""Client certificates whose names try to pass for another caller's."""

from __future__ import annotations

import logging

import grpc
import pytest

from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.certs import Issued
from tests.integration.test_mtls import Pki, claim_for, pki  # noqa: F401 - pki is a fixture


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
    pki: Pki,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
    common_name: str,
    dns_names: tuple[str, ...],
    institution: str,
) -> None:
    # Signed by the very CA the server trusts: a CA that checked only the part after the NUL.
    impostor: Issued = pki.client_ca.issue(common_name, dns_names=dns_names)
    credentials = grpc.ssl_channel_credentials(pki.server_ca.cert_pem, impostor.key_pem, impostor.cert_pem)
    with (
        caplog.at_level(logging.WARNING),
        grpc.secure_channel(pki.target, credentials) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.GatekeeperStub(channel).CheckClaim(claim_for(institution), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "NUL" in raised.value.details()
    assert any("NUL" in record.getMessage() for record in caplog.records)
