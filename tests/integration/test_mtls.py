"""Mutual TLS and the callers file, over real gRPC with certificates made for the test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from gatekeeper.v1 import gatekeeper_pb2 as pb
from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc
from tests.certs import CertificateAuthority, Issued
from tests.integration.conftest import StartGatekeeper
from tests.integration.registry import DEMO_CLAIM, DEMO_REGISTRY, load
from tests.integration.test_check_claim import demo_claim
from tests.integration.test_cli import BIN, run

CALLERS = """
[callers."CN=his.hospital-a.example"]
institutions = ["H41010200001"]

[callers."CN=his.hospital-b.example"]
institutions = ["H41010200002"]

[callers."DNS:settlement.zhengzhou.example"]
institutions = ["H4101*"]
"""


@dataclass
class Pki:
    server_ca: CertificateAuthority
    hospital_a: Issued
    hospital_b: Issued
    platform: Issued
    stranger: Issued  # signed by another CA, with an identity the callers file knows
    target: str
    client_ca: CertificateAuthority  # the CA the server trusts for callers
    http_port: int  # the JSON-over-HTTP door, with the same TLS and callers (test_http.py)


@pytest.fixture
def pki(tmp_path: Path, start_gatekeeper: StartGatekeeper, redis_client: redis.Redis) -> Iterator[Pki]:
    load(redis_client, DEMO_REGISTRY)
    server_ca = CertificateAuthority(tmp_path, "server-ca")
    client_ca = CertificateAuthority(tmp_path, "client-ca")
    rogue_ca = CertificateAuthority(tmp_path, "rogue-ca")
    server = server_ca.issue("gatekeeper", server=True)
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS, encoding="utf-8")
    gatekeeper = start_gatekeeper(
        tls_cert_path=server.cert_path,
        tls_key_path=server.key_path,
        tls_client_ca_path=client_ca.cert_path,
        callers_path=callers,
        http_listen="127.0.0.1:0",
    )
    assert gatekeeper.http_port is not None
    yield Pki(
        server_ca,
        client_ca.issue("his.hospital-a.example"),
        client_ca.issue("his.hospital-b.example"),
        client_ca.issue("zz-platform-1", dns_names=("settlement.zhengzhou.example",)),
        rogue_ca.issue("his.hospital-a.example"),
        gatekeeper.target,
        client_ca,
        gatekeeper.http_port,
    )


def stub(pki: Pki, client: Issued | None) -> tuple[grpc.Channel, pb_grpc.GatekeeperStub]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.server_ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    channel = grpc.secure_channel(pki.target, credentials)
    return channel, pb_grpc.GatekeeperStub(channel)


def claim_for(institution: str, claim_id: str = "C1") -> pb.CheckClaimRequest:
    request = demo_claim()
    request.claim_id = claim_id
    request.fixmedins_code = institution
    return request


def test_a_caller_is_decided_for_its_own_institution(pki: Pki) -> None:
    channel, gatekeeper = stub(pki, pki.hospital_a)
    with channel:
        response = gatekeeper.CheckClaim(claim_for("H41010200001"), timeout=5)
    assert response.verdict == pb.CLAIM_VERDICT_PARTIAL
    assert len(response.items) == 9


def test_a_caller_is_denied_another_institution_by_name(pki: Pki) -> None:
    channel, gatekeeper = stub(pki, pki.hospital_b)
    with channel, pytest.raises(grpc.RpcError) as raised:
        gatekeeper.CheckClaim(claim_for("H41010200001"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "H41010200001" in raised.value.details()
    assert "CN=his.hospital-b.example" in raised.value.details()


def test_no_client_certificate_is_refused_at_the_handshake(pki: Pki) -> None:
    channel, gatekeeper = stub(pki, None)
    with channel, pytest.raises(grpc.RpcError) as raised:
        gatekeeper.CheckClaim(claim_for("H41010200001"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(pki: Pki) -> None:
    channel, gatekeeper = stub(pki, pki.stranger)  # same CN as hospital A, wrong issuer
    with channel, pytest.raises(grpc.RpcError) as raised:
        gatekeeper.CheckClaim(claim_for("H41010200001"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plain_text_is_refused_by_a_tls_server(pki: Pki) -> None:
    with grpc.insecure_channel(pki.target) as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GatekeeperStub(channel).CheckClaim(claim_for("H41010200001"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_platform_prefix_covers_its_region_claim_by_claim(pki: Pki) -> None:
    batch = pb.CheckClaimsRequest(
        claims=[claim_for("H41010599999", "in-region"), claim_for("H41130200746", "other-city")]
    )
    channel, gatekeeper = stub(pki, pki.platform)
    with channel:
        response = gatekeeper.CheckClaims(batch, timeout=5)
    inside, outside = response.results
    assert inside.claim_id == "in-region" and inside.response.verdict == pb.CLAIM_VERDICT_PARTIAL
    assert outside.claim_id == "other-city" and not outside.HasField("response")
    assert outside.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "H41130200746" in outside.error.message


def test_get_practitioner_checks_the_institution_when_one_is_given(pki: Pki) -> None:
    channel, gatekeeper = stub(pki, pki.hospital_a)
    with channel:
        own = gatekeeper.GetPractitioner(
            pb.GetPractitionerRequest(prac_psn_code="D410102000002", fixmedins_code="H41010200001"), timeout=5
        )
        anywhere = gatekeeper.GetPractitioner(pb.GetPractitionerRequest(prac_psn_code="D410102000002"), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            gatekeeper.GetPractitioner(
                pb.GetPractitionerRequest(prac_psn_code="D410102000002", fixmedins_code="H41010200002"), timeout=5
            )
    assert own.prac_psn_code == anywhere.prac_psn_code == "D410102000002"
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "H41010200002" in raised.value.details()


def test_the_cli_speaks_mutual_tls(pki: Pki) -> None:
    client = pki.hospital_a
    tls = ["--target", pki.target, "--tls-ca", str(pki.server_ca.cert_path)]
    tls += ["--tls-cert", str(client.cert_path), "--tls-key", str(client.key_path)]
    env = dict(os.environ)

    health = run(str(BIN / "gatekeeper"), "health", *tls, env=env)
    checked = run(str(BIN / "gatekeeper"), "check", str(DEMO_CLAIM), *tls, env=env)
    anonymous = run(str(BIN / "gatekeeper"), "health", *tls[:4], "--timeout", "1", env=env)

    assert (health.returncode, health.stdout.strip()) == (0, f"SERVING: the gatekeeper at {pki.target} (--target)"), (
        health.stderr
    )
    assert checked.returncode == 0, checked.stderr
    assert "claim PARTIAL: allowed 156.00, blocked 175.50" in checked.stdout
    assert anonymous.returncode == 1 and "requires a client certificate" in anonymous.stderr
