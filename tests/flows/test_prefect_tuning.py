"""flows.prefect_tuning: Prefect API clients share one verified TLS context per process."""
from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import pytest

from flows import prefect_tuning

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared():
    """The shared-context stand-in freshly installed (whatever flows' import did before)."""
    prefect_tuning.uninstall()
    assert prefect_tuning.install() is True
    from prefect.client import orchestration

    yield orchestration.ssl
    prefect_tuning.uninstall()
    prefect_tuning.install()


def _ctx(client) -> ssl.SSLContext:
    return client._client._transport._pool._ssl_context


def test_clients_share_one_verified_context(shared):
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    clients = [SyncPrefectClient("https://prefect.example:4200/api") for _ in range(3)]
    clients.append(PrefectClient("https://prefect.example:4200/api"))
    contexts = {id(_ctx(c)) for c in clients}
    assert len(contexts) == 1 and shared.created == 1
    ctx = _ctx(clients[0])
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    # built from the CA bundle Prefect uses by default, and holding its certificates
    from prefect.settings import PREFECT_API_SSL_CERT_FILE

    [(key, built)] = shared._contexts.items()
    assert built is ctx and key[1] == (PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
    assert ctx.cert_store_stats()["x509_ca"] > 100


def test_insecure_contexts_are_never_shared(shared, monkeypatch):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        a, b = SyncPrefectClient("https://x/api"), SyncPrefectClient("https://x/api")
    assert _ctx(a) is not _ctx(b) and _ctx(a).verify_mode == ssl.CERT_NONE
    # switching verification off on those did not touch the shared verified one
    secure = SyncPrefectClient("https://x/api")
    assert _ctx(secure).verify_mode == ssl.CERT_REQUIRED and _ctx(secure).check_hostname is True


def test_other_ssl_names_pass_through(shared):
    assert shared.SSLContext is ssl.SSLContext and shared.CERT_NONE is ssl.CERT_NONE
    a = shared.create_default_context(cafile=certifi.where())
    assert shared.create_default_context(cafile=certifi.where()) is a
    pem = open(certifi.where()).read()
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"): pem.index("-----END CERTIFICATE-----") + 25]
    one = shared.create_default_context(cadata=first)
    assert one is not a and one.cert_store_stats()["x509_ca"] == 1
    assert shared.create_default_context(cadata=first) is one


def test_switch_off_keeps_prefects_behaviour():
    code = ("import ssl, flows\n"
            "from prefect.client import orchestration as o\n"
            "assert o.ssl is ssl, type(o.ssl)\n"
            "from prefect.client.orchestration import SyncPrefectClient as C\n"
            "a, b = C('https://x/api'), C('https://x/api')\n"
            "assert a._client._transport._pool._ssl_context is not b._client._transport._pool._ssl_context\n")
    env = {"TRACKGO_PREFECT_SHARED_TLS": "0", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=str(REPO))
    assert res.returncode == 0, res.stderr[-2000:]
