"""Who may call: caller identities from client certificates, and the institutions each may submit for.

A caller is identified by its client certificate (mutual TLS), under the names
``CN=<subject common name>`` and ``DNS:<name>`` for each DNS name in its subjectAltName,
the forms ``openssl x509 -noout -subject -ext subjectAltName`` shows. The callers file
(TOML) binds identities to institution codes, exactly or by prefix::

    [callers."CN=his.hospital-a.example"]
    institutions = ["H41010200001", "H41010200002"]

    [callers."DNS:settlement.zhengzhou.example"]   # a settlement platform for its region
    institutions = ["H4101*", "P4101*"]

A caller may submit for an institution when any of its identities is granted it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from gatekeeper.core.codes import is_institution_code
from gatekeeper.core.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

COMMON_NAME = "CN="
DNS_NAME = "DNS:"
NUL_IN_NAME = "client certificate: a common name or DNS name contains a NUL byte"
# "*" (every institution), "H*", "H4101*", "P330522*": a letter and up to 10 digits, then "*".
_PREFIX_PATTERN = re.compile(r"(?:[HP][0-9]{0,10})?\*")


class CallersError(ValueError):
    """A callers file that cannot be used; the message says where."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the identities its client certificate vouches for (none without one)."""

    identities: tuple[str, ...]

    def __str__(self) -> str:
        return self.identities[0] if self.identities else "a caller without a client certificate"


ANONYMOUS = Caller(())


@dataclass(frozen=True, slots=True)
class Grant:
    """The institutions one identity may submit for: exact codes and code prefixes."""

    codes: frozenset[str]
    prefixes: tuple[str, ...]

    def covers(self, institution: str) -> bool:
        """True when ``institution`` is one of the codes or starts with one of the prefixes."""
        return institution in self.codes or institution.startswith(self.prefixes)


def _identity(text: str) -> str:
    """An identity in its compared form: DNS names are case-insensitive, common names are not."""
    if text.startswith(DNS_NAME):
        return DNS_NAME + text[len(DNS_NAME) :].lower()
    return text


def _names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    """The subject common names and subjectAltName DNS names of a certificate."""
    common_names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    dns_names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        alt_names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = alt_names.get_values_for_type(x509.DNSName)
    return common_names, dns_names


def _refuses_nul(certificate: x509.Certificate, names: list[str]) -> bool:
    """True (and a warning) when one of ``names`` of the certificate contains a NUL byte."""
    bad = [name for name in names if "\0" in name]
    if bad:
        log.warning(
            "refused a client certificate with a NUL byte in a name (%s; serial %x, issuer %s): "
            "gRPC would identify it by the part before the NUL",
            ", ".join(repr(name) for name in bad),
            certificate.serial_number,
            certificate.issuer.rfc4514_string(),
        )
    return bool(bad)


@functools.lru_cache(maxsize=1024)
def _has_name_with_nul(pem: bytes) -> bool:
    """True when a common name or DNS name of the certificate contains a NUL byte (logged
    once per certificate: callers keep their certificate for many RPCs)."""
    certificate = x509.load_pem_x509_certificate(pem)
    common_names, dns_names = _names(certificate)
    return _refuses_nul(certificate, common_names + dns_names)


def caller_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> Caller:
    """The caller of an RPC, from ``ServicerContext.auth_context()`` of a TLS connection.

    gRPC puts the subject common name under ``x509_common_name`` and the subjectAltName
    DNS names under ``peer_dns``; a plain-text connection has neither. gRPC cuts those at a
    NUL byte, so "CN=his.hospital-a.example<NUL>.evil" would pass for hospital A: a certificate
    with a NUL in a name is refused (Unauthenticated), judged on the certificate itself.
    """
    for pem in auth_context.get("x509_pem_cert", ()):
        if _has_name_with_nul(bytes(pem)):
            raise Unauthenticated(NUL_IN_NAME)
    names = [COMMON_NAME + cn.decode("utf-8", "replace") for cn in auth_context.get("x509_common_name", ())]
    names += [_identity(DNS_NAME + dns.decode("utf-8", "replace")) for dns in auth_context.get("peer_dns", ())]
    return Caller(tuple(names))


@functools.lru_cache(maxsize=1024)
def _certificate_caller(der: bytes) -> Caller | None:
    """The caller a DER certificate names; None (logged once) when a name holds a NUL byte."""
    certificate = x509.load_der_x509_certificate(der)
    common_names, dns_names = _names(certificate)
    if _refuses_nul(certificate, common_names + dns_names):
        return None
    names = [COMMON_NAME + cn for cn in common_names] + [_identity(DNS_NAME + dns) for dns in dns_names]
    return Caller(tuple(names))


def caller_from_certificate(der: bytes | None) -> Caller:
    """The caller of a TLS connection from its peer's certificate (DER, as
    ``ssl.SSLObject.getpeercert(binary_form=True)`` gives it; None without one): the same
    names, and the same refusal of a NUL byte, as :func:`caller_from_auth_context`."""
    if der is None:
        return ANONYMOUS
    caller = _certificate_caller(der)
    if caller is None:
        raise Unauthenticated(NUL_IN_NAME)
    return caller


class Callers:
    """The binding of caller identities to institutions; ``grants=None`` lets anyone submit for any."""

    def __init__(self, grants: Mapping[str, Grant] | None) -> None:
        self._grants = None if grants is None else {_identity(k): v for k, v in grants.items()}

    @property
    def identifies(self) -> bool:
        """False when callers are not checked (no callers file)."""
        return self._grants is not None

    @property
    def identities(self) -> frozenset[str]:
        """The identities the file names."""
        return frozenset(self._grants or ())

    def may_submit(self, caller: Caller, institution: str) -> bool:
        """True when ``caller`` may submit claims (or ask questions) for ``institution``."""
        if self._grants is None:
            return True
        for identity in caller.identities:
            grant = self._grants.get(identity)
            if grant is not None and grant.covers(institution):
                return True
        return False

    def authorize(self, caller: Caller, institution: str, field: str = "fixmedins_code") -> None:
        """PermissionDenied naming the institution unless ``caller`` may submit for it."""
        if not self.may_submit(caller, institution):
            raise PermissionDenied(str(caller), institution, field)


ANYONE = Callers(None)


def _grant(identity: str, table: object) -> Grant:
    where = f"callers.{identity!r}"
    if not (identity.startswith(COMMON_NAME) or identity.startswith(DNS_NAME)) or identity in (COMMON_NAME, DNS_NAME):
        raise CallersError(f"{where}: an identity is CN=<common name> or DNS:<subjectAltName DNS name>")
    if not isinstance(table, dict):
        raise CallersError(f"{where}: expected a table with 'institutions'")
    unknown = set(table) - {"institutions"}
    if unknown:
        raise CallersError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    institutions = table.get("institutions")
    if not isinstance(institutions, list) or not all(isinstance(i, str) for i in institutions):
        raise CallersError(f"{where}.institutions: expected a list of institution codes")
    codes: set[str] = set()
    prefixes: list[str] = []
    for entry in institutions:
        if is_institution_code(entry):
            codes.add(entry)
        elif _PREFIX_PATTERN.fullmatch(entry):
            prefixes.append(entry.removesuffix("*"))
        else:
            raise CallersError(
                f"{where}.institutions: {entry!r} is neither an institution code (H or P + 11 digits) "
                "nor a prefix ending in '*' (\"H4101*\")"
            )
    return Grant(frozenset(codes), tuple(prefixes))


def parse_callers(document: Mapping[str, Any]) -> Callers:
    """The callers of a parsed TOML document, or CallersError naming the bad entry."""
    unknown = set(document) - {"callers"}
    if unknown:
        raise CallersError(f"unknown table(s) {', '.join(sorted(unknown))}")
    table = document.get("callers", {})
    if not isinstance(table, dict):
        raise CallersError("callers: expected a table of caller identities")
    grants = {identity: _grant(identity, entry) for identity, entry in table.items()}
    if len({_identity(i) for i in grants}) != len(grants):
        raise CallersError("callers: the same DNS name is listed twice (DNS names ignore case)")
    return Callers(grants)


def load_callers(path: Path | None) -> Callers:
    """The callers file at ``path``; without one, anyone may submit for any institution."""
    if path is None:
        return ANYONE
    try:
        return parse_callers(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, CallersError) as error:
        raise CallersError(f"{path}: {error}") from error
