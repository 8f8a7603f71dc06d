"""Settings that do not fit together are refused; each worker gets its own metrics port."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gatekeeper import defaults
from gatekeeper.settings import Settings, SettingsError, redis_address, split_host_port

CERT, KEY, CA, CALLERS = Path("server.crt"), Path("server.key"), Path("clients.crt"), Path("callers.toml")


def test_plain_text_is_the_default_and_says_so() -> None:
    assert Settings().plain_text
    assert not Settings(tls_cert_path=CERT, tls_key_path=KEY).plain_text


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"tls_cert_path": CERT}, "--tls-cert and --tls-key go together"),
        ({"tls_key_path": KEY}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca_path": CA, "callers_path": CALLERS}, "mutual TLS is TLS first"),
        ({"tls_cert_path": CERT, "tls_key_path": KEY, "tls_client_ca_path": CA}, "--callers and --tls-client-ca"),
        ({"tls_cert_path": CERT, "tls_key_path": KEY, "callers_path": CALLERS}, "--callers and --tls-client-ca"),
        ({"metrics_listen": "9464"}, "is not HOST:PORT"),
        ({"metrics_listen": "127.0.0.1:http"}, "is not HOST:PORT"),
        ({"redis_replica_reads": True}, "--redis-replica-reads needs a Redis Cluster"),
    ],
)
def test_settings_that_do_not_fit_are_refused(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        Settings(**options)  # type: ignore[arg-type]


def test_mutual_tls_with_callers_fits() -> None:
    settings = Settings(tls_cert_path=CERT, tls_key_path=KEY, tls_client_ca_path=CA, callers_path=CALLERS)
    assert settings.callers_path == CALLERS


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("127.0.0.1:9464", "127.0.0.1", 9464), ("0.0.0.0:0", "0.0.0.0", 0), ("[::1]:9464", "::1", 9464)],
)
def test_split_host_port(listen: str, host: str, port: int) -> None:
    assert split_host_port(listen) == (host, port)


def test_each_worker_serves_metrics_on_the_next_port() -> None:
    settings = Settings(workers=3, metrics_listen="0.0.0.0:9464")
    assert [settings.for_worker(i).metrics_listen for i in range(3)] == ["0.0.0.0:9464", "0.0.0.0:9465", "0.0.0.0:9466"]
    assert Settings(metrics_listen="[::]:9464").for_worker(1).metrics_listen == "[::]:9465"
    assert Settings().for_worker(2).metrics_listen == ""
    assert settings.for_worker(1).listen == settings.listen


def test_settings_come_from_the_environment_then_the_flags() -> None:
    environ = {"REDIS_URL": "redis://cache:6379/0", "GATEKEEPER_WORKERS": "3", "GATEKEEPER_MAX_REGISTRY_AGE": "60"}
    settings = Settings.from_env(environ, workers=2, listen=None)
    assert (settings.redis_url, settings.workers, settings.max_registry_age_seconds) == ("redis://cache:6379/0", 2, 60)
    assert settings.listen == Settings().listen  # a flag not given (None) keeps what the environment says


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEKEEPER_WORKERS", "abc"),
        ("GATEKEEPER_WORKERS", "0"),
        ("GATEKEEPER_MAX_REGISTRY_AGE", "soon"),
        ("GATEKEEPER_MAX_REGISTRY_AGE", "nan"),
        ("GATEKEEPER_LOG_FORMAT", "xml"),
        ("GATEKEEPER_METRICS_LISTEN", "9464"),
        ("GATEKEEPER_REDIS_REPLICA_READS", "maybe"),
    ],
)
def test_a_bad_environment_value_is_one_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable if variable != "GATEKEEPER_METRICS_LISTEN" else "HOST:PORT"):
        Settings.from_env({variable: value})


def test_replica_reads_come_with_a_cluster_url() -> None:
    environ = {"REDIS_URL": "redis+cluster://10.0.0.1:6379", "GATEKEEPER_REDIS_REPLICA_READS": "yes"}
    assert Settings.from_env(environ).redis_replica_reads


def test_an_address_comes_from_the_flag_then_the_environment_then_a_running_demo_then_the_default(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": os.getpid(), "redis_url": "redis://127.0.0.1:7001/0"}), encoding="utf-8")
    demo = {"GATEKEEPER_DEMO_STATE": str(state)}
    given = redis_address("redis://127.0.0.1:7000/0", demo | {"REDIS_URL": "redis://127.0.0.1:7002/0"})
    assert (given.value, given.source) == ("redis://127.0.0.1:7000/0", "--redis-url")
    from_env = redis_address(None, demo | {"REDIS_URL": "redis://127.0.0.1:7002/0"})
    assert (from_env.value, from_env.source) == ("redis://127.0.0.1:7002/0", "env REDIS_URL")
    from_demo = redis_address(None, demo)
    assert (from_demo.value, from_demo.source) == ("redis://127.0.0.1:7001/0", f"scripts/demo, {state}")
    default = redis_address(None, {"GATEKEEPER_DEMO_STATE": str(tmp_path / "none.json")})
    assert (default.value, default.source) == (defaults.REDIS_URL, "default")


def test_a_password_is_hidden_where_an_address_is_shown() -> None:
    shown = redis_address("redis://reader:s3cret@127.0.0.1:7000/0", {}).shown
    assert shown == "redis://reader:***@127.0.0.1:7000/0 (--redis-url)"
