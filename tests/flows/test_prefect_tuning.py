"""flows.prefect_tuning: Prefect API clients share one verified TLS context per process, and a
flow run's heartbeat thread stops as soon as the run ends."""
from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import certifi
import pytest

from flows import prefect_tuning

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared():
    """The shared-context stand-in freshly installed (whatever flows' import did before)."""
    prefect_tuning.uninstall()
    assert prefect_tuning.install()["shared_tls"] is True
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

    [(key, built)] = shared.contexts.items()
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
            "assert a._client._transport._pool._ssl_context is not b._client._transport._pool._ssl_context\n"
            "from prefect import flow_engine\n"
            "assert flow_engine._send_heartbeats.__module__ == 'prefect.flow_engine'\n")
    env = {"TRACKGO_PREFECT_SHARED_TLS": "0", "TRACKGO_PREFECT_PROMPT_HEARTBEAT": "0", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=str(REPO))
    assert res.returncode == 0, res.stderr[-2000:]


# ----------------------------------------------------------------------------------- heartbeats

class _Engine:
    """The part of Prefect's flow-run engine the heartbeat context uses."""

    def __init__(self, seconds=30, final=False, fail=False):
        self.heartbeat_seconds = seconds
        self.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: final))
        self.fail = fail
        self.emitted: list = []
        self.sent = threading.Event()

    def _build_heartbeat_event_template(self):
        return {"prefect.resource.id": "prefect.flow-run.x"}, ["related"]

    def _emit_flow_run_heartbeat(self, resource, related):
        self.emitted.append((resource, related))
        self.sent.set()
        if self.fail:
            raise RuntimeError("API unreachable")


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flow-run-heartbeat"]


def test_heartbeat_is_sent_and_stops_at_once():
    engine = _Engine(seconds=30)
    with prefect_tuning.prompt_heartbeats(engine):
        assert engine.sent.wait(10)
        assert len(_heartbeat_threads()) == 1
        t0 = time.perf_counter()
    stopped = time.perf_counter() - t0
    # Prefect's own thread sleeps in 1 s steps and is joined here: up to a second
    assert stopped < 0.5, stopped
    assert _heartbeat_threads() == []
    assert engine.emitted == [({"prefect.resource.id": "prefect.flow-run.x"}, ["related"])]


def test_no_heartbeat_when_off_or_final_and_errors_stay_inside():
    off = _Engine(seconds=None)
    with prefect_tuning.prompt_heartbeats(off):
        assert _heartbeat_threads() == []
    final = _Engine(final=True)
    with prefect_tuning.prompt_heartbeats(final):
        time.sleep(0.2)
    assert final.emitted == []
    failing = _Engine(fail=True)
    with pytest.raises(KeyError):  # the block's own error goes through, the heartbeat's does not
        with prefect_tuning.prompt_heartbeats(failing):
            assert failing.sent.wait(10)
            raise KeyError("flow body")
    assert len(failing.emitted) == 1 and _heartbeat_threads() == []


def test_flow_runs_use_the_prompt_heartbeat(monkeypatch):
    """A real flow run goes through the installed context (so the patch point is the one the
    engine calls) and ends without waiting for the heartbeat thread."""
    from prefect import flow, flow_engine
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    assert flow_engine._send_heartbeats is prefect_tuning.prompt_heartbeats
    entered = []

    def spy(engine, join_on_exit=True):
        entered.append(engine.heartbeat_seconds)
        return prefect_tuning.prompt_heartbeats(engine, join_on_exit)

    monkeypatch.setattr(flow_engine, "_send_heartbeats", spy)

    @flow
    def tiny() -> int:
        return 7

    with prefect_test_harness(server_startup_timeout=180), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):
        assert tiny() == 7
    assert entered == [45]
    assert _heartbeat_threads() == []
