"""Embedded PostgreSQL and Redis servers, run as child processes of Photobot.

``photobot run`` uses them when DATABASE_URL / REDIS_URL are unset; the test suite uses the same
classes. Each server is a direct child of the process that called ``start()``, which owns it:

* ``stop()`` (or leaving the context manager) shuts it down gracefully and waits for it;
* if the owner dies without doing so, even by SIGKILL, the kernel sends the server its shutdown
  signal (``PR_SET_PDEATHSIG``), so no server outlives Photobot for long;
* a server left running by a previous run on the same data dir is stopped at the next start.

The core is blocking (``EmbeddedPostgres``, ``EmbeddedRedis``: ``start()``/``stop()``, context
managers); ``open_embedded_postgres``/``open_embedded_redis`` are the trio wrappers. Shared
process plumbing (free ports, the unprivileged account used when running as root, the death
signal) lives in ``_process`` and is re-exported here. Start/stop each log one INFO line on the
``photobot.embedded`` logger.
"""

from ._process import (
    DEFAULT_USER,
    USER_ENV,
    Account,
    EmbeddedServerError,
    free_port,
    pid_alive,
    port_is_listening,
    proc_uid,
    server_account,
)
from .postgres import EmbeddedPostgres, find_pg_bindir, open_embedded_postgres
from .redis import EmbeddedRedis, bundled_valkey_server, find_redis_server, open_embedded_redis

__all__ = [
    "DEFAULT_USER",
    "USER_ENV",
    "Account",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "bundled_valkey_server",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
    "open_embedded_postgres",
    "open_embedded_redis",
    "pid_alive",
    "port_is_listening",
    "proc_uid",
    "server_account",
]
