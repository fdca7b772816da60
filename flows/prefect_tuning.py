"""One shared TLS context per process for Prefect's API clients.

Prefect builds a new API client for every task run (a worker process runs each task inside a
freshly hydrated context: two to three clients per task run), and each client constructor loads
the certifi CA bundle into a new ``ssl.SSLContext`` — ~40 ms of CPU on the 2-core reference
machine, whether the API is ``https://`` or plain ``http://127.0.0.1``. With one batch of videos
per task run that is 5–10 % of a worker's CPU, and the flow process pays it again for every
task it starts locally. Prefect itself has no switch for it (upstream proposal: reusing contexts
across clients, PrefectHQ/prefect pull request 19106).

:func:`install` makes the client constructors share one verified context per CA file (or
path/data) in this process; verification is untouched: the shared context still requires and
checks the server's certificate and host name. Contexts built for
``PREFECT_API_TLS_INSECURE_SKIP_VERIFY`` (no CA argument; Prefect turns verification off on
them) are never shared. :mod:`flows` installs it on import, so the flow process and every worker
that unpickles a flow's task get it. Set ``TRACKGO_PREFECT_SHARED_TLS=0`` to keep Prefect's
behaviour.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
import types
from typing import Any

log = logging.getLogger(__name__)

ENV_SWITCH = "TRACKGO_PREFECT_SHARED_TLS"


class SharedContextSSL(types.ModuleType):
    """Stand-in for the ``ssl`` module inside Prefect's client module: every attribute is the
    real module's, except that ``create_default_context`` with a CA argument returns one shared
    context per (purpose, cafile, capath, cadata)."""

    def __init__(self) -> None:
        super().__init__("ssl")
        self._contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
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
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
                self._contexts[key] = ctx
                self.created += 1
            return ctx


def install() -> bool:
    """Share TLS contexts between Prefect API clients in this process (idempotent).

    Returns True when the shared contexts are in effect, False when switched off by
    ``TRACKGO_PREFECT_SHARED_TLS=0`` or when this Prefect has no such client module."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        from prefect.client import orchestration
    except ImportError:  # pragma: no cover - prefect is a core dependency
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
    """Give Prefect's client module the real ``ssl`` module back."""
    from prefect.client import orchestration

    if isinstance(getattr(orchestration, "ssl", None), SharedContextSSL):
        orchestration.ssl = ssl
