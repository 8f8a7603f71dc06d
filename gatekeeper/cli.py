"""The ``gatekeeper`` command: serve, check claims, look up practitioners, ask for health, read the audit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import psycopg
from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from gatekeeper import __version__, console, defaults
from gatekeeper.api.callers import CallersError, load_callers
from gatekeeper.audit.database import SchemaError, check_schema, migrate, prune, schema_version
from gatekeeper.audit.export import (
    WRITERS,
    Period,
    count_by_institution_and_reason,
    format_counts,
    records_in,
    records_of_claim,
)
from gatekeeper.cache.client import command_client
from gatekeeper.console import CommandFailed
from gatekeeper.core.cst import CST, TIME_FORMAT, parse_cst
from gatekeeper.core.policy import Policy, PolicyError, load_policy
from gatekeeper.core.tables import format_table
from gatekeeper.defaults import LOG_FORMATS
from gatekeeper.ops.logs import setup_logging
from gatekeeper.settings import (
    Settings,
    SettingsError,
    database_url_from,
    listen_from,
    redis_url_from,
    retention_days_from,
    split_host_port,
)
from gatekeeper.v1 import gatekeeper_pb2 as pb

if TYPE_CHECKING:
    # The client commands import grpc only once main() has set GRPC_VERBOSITY, which gRPC's C
    # core reads when it loads (see main()).
    import grpc

log = logging.getLogger("gatekeeper")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# Flags of ``serve`` whose values go into Settings under the same name (None: not given).
_SERVE_FIELDS = (
    "redis_url",
    "database_url",
    "listen",
    "policy_path",
    "workers",
    "max_items",
    "max_request_bytes",
    "max_batch_bytes",
    "max_concurrent_rpcs",
    "max_streams_per_connection",
    "request_read_seconds",
    "max_connection_age_seconds",
    "max_connection_age_grace_seconds",
    "shutdown_grace_seconds",
    "near_cache_entries",
    "near_cache_max_age_seconds",
    "redis_timeout_seconds",
    "redis_replica_reads",
    "degraded_max_age_seconds",
    "audit_spool_dir",
    "max_registry_age_seconds",
    "tls_cert_path",
    "tls_key_path",
    "tls_client_ca_path",
    "callers_path",
    "metrics_listen",
    "http_listen",
    "log_format",
)


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.server import serve

    try:
        settings = Settings.from_env(environ, **{name: getattr(args, name) for name in _SERVE_FIELDS})
        setup_logging(settings.log_format)
        # Read every file now, so that a mistake is one line here rather than a traceback per worker.
        load_policy(settings.policy_path)
        load_callers(settings.callers_path)
        for path in (settings.tls_cert_path, settings.tls_key_path, settings.tls_client_ca_path):
            if path is not None:
                path.read_bytes()
        _check_record_schema(settings.database_url)
    except (SettingsError, PolicyError, CallersError, OSError, SchemaError) as error:
        print(f"gatekeeper serve: {error}", file=sys.stderr)
        return 2
    return serve(settings)


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def _read_pem(path: Path | None, flag: str, what: str, pattern: re.Pattern[bytes]) -> bytes | None:
    """The PEM file given as ``flag``, read and checked here: gRPC's C library aborts the process
    on some bad files and reports others only as a failed connection."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CommandFailed(f"{flag} {path}: {error.strerror}", exit_code=2) from None
    if not pattern.search(data):
        raise CommandFailed(f"{flag} {path}: not a PEM {what}", exit_code=2)
    if b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise CommandFailed(f"{flag} {path}: the key is encrypted; gRPC needs it unencrypted", exit_code=2)
    return data


def _tls_files(args: argparse.Namespace) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The CA, client certificate and key a TLS channel needs, each checked, or CommandFailed."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandFailed("--tls-cert and --tls-key go together", exit_code=2)
    ca = _read_pem(args.tls_ca, "--tls-ca", "certificate", _PEM_CERTIFICATE)
    cert = _read_pem(args.tls_cert, "--tls-cert", "certificate", _PEM_CERTIFICATE)
    key = _read_pem(args.tls_key, "--tls-key", "private key", _PEM_PRIVATE_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
        except ssl.SSLError:
            raise CommandFailed(f"--tls-ca {args.tls_ca}: not a PEM certificate", exit_code=2) from None
    if cert is not None:
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key, password="")  # never a password prompt
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                message = f"--tls-key {args.tls_key} is not the key of --tls-cert {args.tls_cert}"
            else:
                message = f"--tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {error.reason or error}"
            raise CommandFailed(message, exit_code=2) from None
    return ca, cert, key


def _channel(args: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel to ``--target``: plain text, or TLS when a CA or a client certificate is given."""
    import grpc

    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return grpc.insecure_channel(target)
    ca, cert, key = _tls_files(args)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(target, credentials, options)


def _speaks_tls(target: str, timeout: float) -> bool:
    """Whether the server at ``target`` answers a TLS handshake (a diagnosis after a failed call)."""
    try:
        host, port = split_host_port(target)
    except SettingsError:  # a gRPC target form such as dns:///name:port: no diagnosis
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only whether it speaks TLS, not whom
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout) as raw, context.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLError as error:  # a TLS alert (e.g. "certificate required") is TLS too
        return "ALERT" in (error.reason or "")
    except OSError:
        return False


# Details of an UNAVAILABLE that gRPC gives when it could not connect (not an answer of the server).
_NOT_CONNECTED = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")


def _unreachable(args: argparse.Namespace, target: str, details: str) -> str | None:
    """Why the gatekeeper at ``target`` could not be reached, from gRPC's ``details``; None if it was."""
    if not any(marker in details for marker in _NOT_CONNECTED):
        return None
    tls = args.tls_ca is not None or args.tls_cert is not None
    if "Connection refused" in details:
        why = "Connection refused; is it running there (--target, env GATEKEEPER_LISTEN)?"
    elif "WRONG_VERSION_NUMBER" in details:
        why = "the server speaks plain text, not TLS (leave out --tls-ca, --tls-cert and --tls-key)"
    elif "CERTIFICATE_VERIFY_FAILED" in details:
        why = "its certificate is not signed by --tls-ca"
    elif "Hostname Verification" in details:
        why = "its certificate does not name the host of --target (--tls-server-name sets the name to expect)"
    elif "Failed parsing HTTP/2" in details:
        why = "what answers there is not a gRPC server"
    elif "Socket closed" in details or "Connection reset" in details:
        if tls:
            why = (
                "the server closed the connection in the TLS handshake: it requires a client certificate "
                "(--tls-cert, --tls-key) signed by a CA it trusts"
            )
        elif _speaks_tls(target, args.timeout):
            why = "the server expects TLS (give --tls-ca; --tls-cert and --tls-key if it asks for a client certificate)"
        else:
            why = "the server closed the connection"
    elif "errors resolving" in details or "DNS resolution failed" in details:
        why = f"the host name cannot be resolved ({details})"
    else:
        why = details
    return f"cannot reach the gatekeeper at {target}: {why}"


def _cst_milliseconds(text: str) -> int:
    try:
        return parse_cst(text) * 1000
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {TIME_FORMAT} (China Standard Time), got {text!r}") from None


def _check_record_schema(url: str) -> None:
    """SchemaError when the decision record's database is on a schema this version does not
    write. An unreachable database is no reason not to serve: decisions wait in the spool."""
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            check_schema(connection)
    except psycopg.Error as error:
        log.warning(
            "the decision record at %s is unreachable (%s); decisions are spooled until it answers",
            console.url_shown(url),
            console.first_line(error),
        )


def _audit_period(args: argparse.Namespace) -> Period:
    if args.until <= args.since:
        raise CommandFailed("--until must be after --since", exit_code=2)
    return Period(args.since, args.until)


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> psycopg.Connection:
    """A connection to the decision record (--database-url, env DATABASE_URL)."""
    url = args.database_url or database_url_from(environ)
    try:
        return psycopg.connect(url, connect_timeout=10, autocommit=True)
    except psycopg.Error as error:
        raise CommandFailed(
            f"cannot reach the decision record at {console.url_shown(url)}: {console.first_line(error)}"
        ) from None


def _audit_export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    period = _audit_period(args)
    with _database(args, environ) as connection:
        records = records_in(connection, period, args.institution or ())
        count = WRITERS[args.format](records, sys.stdout)
    print(f"gatekeeper audit export: {count} decision(s)", file=sys.stderr)
    return 0


def _audit_claim(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if (args.since is None) != (args.until is None):
        raise CommandFailed("give both --since and --until, or neither", exit_code=2)
    period = None if args.since is None else _audit_period(args)
    with _database(args, environ) as connection:
        count = WRITERS[args.format](records_of_claim(connection, args.claim_id, period), sys.stdout)
    if count == 0:
        print(f"gatekeeper audit claim: no decision on claim {args.claim_id!r} in the record", file=sys.stderr)
        return 1
    return 0


def _audit_counts(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    period = _audit_period(args)
    with _database(args, environ) as connection:
        counts = count_by_institution_and_reason(connection, period, args.institution or ())
    if args.json:
        print(json.dumps([c.as_row() for c in counts], ensure_ascii=False, indent=2))
    else:
        print(format_counts(counts))
    return 0


def _audit_migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with _database(args, environ) as connection:
        try:
            applied = migrate(connection)
        except SchemaError as error:
            raise CommandFailed(str(error)) from None
        version = schema_version(connection)
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"the decision record is at schema version {version}")
    return 0


def _audit_prune(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    keep = args.retention_days or retention_days_from(environ)
    with _database(args, environ) as connection:
        dropped = prune(connection, keep, datetime.now(CST).date())
    kept = f"keeping the last {keep} day(s)"
    if dropped:
        print(f"dropped {len(dropped)} day(s) of decisions, {dropped[0]} to {dropped[-1]}; {kept}")
    else:
        print(f"nothing older to drop; {kept}")
    return 0


def _review(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.audit.follow_review import follow_review, review_period

    policy = _load_policy_or_exit(args.policy, "review")
    redis_url = args.redis_url or redis_url_from(environ)
    command_client(redis_url).close()  # a URL that is not a Redis URL is a usage error, before anything runs
    if not args.follow and (args.since is None or args.until is None):
        raise CommandFailed("give --since and --until, or --follow", exit_code=2)
    period = None if args.follow else _audit_period(args)
    with _database(args, environ) as connection:
        if period is None:
            return follow_review(connection, redis_url, policy, once=args.once)
        return review_period(connection, redis_url, policy, period, args.institution or (), args.format)


def _load_policy_or_exit(path: Path | None, command: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as error:
        raise CommandFailed(str(error), exit_code=2) from None


def _enum_name(enum_type: EnumTypeWrapper, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix)


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def format_claim_table(response: pb.CheckClaimResponse) -> str:
    """A claim decision as a plain-text table for people."""
    header = ("feedetl_sn", "verdict", "reason", "practitioner", "window", "amount", "chg_rea")
    rows = []
    for item in response.items:
        window = f"{item.begntime} → {item.endtime or 'open'}" if item.begntime else ""
        rows.append(
            (
                item.feedetl_sn,
                _enum_name(pb.Verdict, item.verdict, "VERDICT_"),
                _enum_name(pb.Reason, item.reason, "REASON_"),
                item.prac_psn_code,
                window,
                _yuan(item.amount_fen),
                item.chg_rea,
            )
        )
    lines = format_table(header, rows).split("\n")
    # What the cashier reads, for the items that are not simply approved.
    words = [(item.feedetl_sn, item.message) for item in response.items if item.reason != pb.REASON_OK]
    if words:
        lines += ["", *format_table(("feedetl_sn", "message"), words).split("\n")]
    verdict = _enum_name(pb.ClaimVerdict, response.verdict, "CLAIM_VERDICT_")
    mode = "" if response.enforced else "  (monitor mode: nothing blocked)"
    lines.append("")
    allowed, blocked = _yuan(response.allowed_amount_fen), _yuan(response.blocked_amount_fen)
    lines.append(f"claim {verdict}: allowed {allowed}, blocked {blocked}{mode}")
    lines.append(f"decision {response.decision_id} against registry {response.registry_version}")
    return "\n".join(lines)


Response = TypeVar("Response", bound=Message)


def _call(
    args: argparse.Namespace, environ: Mapping[str, str], command: str, invoke: Callable[[grpc.Channel], Response]
) -> Response | None:
    """Make one call on a channel to ``--target``; None (the error printed) if it fails."""
    import grpc

    target = args.target or listen_from(environ)
    with _channel(args, target) as channel:
        try:
            return invoke(channel)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            unreachable = _unreachable(args, target, details) if code == grpc.StatusCode.UNAVAILABLE else None
            if unreachable is not None:
                print(f"gatekeeper {command}: {unreachable}", file=sys.stderr)
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
                print(f"gatekeeper {command}: no answer from {target} within {args.timeout:g} s", file=sys.stderr)
            else:
                print(f"gatekeeper {command}: {code.name}: {details}", file=sys.stderr)
            return None


def _check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        document = json.loads(Path(args.claim_file).read_text(encoding="utf-8"))
        request = json_format.ParseDict(document, pb.CheckClaimRequest())
    except (OSError, ValueError, json_format.ParseError) as error:
        print(f"gatekeeper check: {args.claim_file}: {error}", file=sys.stderr)
        return 2
    from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

    response = _call(
        args,
        environ,
        "check",
        lambda channel: pb_grpc.GatekeeperStub(channel).CheckClaim(request, timeout=args.timeout),
    )
    if response is None:
        return 1
    if args.json:
        print(json_format.MessageToJson(response, ensure_ascii=False, preserving_proto_field_name=True))
    else:
        print(format_claim_table(response))
    return 0


def _practitioner(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

    request = pb.GetPractitionerRequest(
        prac_psn_code=args.code, at_time=args.at or "", fixmedins_code=args.institution or ""
    )
    response = _call(
        args,
        environ,
        "practitioner",
        lambda channel: pb_grpc.GatekeeperStub(channel).GetPractitioner(request, timeout=args.timeout),
    )
    if response is None:
        return 1
    print(json_format.MessageToJson(response, ensure_ascii=False, preserving_proto_field_name=True))
    return 0


def _health(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from grpc_health.v1 import health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service=args.service)
    response = _call(
        args,
        environ,
        "health",
        lambda channel: health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout),
    )
    if response is None:
        return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _client_options() -> argparse.ArgumentParser:
    """Options of the commands that call a running gatekeeper."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--target", help=f"gatekeeper HOST:PORT (env GATEKEEPER_LISTEN, default {defaults.LISTEN})")
    client.add_argument("--timeout", type=float, default=5.0, help="seconds")
    client.add_argument("--tls-ca", type=Path, help="CA that signed the server's certificate: connect with TLS")
    client.add_argument("--tls-cert", type=Path, help="client certificate, for a server that requires one")
    client.add_argument("--tls-key", type=Path, help="the client certificate's private key")
    client.add_argument("--tls-server-name", help="the name the server's certificate must carry, if not --target's")
    return client


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gatekeeper``."""
    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--redis-url", help=f"eligibility cache (env REDIS_URL, default {defaults.REDIS_URL})")
    serve.add_argument(
        "--database-url", help=f"the decision record, PostgreSQL (env DATABASE_URL, default {defaults.DATABASE_URL})"
    )
    serve.add_argument("--listen", help=f"HOST:PORT (env GATEKEEPER_LISTEN, default {defaults.LISTEN})")
    serve.add_argument(
        "--http-listen",
        help="HOST:PORT for JSON over HTTP (POST /v1/claims:check, …), beside gRPC, with its TLS and callers "
        "(env GATEKEEPER_HTTP_LISTEN; default off)",
    )
    serve.add_argument(
        "--policy", dest="policy_path", type=Path, help="region policy file (TOML); default: DOMAIN.md defaults"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        help="processes sharing the port (env GATEKEEPER_WORKERS, default: the number of cores)",
    )
    serve.add_argument(
        "--near-cache-entries",
        type=int,
        help=f"records kept in each worker (0: read Redis for every claim; default {defaults.NEAR_CACHE_ENTRIES:,})",
    )
    serve.add_argument(
        "--near-cache-max-age",
        dest="near_cache_max_age_seconds",
        type=float,
        help=f"seconds a cached record is trusted (default {defaults.NEAR_CACHE_MAX_AGE_SECONDS:.0f})",
    )
    serve.add_argument(
        "--redis-timeout",
        dest="redis_timeout_seconds",
        type=float,
        help="seconds a claim may wait for Redis (connecting included) before degraded mode answers "
        f"(default {defaults.REDIS_TIMEOUT_SECONDS})",
    )
    serve.add_argument(
        "--redis-replica-reads",
        action="store_true",
        default=None,
        help="with a Redis Cluster: lookups read the replicas, one replication lag behind the masters "
        "(GATEKEEPER_REDIS_REPLICA_READS=yes)",
    )
    serve.add_argument(
        "--degraded-max-age",
        dest="degraded_max_age_seconds",
        type=float,
        help="seconds a held record is used while Redis is unreadable (0: no degraded mode, UNAVAILABLE; "
        f"default {defaults.DEGRADED_MAX_AGE_SECONDS:.0f})",
    )
    serve.add_argument(
        "--audit-spool-dir",
        type=Path,
        help="where decisions wait on disk while the database is away "
        f"(env GATEKEEPER_AUDIT_SPOOL_DIR, default ./{defaults.AUDIT_SPOOL_DIR})",
    )
    serve.add_argument("--max-items", type=_positive, help=f"line items per claim (default {defaults.MAX_ITEMS:,})")
    serve.add_argument(
        "--max-request-bytes", type=_positive, help=f"bytes per claim (default {defaults.MAX_REQUEST_BYTES:,})"
    )
    serve.add_argument(
        "--max-batch-bytes",
        type=_positive,
        help="bytes of a whole CheckClaims request (each claim is also held to --max-request-bytes; "
        f"default {defaults.MAX_BATCH_BYTES:,})",
    )
    serve.add_argument(
        "--max-concurrent-rpcs",
        type=_positive,
        help="RPCs each worker works on at once; more are refused with RESOURCE_EXHAUSTED "
        f"(default {defaults.MAX_CONCURRENT_RPCS})",
    )
    serve.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_seconds",
        type=float,
        help=f"seconds to drain on SIGTERM (default {defaults.SHUTDOWN_GRACE_SECONDS:.0f})",
    )
    serve.add_argument(
        "--max-streams-per-connection",
        type=_positive,
        help="RPCs one connection may carry at once; more streams are refused by HTTP/2 (REFUSED_STREAM) "
        f"(default {defaults.MAX_STREAMS_PER_CONNECTION})",
    )
    serve.add_argument(
        "--request-read-timeout",
        dest="request_read_seconds",
        type=float,
        help="seconds a caller has to send its whole request after its headers; then DEADLINE_EXCEEDED "
        f"(default {defaults.REQUEST_READ_SECONDS:.0f})",
    )
    serve.add_argument(
        "--max-connection-age",
        dest="max_connection_age_seconds",
        type=float,
        help="seconds after which a connection is closed (GOAWAY); clients reconnect "
        f"(default {defaults.MAX_CONNECTION_AGE_SECONDS:.0f})",
    )
    serve.add_argument(
        "--max-connection-age-grace",
        dest="max_connection_age_grace_seconds",
        type=float,
        help="seconds RPCs in flight get to finish on a connection past its age before it is cut "
        f"(default {defaults.MAX_CONNECTION_AGE_GRACE_SECONDS:.0f})",
    )
    serve.add_argument(
        "--max-registry-age",
        dest="max_registry_age_seconds",
        type=float,
        help="seconds since the registry data was last updated before health turns NOT_SERVING; 0: no bound "
        "(env GATEKEEPER_MAX_REGISTRY_AGE, default 2 days)",
    )
    tls = serve.add_argument_group("TLS (without --tls-cert: plain text, for local development only)")
    tls.add_argument("--tls-cert", dest="tls_cert_path", type=Path, help="PEM certificate (env GATEKEEPER_TLS_CERT)")
    tls.add_argument("--tls-key", dest="tls_key_path", type=Path, help="its private key (env GATEKEEPER_TLS_KEY)")
    tls.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca_path",
        type=Path,
        help="mutual TLS: callers must present a certificate this CA signed (env GATEKEEPER_TLS_CLIENT_CA)",
    )
    tls.add_argument(
        "--callers",
        dest="callers_path",
        type=Path,
        help="TOML binding caller identities to the institutions they may submit for (with --tls-client-ca; "
        "env GATEKEEPER_CALLERS)",
    )
    observe = serve.add_argument_group("observability")
    observe.add_argument(
        "--metrics-listen",
        help="HOST:PORT for Prometheus metrics, worker i on PORT + i (env GATEKEEPER_METRICS_LISTEN; default off)",
    )
    observe.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="json: one object per line (default; env GATEKEEPER_LOG_FORMAT); text: for people",
    )
    serve.set_defaults(run=_serve)

    client = _client_options()
    check = commands.add_parser("check", parents=[client], help="send a claim from a JSON file and print the decisions")
    check.add_argument("claim_file", help="JSON with the fields of CheckClaimRequest")
    check.add_argument("--json", action="store_true", help="print the response as JSON")
    check.set_defaults(run=_check)

    practitioner = commands.add_parser(
        "practitioner", parents=[client], help="a practitioner's status (GetPractitioner)"
    )
    practitioner.add_argument("code")
    practitioner.add_argument("--at", help="yyyy-MM-dd HH:mm:ss CST; default now")
    practitioner.add_argument("--institution", help="fixmedins_code, for the region's policy")
    practitioner.set_defaults(run=_practitioner)

    health = commands.add_parser(
        "health", parents=[client], help="exit 0 when the gatekeeper reports SERVING (for container health checks)"
    )
    health.add_argument("--service", default="", help="service name; default: the whole server")
    health.set_defaults(run=_health, timeout=3.0)
    audit = commands.add_parser("audit", help="the decision record in PostgreSQL: read it, migrate it, prune it")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    when = {"type": _cst_milliseconds, "metavar": '"yyyy-MM-dd HH:mm:ss"'}
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url", help=f"the decision record (env DATABASE_URL, default {defaults.DATABASE_URL})"
    )

    export = audit_commands.add_parser("export", parents=[database], help="decisions made in a period, for reviewers")
    export.add_argument("--since", required=True, help="decided at or after (CST)", **when)  # type: ignore[arg-type]
    export.add_argument("--until", required=True, help="decided before (CST)", **when)  # type: ignore[arg-type]
    export.add_argument("--institution", action="append", help="fixmedins_code; repeat for several")
    export.add_argument(
        "--format", choices=sorted(WRITERS), default="jsonl", help="jsonl: one decision a line; csv: one item a row"
    )
    export.set_defaults(run=_audit_export)

    claim = audit_commands.add_parser("claim", parents=[database], help="every decision on one claim")
    claim.add_argument("claim_id")
    claim.add_argument("--since", help="only decisions at or after (CST); default: the whole record", **when)  # type: ignore[arg-type]
    claim.add_argument("--until", help="only decisions before (CST)", **when)  # type: ignore[arg-type]
    claim.add_argument("--format", choices=sorted(WRITERS), default="jsonl")
    claim.set_defaults(run=_audit_claim)

    counts = audit_commands.add_parser(
        "counts", parents=[database], help="line items per institution and reason over a period (one query)"
    )
    counts.add_argument("--since", required=True, help="decided at or after (CST)", **when)  # type: ignore[arg-type]
    counts.add_argument("--until", required=True, help="decided before (CST)", **when)  # type: ignore[arg-type]
    counts.add_argument("--institution", action="append", help="fixmedins_code; repeat for several")
    counts.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    counts.set_defaults(run=_audit_counts)

    migrate_command = audit_commands.add_parser(
        "migrate", parents=[database], help="apply the schema migrations the database lacks (serve needs the latest)"
    )
    migrate_command.set_defaults(run=_audit_migrate)

    prune_command = audit_commands.add_parser(
        "prune", parents=[database], help="drop the daily partitions older than the retention"
    )
    prune_command.add_argument(
        "--retention-days",
        type=_positive,
        help=f"days of decisions to keep, today included (env GATEKEEPER_AUDIT_RETENTION_DAYS, "
        f"default {defaults.AUDIT_RETENTION_DAYS})",
    )
    prune_command.set_defaults(run=_audit_prune)

    review = commands.add_parser(
        "review",
        parents=[database],
        help="decide recorded items again against the registry now: what to recover, what to pay after all",
    )
    review.add_argument("--since", help="decisions made at or after (CST)", **when)  # type: ignore[arg-type]
    review.add_argument("--until", help="decisions made before (CST)", **when)  # type: ignore[arg-type]
    review.add_argument("--institution", action="append", help="fixmedins_code; repeat for several")
    review.add_argument("--policy", type=Path, help="region policy file (TOML); default: DOMAIN.md defaults")
    review.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    review.add_argument("--redis-url", help=f"the eligibility cache (env REDIS_URL, default {defaults.REDIS_URL})")
    review.add_argument(
        "--follow",
        action="store_true",
        help="keep reviewing: every change whose window reaches into the past, into review_findings",
    )
    review.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # --follow: stop when caught up
    review.set_defaults(run=_review)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``gatekeeper``: the one place that reads the environment."""
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve sets up logging from its settings
        setup_logging("text")
        # gRPC's C core logs a failed TLS handshake at INFO on stderr, beside our one line; it
        # reads this when grpc is first imported, which is why the client commands import it late.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(_run(args, os.environ))


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the command; an expected failure is one line ``gatekeeper COMMAND: what``, never a traceback."""
    command = " ".join(["gatekeeper", args.command] + ([args.audit_command] if args.command == "audit" else []))

    def described(error: Exception) -> str | None:
        if isinstance(error, psycopg.OperationalError):  # the database went away mid-command
            return f"lost the decision record: {console.first_line(error)}"
        return None

    return console.run_command(
        command,
        lambda: int(args.run(args, environ)),
        lambda: getattr(args, "redis_url", None) or redis_url_from(environ),
        described,
    )
