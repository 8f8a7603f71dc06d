"""The callers file: identities from certificates, exact and prefix grants, bad files refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gatekeeper.api.callers import (
    ANONYMOUS,
    ANYONE,
    Caller,
    CallersError,
    caller_from_auth_context,
    caller_from_certificate,
    load_callers,
    parse_callers,
)
from gatekeeper.api.errors import status_code
from gatekeeper.core.errors import PermissionDenied, Unauthenticated
from tests.certs import CertificateAuthority

CALLERS = tomllib.loads(
    """
[callers."CN=his.hospital-a.example"]
institutions = ["H41010200001", "H41010200002"]

[callers."DNS:Settlement.Zhengzhou.example"]
institutions = ["H4101*", "P4101*"]

[callers."CN=national-platform"]
institutions = ["*"]

[callers."CN=retired-his"]
institutions = []
"""
)

HOSPITAL_A = Caller(("CN=his.hospital-a.example",))
PLATFORM = Caller(("CN=zz-platform", "DNS:settlement.zhengzhou.example"))


@pytest.mark.parametrize(
    ("name", "caller", "institution", "allowed"),
    [
        ("exact code listed", HOSPITAL_A, "H41010200001", True),
        ("second exact code listed", HOSPITAL_A, "H41010200002", True),
        ("another hospital's code", HOSPITAL_A, "H41010200003", False),
        ("exact codes are not prefixes", HOSPITAL_A, "H410102000011", False),
        ("prefix covers the region's hospitals", PLATFORM, "H41010599999", True),
        ("prefix covers the region's pharmacies", PLATFORM, "P41019900001", True),
        ("prefix stops at the region", PLATFORM, "H41020200001", False),
        ("any identity of the caller counts", PLATFORM, "H41010200001", True),
        ("a star alone covers every institution", Caller(("CN=national-platform",)), "P65010100001", True),
        ("an empty list grants nothing", Caller(("CN=retired-his",)), "H41010200001", False),
        ("an unknown identity gets nothing", Caller(("CN=stranger",)), "H41010200001", False),
        ("no certificate gets nothing", ANONYMOUS, "H41010200001", False),
        ("a CN is not a DNS name", Caller(("CN=settlement.zhengzhou.example",)), "H41010200001", False),
        (
            "DNS names ignore case",
            caller_from_auth_context({"peer_dns": [b"SETTLEMENT.zhengzhou.EXAMPLE"]}),
            "H41010200001",
            True,
        ),
        ("common names do not ignore case", Caller(("CN=HIS.hospital-a.example",)), "H41010200001", False),
    ],
)
def test_may_submit(name: str, caller: Caller, institution: str, allowed: bool) -> None:
    assert parse_callers(CALLERS).may_submit(caller, institution) is allowed, name


def test_denial_names_the_institution_and_the_caller() -> None:
    with pytest.raises(PermissionDenied) as raised:
        parse_callers(CALLERS).authorize(HOSPITAL_A, "H41010200003")
    assert status_code(raised.value) == grpc.StatusCode.PERMISSION_DENIED
    assert str(raised.value) == "fixmedins_code: CN=his.hospital-a.example may not submit for institution H41010200003"


def test_without_a_callers_file_anyone_may_submit_for_anything() -> None:
    assert load_callers(None) is ANYONE
    assert not ANYONE.identifies
    assert ANYONE.may_submit(ANONYMOUS, "H41010200001")
    assert parse_callers(CALLERS).identifies


def test_identity_from_a_tls_peer() -> None:
    # As grpc.aio's ServicerContext.auth_context() reports a TLS peer.
    auth_context = {
        "transport_security_type": [b"ssl"],
        "x509_subject": [b"CN=his.hospital-a.example,O=Hospital A"],
        "x509_common_name": [b"his.hospital-a.example"],
        "x509_subject_alternative_name": [b"His.Hospital-A.example", b"127.0.0.1"],
        "peer_dns": [b"His.Hospital-A.example"],
    }
    caller = caller_from_auth_context(auth_context)
    assert caller.identities == ("CN=his.hospital-a.example", "DNS:his.hospital-a.example")
    assert str(caller) == "CN=his.hospital-a.example"


def test_a_plain_text_peer_has_no_identity() -> None:
    caller = caller_from_auth_context({})
    assert caller == ANONYMOUS
    assert str(caller) == "a caller without a client certificate"


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"callers": {"his.hospital-a.example": {"institutions": []}}}, "CN=<common name> or DNS:"),
        ({"callers": {"CN=": {"institutions": []}}}, "CN=<common name> or DNS:"),
        ({"callers": {"CN=a": {"institutions": ["H4101"]}}}, "'H4101' is neither"),
        ({"callers": {"CN=a": {"institutions": ["H41*01"]}}}, "'H41*01' is neither"),
        ({"callers": {"CN=a": {"institutions": ["X4101*"]}}}, "'X4101*' is neither"),
        ({"callers": {"CN=a": {"institutions": "H41010200001"}}}, "expected a list"),
        ({"callers": {"CN=a": {"institutions": ["H41010200001"], "role": "x"}}}, "unknown setting(s) role"),
        ({"callers": {"CN=a": ["H41010200001"]}}, "expected a table"),
        ({"callers": ["CN=a"]}, "expected a table of caller identities"),
        ({"caller": {}}, "unknown table(s) caller"),
        ({"callers": {"DNS:a.example": {"institutions": []}, "DNS:A.example": {"institutions": []}}}, "twice"),
    ],
)
def test_bad_callers_files_are_refused(document: dict[str, object], complaint: str) -> None:
    with pytest.raises(CallersError) as raised:
        parse_callers(document)
    assert complaint in str(raised.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text('[callers."CN=a"]\ninstitutions = [', encoding="utf-8")
    with pytest.raises(CallersError, match=str(path)):
        load_callers(path)
    path.write_text('[callers."CN=a"]\ninstitutions = ["H41010200001"]\n', encoding="utf-8")
    assert load_callers(path).identities == {"CN=a"}


def test_the_example_file_loads() -> None:
    callers = load_callers(Path(__file__).resolve().parents[2] / "callers.example.toml")
    assert callers.may_submit(PLATFORM, "P41010200001")
    assert not callers.may_submit(Caller(("CN=gatekeeper-healthcheck",)), "H41010200001")


def test_a_peer_certificate_names_the_caller_as_grpcs_auth_context_does(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "client-ca")
    issued = ca.issue("zz-platform-1", dns_names=("Settlement.Zhengzhou.example",))
    der = x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(serialization.Encoding.DER)
    forged = ca.issue("his.hospital-a.example\0.evil")
    forged_der = x509.load_pem_x509_certificate(forged.cert_pem).public_bytes(serialization.Encoding.DER)

    assert caller_from_certificate(der).identities == ("CN=zz-platform-1", "DNS:settlement.zhengzhou.example")
    assert caller_from_certificate(None) is ANONYMOUS  # plain text, or TLS without client certificates
    with pytest.raises(Unauthenticated):
        caller_from_certificate(forged_der)
