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
from gatekeeper.console import CommandFailed, HelpFormatter, global_option
from gatekeeper.core.cst import CST, TIME_FORMAT, parse_cst
from gatekeeper.core.policy import Policy, PolicyError, load_policy
from gatekeeper.core.tables import format_table
from gatekeeper.defaults import LOG_FORMATS
from gatekeeper.ops.logs import setup_logging
from gatekeeper.settings import (
    Address,
    Settings,
    SettingsError,
    database_address,
    redis_address,
    retention_days_from,
    split_host_port,
    target_address,
)
from gatekeeper.urls import url_shown
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
    "near_cache_warm",
    "c_path",
    "redis_timeout_seconds",
    "redis_replica_reads",
    "degraded_max_age_seconds",
    "audit_spool_dir",
    "max_registry_age_seconds",
    "tls_client_ca_path",
    "callers_path",
    "metrics_listen",
    "http_listen",
    "log_format",
)


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.server import serve

    try:
        flags = {name: getattr(args, name) for name in _SERVE_FIELDS}
        flags.update(tls_cert_path=args.tls_cert, tls_key_path=args.tls_key)  # the global --tls-cert, --tls-key
        settings = Settings.from_env(environ, **flags)
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


def _unreachable(args: argparse.Namespace, target: Address, details: str) -> str | None:
    """Why the gatekeeper at ``target`` could not be reached, from gRPC's ``details``; None if it was."""
    if not any(marker in details for marker in _NOT_CONNECTED):
        return None
    tls = args.tls_ca is not None or args.tls_cert is not None
    if "Connection refused" in details:
        why = "Connection refused; is the gatekeeper running there?"
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
        elif _speaks_tls(target.value, args.timeout):
            why = "the server expects TLS (give --tls-ca; --tls-cert and --tls-key if it asks for a client certificate)"
        else:
            why = "the server closed the connection"
    elif "errors resolving" in details or "DNS resolution failed" in details:
        why = f"the host name cannot be resolved ({details})"
    else:
        why = details
    return f"cannot reach the gatekeeper at {target.shown}: {why}"


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
            url_shown(url),
            console.first_line(error),
        )


def _audit_period(args: argparse.Namespace) -> Period:
    if args.until <= args.since:
        raise CommandFailed("--until must be after --since", exit_code=2)
    return Period(args.since, args.until)


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> psycopg.Connection:
    """A connection to the decision record (--database-url, env DATABASE_URL, the demo's)."""
    where = database_address(args.database_url, environ)
    try:
        return psycopg.connect(where.value, connect_timeout=10, autocommit=True)
    except psycopg.Error as error:
        raise CommandFailed(f"cannot reach the decision record at {where.shown}: {console.first_line(error)}") from None


def _record_shown(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    return f"the decision record at {database_address(args.database_url, environ).shown}"


def _tell(args: argparse.Namespace, line: str) -> None:
    """A line for people beside the result: on stdout after a table, on stderr beside JSON."""
    if args.json:
        print(f"{_command_name(args)}: {line}", file=sys.stderr)
    else:
        print(line)


def _record_format(args: argparse.Namespace) -> str:
    """--format, with --json meaning jsonl (JSON Lines)."""
    if args.json and args.format not in (None, "jsonl"):
        raise CommandFailed(f"--json and --format {args.format} disagree; give one", exit_code=2)
    return "jsonl" if args.json else str(args.format or args.default_format)


def _audit_export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    period = _audit_period(args)
    with _database(args, environ) as connection:
        records = records_in(connection, period, args.institution or ())
        try:
            count = WRITERS[_record_format(args)](records, sys.stdout)
        finally:  # its transaction ends before the connection does, a closed pipe included
            records.close()
    print(f"gatekeeper audit export: {count} decision(s) from {_record_shown(args, environ)}", file=sys.stderr)
    return 0


def _audit_claim(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if (args.since is None) != (args.until is None):
        raise CommandFailed("give both --since and --until, or neither", exit_code=2)
    period = None if args.since is None else _audit_period(args)
    with _database(args, environ) as connection:
        count = WRITERS[_record_format(args)](records_of_claim(connection, args.claim_id, period), sys.stdout)
    if count == 0:
        print(
            f"gatekeeper audit claim: no decision on claim {args.claim_id!r} in {_record_shown(args, environ)}",
            file=sys.stderr,
        )
        return 1
    print(f"gatekeeper audit claim: {count} decision(s) from {_record_shown(args, environ)}", file=sys.stderr)
    return 0


def _audit_counts(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    period = _audit_period(args)
    with _database(args, environ) as connection:
        counts = count_by_institution_and_reason(connection, period, args.institution or ())
    if args.json:
        print(json.dumps([c.as_row() for c in counts], ensure_ascii=False, indent=2))
    else:
        print(format_counts(counts))
    _tell(args, f"from {_record_shown(args, environ)}")
    return 0


def _audit_migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with _database(args, environ) as connection:
        try:
            applied = migrate(connection)
        except SchemaError as error:
            raise CommandFailed(str(error)) from None
        version = schema_version(connection)
    names = [f"{migration.version:04d}_{migration.name}" for migration in applied]
    if args.json:
        print(json.dumps({"applied": names, "schema_version": version}))
    for name in names if not args.json else ():
        print(f"applied {name}")
    _tell(args, f"{_record_shown(args, environ)} is at schema version {version}")
    return 0


def _audit_prune(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    keep = args.retention_days or retention_days_from(environ)
    with _database(args, environ) as connection:
        dropped = prune(connection, keep, datetime.now(CST).date())
    kept = f"keeping the last {keep} day(s)"
    if args.json:
        print(json.dumps({"dropped": [str(day) for day in dropped], "retention_days": keep}))
    elif dropped:
        print(f"dropped {len(dropped)} day(s) of decisions, {dropped[0]} to {dropped[-1]}; {kept}")
    else:
        print(f"nothing older to drop; {kept}")
    _tell(args, f"in {_record_shown(args, environ)}")
    return 0


def _review(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.audit.follow_review import follow_review, review_period

    policy = _load_policy_or_exit(args.policy, "review")
    redis = redis_address(args.redis_url, environ)
    command_client(redis.value).close()  # a URL that is not a Redis URL is a usage error, before anything runs
    if not args.follow and (args.since is None or args.until is None):
        raise CommandFailed("give --since and --until, or --follow", exit_code=2)
    period = None if args.follow else _audit_period(args)
    output = "table" if args.format is None and not args.json else _record_format(args)
    read = f"gatekeeper review: read Redis at {redis.shown} and {_record_shown(args, environ)}"
    with _database(args, environ) as connection:
        if period is None:
            print(read, file=sys.stderr)
            return follow_review(connection, redis.value, policy, once=args.once)
        code = review_period(connection, redis.value, policy, period, args.institution or (), output)
    if code == 0:
        print(read, file=sys.stderr)
    return code


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
    unverified = [item for item in response.items if item.reason == pb.REASON_UNVERIFIED]
    if unverified:
        settled = sum(1 for item in unverified if item.verdict != pb.VERDICT_BLOCK)
        lines.append(
            f"DEGRADED MODE: {len(unverified)} item(s) not checked, the eligibility cache could not be read "
            f"({settled} settled unverified and recorded for review, {len(unverified) - settled} blocked)"
        )
    lines.append(f"decision {response.decision_id} against registry {response.registry_version}")
    return "\n".join(lines)


Response = TypeVar("Response", bound=Message)


def _call(args: argparse.Namespace, environ: Mapping[str, str], invoke: Callable[[grpc.Channel], Response]) -> Response:
    """Make one call on a channel to the gatekeeper (``--target``, env, the demo's); CommandFailed if it fails."""
    import grpc

    target = target_address(args.target, environ)
    with _channel(args, target.value) as channel:
        try:
            return invoke(channel)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            unreachable = _unreachable(args, target, details) if code == grpc.StatusCode.UNAVAILABLE else None
            if unreachable is not None:
                raise CommandFailed(unreachable) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
                raise CommandFailed(f"no answer from {target.shown} within {args.timeout:g} s") from None
            raise CommandFailed(f"{code.name}: {details}") from None


def _asked(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    return f"the gatekeeper at {target_address(args.target, environ).shown}"


def _read_json_input(path: str) -> str:
    """The text of ``path``, or of stdin for ``-``; CommandFailed (usage) if it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CommandFailed(f"{path}: {error.strerror}", exit_code=2) from None
    except UnicodeDecodeError as error:
        raise CommandFailed(f"{path}: not UTF-8 ({error.reason} at byte {error.start})", exit_code=2) from None


_UNKNOWN_FIELD = re.compile(r'Message type "gatekeeper\.v1\.(\w+)" has no field named "([^"]*)" at "([^"]*)"')


def _parse_error(error: json_format.ParseError) -> str:
    """The message protobuf gives for a claim that does not parse, in one line and with the proto's
    field names: it lists the fields a message has in their camelCase JSON names."""
    text = str(error)
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown is None:
        return " ".join(text.split())
    message, field, path = unknown.groups()
    names = ", ".join(f.name for f in pb.DESCRIPTOR.message_types_by_name[message].fields)
    return f'{path}: no field named "{field}"; {message} has {names}'


def _parse_claim(text: str, where: str) -> pb.CheckClaimRequest:
    """A CheckClaimRequest from JSON with the proto's field names; errors name the field (snake_case)."""
    try:
        return json_format.Parse(text, pb.CheckClaimRequest())
    except json_format.ParseError as error:
        raise CommandFailed(f"{where}: {_parse_error(error)}", exit_code=2) from None


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, ensure_ascii=False, preserving_proto_field_name=True)


def _check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

    where = "stdin" if args.claim_file == "-" else args.claim_file
    request = _parse_claim(_read_json_input(args.claim_file), where)
    response = _call(
        args, environ, lambda channel: pb_grpc.GatekeeperStub(channel).CheckClaim(request, timeout=args.timeout)
    )
    if args.json:
        print(_json(response))
    else:
        print(format_claim_table(response))
    _tell(args, f"asked {_asked(args, environ)}")
    return 0


def _claims_in(text: str, where: str) -> list[pb.CheckClaimRequest]:
    """Claims from a JSON array of claims, or JSON Lines (one claim a line)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            documents = json.loads(text)
        except ValueError as error:
            raise CommandFailed(f"{where}: not JSON: {error}", exit_code=2) from None
        claims = []
        for index, document in enumerate(documents):
            if not isinstance(document, dict):
                raise CommandFailed(f"{where}: claims[{index}]: not a JSON object (a claim)", exit_code=2)
            claims.append(_parse_claim(json.dumps(document, ensure_ascii=False), f"{where}: claims[{index}]"))
        return claims
    return [
        _parse_claim(line, f"{where}: line {number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def format_batch_table(response: pb.CheckClaimsResponse) -> str:
    """A CheckClaims answer as a table: one row per claim, its verdict or its error."""
    header = ("claim_id", "verdict", "items", "blocked items", "allowed", "blocked", "error")
    rows = []
    for result in response.results:
        if result.HasField("error"):
            code = _status_name(result.error.code)
            rows.append((result.claim_id, "ERROR", "", "", "", "", f"{code}: {result.error.message}"))
            continue
        claim = result.response
        blocked = sum(1 for item in claim.items if item.verdict == pb.VERDICT_BLOCK)
        rows.append(
            (
                result.claim_id,
                _enum_name(pb.ClaimVerdict, claim.verdict, "CLAIM_VERDICT_"),
                str(len(claim.items)),
                str(blocked),
                _yuan(claim.allowed_amount_fen),
                _yuan(claim.blocked_amount_fen),
                "",
            )
        )
    return format_table(header, rows)


def _status_name(code: int) -> str:
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


def _check_batch(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

    where = "stdin" if args.claims_file == "-" else args.claims_file
    claims = _claims_in(_read_json_input(args.claims_file), where)
    if not claims:
        raise CommandFailed(f"{where}: no claims", exit_code=2)
    request = pb.CheckClaimsRequest(claims=claims)
    response = _call(
        args, environ, lambda channel: pb_grpc.GatekeeperStub(channel).CheckClaims(request, timeout=args.timeout)
    )
    errors = sum(1 for result in response.results if result.HasField("error"))
    if args.json:
        for result in response.results:
            print(json_format.MessageToJson(result, ensure_ascii=False, preserving_proto_field_name=True, indent=None))
    else:
        print(format_batch_table(response))
        print()
    _tell(args, f"{len(claims)} claim(s), {errors} refused, asked {_asked(args, environ)}")
    return 1 if errors else 0


def _window(window: pb.StatusWindow) -> tuple[str, ...]:
    return (
        _enum_name(pb.PractitionerStatus, window.status, "PRACTITIONER_STATUS_"),
        window.begntime,
        window.endtime or "open",
        window.ban_endtime,
        window.chg_rea,
    )


_PRACTITIONER_TYPES = {"1": "doctor", "2": "nurse", "3": "pharmacist", "4": "technician"}


def format_practitioner(response: pb.GetPractitionerResponse) -> str:
    """A practitioner's status at a time, and the windows that decide it, for people."""
    kind = _PRACTITIONER_TYPES.get(response.prac_psn_type, response.prac_psn_type)
    facts = [
        ("prac_psn_code", f"{response.prac_psn_code} ({kind})" if kind else response.prac_psn_code),
        ("at_time", response.at_time),
        ("status", _enum_name(pb.PractitionerStatus, response.status, "PRACTITIONER_STATUS_")),
        ("may_bill", "yes" if response.may_bill else "no"),
        ("may_bill_emergency", "yes" if response.may_bill_emergency else "no"),
    ]
    width = max(len(name) for name, _ in facts)
    lines = [f"{name.ljust(width)}  {value}" for name, value in facts]
    windows = [("current", *_window(response.current))] if response.HasField("current") else []
    windows += [("upcoming", *_window(window)) for window in response.upcoming]
    lines.append("")
    if windows:
        header = ("window", "status", "begntime", "endtime", "ban_endtime", "chg_rea")
        lines.append(format_table(header, windows))
    else:
        lines.append("no status window: the registry does not know this code at that time")
    lines.append("")
    lines.append(f"registry {response.registry_version}")
    return "\n".join(lines)


def _practitioner(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gatekeeper.v1 import gatekeeper_pb2_grpc as pb_grpc

    request = pb.GetPractitionerRequest(
        prac_psn_code=args.code, at_time=args.at or "", fixmedins_code=args.institution or ""
    )
    response = _call(
        args, environ, lambda channel: pb_grpc.GatekeeperStub(channel).GetPractitioner(request, timeout=args.timeout)
    )
    if args.json:
        # Every field, a false may_bill included: absent would read as unknown.
        print(
            json_format.MessageToJson(
                response,
                ensure_ascii=False,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        )
    else:
        print(format_practitioner(response))
    _tell(args, f"asked {_asked(args, environ)}")
    return 0


def _health(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from grpc_health.v1 import health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service=args.service)
    response = _call(
        args, environ, lambda channel: health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
    )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    target = target_address(args.target, environ)
    if args.json:
        print(json.dumps({"status": status, "target": target.value, "target_from": target.source}))
    else:
        print(f"{status}: {_asked(args, environ)}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


# The global options: every subcommand takes them, before or after its name. Each command
# says which it uses; one it does not use is refused rather than silently ignored.
_GLOBAL_FLAGS = {
    "redis_url": "--redis-url",
    "database_url": "--database-url",
    "target": "--target",
    "tls_ca": "--tls-ca",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_server_name": "--tls-server-name",
    "json": "--json",
}
_CLIENT = {"target", "tls_ca", "tls_cert", "tls_key", "tls_server_name", "json"}


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options every command takes (``top``: for the main parser, else for a subcommand's)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    demo = "the running scripts/demo's"
    global_option(
        group,
        "--redis-url",
        top=top,
        help=f"the eligibility cache (else env REDIS_URL, else {demo}, else {defaults.REDIS_URL})",
    )
    global_option(
        group,
        "--database-url",
        top=top,
        help=f"the decision record, PostgreSQL (else env DATABASE_URL, else {demo}, else {defaults.DATABASE_URL})",
    )
    global_option(
        group,
        "--target",
        top=top,
        help=f"the gatekeeper to call, HOST:PORT (else env GATEKEEPER_LISTEN, else {demo}, else {defaults.LISTEN})",
    )
    global_option(group, "--tls-ca", type=Path, top=top, help="CA that signed the server's certificate: call with TLS")
    global_option(
        group,
        "--tls-cert",
        type=Path,
        top=top,
        help="this command's certificate (PEM): a client's, for a server that requires one; serve's own",
    )
    global_option(group, "--tls-key", type=Path, top=top, help="the private key of --tls-cert (PEM, unencrypted)")
    global_option(
        group, "--tls-server-name", top=top, help="the name the server's certificate must carry, if not --target's"
    )
    global_option(
        group, "--json", action="store_true", top=top, help="print for machines: JSON (JSON Lines for many records)"
    )
    return options


def _timeout(parser: argparse.ArgumentParser, seconds: float) -> None:
    parser.add_argument("--timeout", type=float, default=seconds, help="seconds to wait for the answer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gatekeeper``."""
    parser = argparse.ArgumentParser(
        prog="gatekeeper", description=__doc__, formatter_class=HelpFormatter, parents=[_global_options(top=True)]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for_subcommand = _global_options(top=False)

    def command(
        name: str,
        help_text: str,
        run: Callable[[argparse.Namespace, Mapping[str, str]], int],
        uses: set[str],
        under: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
    ) -> argparse.ArgumentParser:
        sub = under.add_parser(
            name, help=help_text, description=help_text, parents=[for_subcommand], formatter_class=HelpFormatter
        )
        sub.set_defaults(run=run, uses=uses)
        return sub

    serve = command("serve", "run the gRPC service", _serve, {"redis_url", "database_url", "tls_cert", "tls_key"})
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
        "--near-cache-warm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill the near cache with every practitioner of each snapshot (up to --near-cache-entries), so that the "
        f"first claims and degraded mode find them (GATEKEEPER_NEAR_CACHE_WARM; default {defaults.NEAR_CACHE_WARM})",
    )
    serve.add_argument(
        "--c-path",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="parse, decide and answer plain claims in C where gatekeeper._speedups was built; --no-c-path answers "
        f"every claim in Python, the reference (GATEKEEPER_C_PATH; default {defaults.C_PATH})",
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
    tls = serve.add_argument_group(
        "TLS: --tls-cert and --tls-key (global options, env GATEKEEPER_TLS_CERT, GATEKEEPER_TLS_KEY) are the "
        "server's certificate; without them plain text, for local development only"
    )
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

    check = command("check", "send a claim (JSON, the proto's field names) and print the decisions", _check, _CLIENT)
    check.add_argument("claim_file", metavar="FILE", help="a JSON CheckClaimRequest; - reads stdin")
    _timeout(check, 5.0)

    batch = command(
        "check-batch",
        "send many claims in one CheckClaims call and print one row per claim; exit 1 if any was refused",
        _check_batch,
        _CLIENT,
    )
    batch.add_argument(
        "claims_file",
        metavar="FILE",
        help="a JSON array of CheckClaimRequest, or JSON Lines (one a line); - reads stdin",
    )
    _timeout(batch, 30.0)

    practitioner = command(
        "practitioner",
        "a practitioner's status now (or --at), and its windows (GetPractitioner)",
        _practitioner,
        _CLIENT,
    )
    practitioner.add_argument("code", help="prac_psn_code, e.g. D410102000002")
    practitioner.add_argument("--at", help="yyyy-MM-dd HH:mm:ss CST; default now")
    practitioner.add_argument("--institution", help="fixmedins_code, for the region's policy; default none")
    _timeout(practitioner, 5.0)

    health = command(
        "health", "exit 0 when the gatekeeper reports SERVING (for container health checks)", _health, _CLIENT
    )
    health.add_argument("--service", default="", help="service name; empty: the whole server")
    _timeout(health, 3.0)

    audit = commands.add_parser(
        "audit",
        help="the decision record in PostgreSQL: read it, migrate it, prune it",
        parents=[for_subcommand],
        formatter_class=HelpFormatter,
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    when = {"type": _cst_milliseconds, "metavar": '"yyyy-MM-dd HH:mm:ss"'}
    record = {"database_url", "json"}

    def audit_command(
        name: str, help_text: str, run: Callable[[argparse.Namespace, Mapping[str, str]], int]
    ) -> argparse.ArgumentParser:
        return command(name, help_text, run, record, audit_commands)

    def record_format(sub: argparse.ArgumentParser, default: str, choices: tuple[str, ...]) -> None:
        sub.add_argument(
            "--format",
            choices=choices,
            help=f"default {default}; jsonl: one decision a line (as --json); csv: one line item a row",
        )
        sub.set_defaults(default_format=default)

    export = audit_command("export", "decisions made in a period, for reviewers", _audit_export)
    export.add_argument("--since", required=True, help="decided at or after (CST)", **when)  # type: ignore[arg-type]
    export.add_argument("--until", required=True, help="decided before (CST)", **when)  # type: ignore[arg-type]
    export.add_argument("--institution", action="append", help="fixmedins_code; repeat for several; default all")
    record_format(export, "jsonl", tuple(sorted(WRITERS)))

    claim = audit_command("claim", "every decision on one claim; exit 1 if none", _audit_claim)
    claim.add_argument("claim_id", help="the claim_id the HIS sent")
    claim.add_argument("--since", help="only decisions at or after (CST); default: the whole record", **when)  # type: ignore[arg-type]
    claim.add_argument("--until", help="only decisions before (CST)", **when)  # type: ignore[arg-type]
    record_format(claim, "jsonl", tuple(sorted(WRITERS)))

    counts = audit_command("counts", "line items per institution and reason over a period (one query)", _audit_counts)
    counts.add_argument("--since", required=True, help="decided at or after (CST)", **when)  # type: ignore[arg-type]
    counts.add_argument("--until", required=True, help="decided before (CST)", **when)  # type: ignore[arg-type]
    counts.add_argument("--institution", action="append", help="fixmedins_code; repeat for several; default all")

    audit_command("migrate", "apply the schema migrations the database lacks (serve needs the latest)", _audit_migrate)

    prune_command = audit_command("prune", "drop the daily partitions older than the retention", _audit_prune)
    prune_command.add_argument(
        "--retention-days",
        type=_positive,
        help=f"days of decisions to keep, today included (env GATEKEEPER_AUDIT_RETENTION_DAYS, "
        f"default {defaults.AUDIT_RETENTION_DAYS})",
    )

    review = command(
        "review",
        "decide recorded items again against the registry now: what to recover, what to pay after all",
        _review,
        {"redis_url", "database_url", "json"},
    )
    review.add_argument("--since", help="decisions made at or after (CST)", **when)  # type: ignore[arg-type]
    review.add_argument("--until", help="decisions made before (CST)", **when)  # type: ignore[arg-type]
    review.add_argument("--institution", action="append", help="fixmedins_code; repeat for several; default all")
    review.add_argument("--policy", type=Path, help="region policy file (TOML); default: DOMAIN.md defaults")
    review.add_argument(
        "--format", choices=("table", "jsonl", "csv"), help="default table; jsonl: one finding a line (as --json)"
    )
    review.set_defaults(default_format="table")
    review.add_argument(
        "--follow",
        action="store_true",
        help="keep reviewing: every change whose window reaches into the past, into review_findings",
    )
    review.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # --follow: stop when caught up
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


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(["gatekeeper", args.command] + ([args.audit_command] if args.command == "audit" else []))


def _refuse_unused_options(args: argparse.Namespace) -> None:
    """CommandFailed (usage) for a global option the command has no use for: never silently ignored."""
    for name, flag in _GLOBAL_FLAGS.items():
        if name not in args.uses and getattr(args, name) not in (None, False):
            raise CommandFailed(f"{flag} means nothing to this command", exit_code=2)


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the command; an expected failure is one line ``gatekeeper COMMAND: what``, never a traceback."""

    def described(error: Exception) -> str | None:
        if isinstance(error, psycopg.OperationalError):  # the database went away mid-command
            return f"lost the decision record: {console.first_line(error)}"
        return None

    def run() -> int:
        _refuse_unused_options(args)
        return int(args.run(args, environ))

    return console.run_command(
        _command_name(args), run, lambda: redis_address(args.redis_url, environ).shown, described
    )
