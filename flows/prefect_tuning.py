"""Two fixed costs of Prefect's engine removed, each with its own switch.

**One TLS context per process for the API clients** (``TRACKGO_PREFECT_SHARED_TLS=0`` keeps
Prefect's behaviour). Prefect builds a new API client for every task run (a worker process runs
each task inside a freshly hydrated context: two to three clients per task run), and each client
constructor loads the certifi CA bundle into a new ``ssl.SSLContext``, whether the API is
``https://`` or plain ``http://127.0.0.1``: a CPU cost per task run in every worker, paid again by
the flow process for every task it starts locally. Prefect has no switch for it. Here the client
constructors share one verified context per CA file (or path/data); verification is untouched: the shared context
still requires and checks the server's certificate and host name. Contexts built for
``PREFECT_API_TLS_INSECURE_SKIP_VERIFY`` (no CA argument; Prefect turns verification off on them)
are never shared.

**Flow-run heartbeats that stop at once** (``TRACKGO_PREFECT_PROMPT_HEARTBEAT=0`` keeps Prefect's
behaviour). A synchronous flow run emits a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (default 180) from a thread that sleeps in one-second steps, and the run waits for that
thread when it ends, so a flow run finishes up to one second late. :func:`prompt_heartbeats`
emits the same events at the same interval, waiting on an event instead, so the end of the run wakes it at once.

:mod:`flows` calls :func:`install` on import, so the flow process and every worker that
unpickles a flow's task get both. What both cost when measured: ``docs/measurements.md``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
import ssl
import threading
import types
from typing import Any, Iterator

log = logging.getLogger(__name__)

ENV_SWITCH = "TRACKGO_PREFECT_SHARED_TLS"
HEARTBEAT_SWITCH = "TRACKGO_PREFECT_PROMPT_HEARTBEAT"


def _switched_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


class SharedContextSSL(types.ModuleType):
    """Stand-in for the ``ssl`` module inside Prefect's client module: every attribute is the
    real module's, except that ``create_default_context`` with a CA argument returns one shared
    context per (purpose, cafile, capath, cadata)."""

    def __init__(self) -> None:
        super().__init__("ssl")
        # (purpose, cafile, capath, cadata) → the one context shared by every client asking for it
        self.contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self.created = 0  # contexts actually built (for tests and diagnostics)

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    def create_default_context(self, purpose: Any = ssl.Purpose.SERVER_AUTH, *, cafile: Any = None,
                               capath: Any = None, cadata: Any = None) -> ssl.SSLContext:
        if cafile is None and capath is None and cadata is None:
            # the caller may switch verification off on it: a private context every time
            return ssl.create_default_context(purpose)
        key = (purpose, os.fspath(cafile) if cafile is not None else None,
               os.fspath(capath) if capath is not None else None, cadata)
        with self._lock:
            ctx = self.contexts.get(key)
            if ctx is None:
                ctx = ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
                self.contexts[key] = ctx
                self.created += 1
            return ctx


@contextlib.contextmanager
def prompt_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Heartbeat events for ``engine``'s flow run while the block runs (Prefect's contract for
    the engine's heartbeat context: the engine's interval, none once the run is final, errors
    logged and ignored), from a thread that the end of the block wakes at once."""
    from prefect import flow_engine

    seconds = engine.heartbeat_seconds
    if seconds is None:
        yield
        return
    seconds = max(seconds, flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = engine.flow_run
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a lost heartbeat must not fail the run
                log.debug("flow-run heartbeat not sent", exc_info=True)
            stop.wait(seconds)

    # the thread needs the caller's settings context (API URL) to reach the same server
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name="flow-run-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)


_PREFECT_HEARTBEATS: Any = None  # Prefect's own context manager while ours is installed


def _wanted_module(switch: str, name: str) -> Any:
    """Prefect's module ``name`` to patch, or None when ``switch`` is off or it is missing."""
    if _switched_off(switch):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - prefect is a core dependency
        return None


def _install_heartbeats() -> bool:
    global _PREFECT_HEARTBEATS
    flow_engine = _wanted_module(HEARTBEAT_SWITCH, "prefect.flow_engine")
    if flow_engine is None:
        return False
    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is prompt_heartbeats:
        return True
    engine_cls = getattr(flow_engine, "BaseFlowRunEngine", None)
    needed = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")
    if current is None or engine_cls is None or not all(hasattr(engine_cls, n) for n in needed) \
            or not hasattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL"):
        log.debug("this Prefect's flow engine has no heartbeat context of the known shape; not patched")
        return False
    _PREFECT_HEARTBEATS = current
    flow_engine._send_heartbeats = prompt_heartbeats
    return True


def install() -> dict[str, bool]:
    """Install both changes in this process (idempotent); returns which are in effect
    (``{"shared_tls": …, "prompt_heartbeats": …}``): each is off when its switch says so or
    when this Prefect lacks the code it replaces."""
    return {"shared_tls": _install_tls(), "prompt_heartbeats": _install_heartbeats()}


def _install_tls() -> bool:
    orchestration = _wanted_module(ENV_SWITCH, "prefect.client.orchestration")
    if orchestration is None:
        return False
    current = getattr(orchestration, "ssl", None)
    if isinstance(current, SharedContextSSL):
        return True
    if current is not ssl:
        log.debug("prefect.client.orchestration has no plain ssl module reference; not patched")
        return False
    orchestration.ssl = SharedContextSSL()
    return True


def uninstall() -> None:
    """Give Prefect back its client module's real ``ssl`` module and its heartbeat context."""
    global _PREFECT_HEARTBEATS
    from prefect import flow_engine
    from prefect.client import orchestration

    if isinstance(getattr(orchestration, "ssl", None), SharedContextSSL):
        orchestration.ssl = ssl
    if _PREFECT_HEARTBEATS is not None and flow_engine._send_heartbeats is prompt_heartbeats:
        flow_engine._send_heartbeats = _PREFECT_HEARTBEATS
        _PREFECT_HEARTBEATS = None
