"""``photobot`` command line: ``run`` (the booth), ``migrate`` and ``operator add``.

``photobot operator add USERNAME [--role admin] [--force]`` stores an argon2id hash in the
``operators`` table. The password is prompted for twice on a terminal, or read as the first line
of stdin otherwise (``printf '%s\n' "$PW" | photobot operator add ana``), so it never appears
in the process list or shell history. ``--force`` replaces an existing operator's password and
role and re-enables it.

Exit codes: 0 after a clean stop, 2 for a bad setting or argument (one line on stderr naming it),
1 when the booth cannot start or an actor exhausted its restart intensity.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from photobot.concurrency import limit_malloc_arenas
from photobot.config import Settings, load_settings, resolve_data_dir
from photobot.errors import ConfigError, PhotobotError
from photobot.logs import setup_logging

log = logging.getLogger("photobot")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="photobot", description="Run an event photo booth.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the booth (embedded PostgreSQL/Redis when unset)")
    run.add_argument("--host", help="address to listen on (default $HOST or 0.0.0.0)")
    run.add_argument("--port", type=int, help="port (default $PORT or 8000; 0 picks a free one)")
    run.add_argument("--data-dir", help="data folder (default $PHOTOBOT_DATA_DIR or ./var)")
    run.add_argument("--demo", action="store_true", help="make sure a 'demo' event exists")
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.add_argument("--data-dir", help="data folder (for the embedded database)")
    op = sub.add_parser("operator", help="manage operator logins")
    op_sub = op.add_subparsers(dest="operator_command", required=True)
    add = op_sub.add_parser("add", help="add an operator (password from a prompt or stdin)")
    add.add_argument("username", help="login name: 1-64 of letters, digits, '.', '_', '@', '-'")
    add.add_argument("--role", choices=["operator", "admin"], default="operator")
    add.add_argument("--force", action="store_true", help="replace an existing operator")
    add.add_argument("--data-dir", help="data folder (for the embedded database)")
    return p


_USERNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_MIN_PASSWORD = 8


def _read_password() -> str:
    """Prompt twice on a terminal; otherwise the first line of stdin. ConfigError if unusable."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise ConfigError("the passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < _MIN_PASSWORD:
        raise ConfigError(f"the password must be at least {_MIN_PASSWORD} characters")
    return password


def _first_domain_error(exc: BaseException) -> PhotobotError | None:
    if isinstance(exc, PhotobotError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_domain_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {}
        if getattr(args, "host", None):
            overrides["host"] = args.host
        if getattr(args, "port", None) is not None:
            overrides["port"] = args.port
        settings = load_settings(**overrides)
        data_dir = resolve_data_dir(settings, args.data_dir)
        password = ""
        if args.command == "operator":
            if not _USERNAME_RE.fullmatch(args.username):
                raise ConfigError("the username must be 1-64 of letters, digits, . _ @ -")
            password = _read_password()
    except ConfigError as exc:
        print(f"photobot: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    limit_malloc_arenas()  # before any thread: see its docstring for the resident memory saved
    try:
        if args.command == "run":
            trio.run(_run, settings, data_dir, args.demo)
        elif args.command == "operator":
            trio.run(_operator_add, settings, data_dir, args, password)
        else:
            trio.run(_migrate, settings, data_dir)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        err = _first_domain_error(exc)
        if err is None:
            raise
        log.error("photobot stopped", extra={"error": err.message, "code": err.code})
        print(f"photobot: {err.message}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    return 0


async def _run(settings: Settings, data_dir: Path, demo: bool) -> None:
    from photobot.root import Services, run_booth

    def ready(urls: list[str]) -> None:
        print(f"Photobot is ready: {urls[0]}", flush=True)
        for url in urls[1:]:
            print(f"  also reachable at {url}", flush=True)

    async def prepare(services: Services) -> None:
        if demo:
            await services.db.execute(
                "insert into events (slug, name) values ('demo', 'Demo event')"
                " on conflict (slug) do nothing"
            )

    await run_booth(settings, data_dir, on_ready=ready, prepare=prepare)


async def _operator_add(
    settings: Settings, data_dir: Path, args: argparse.Namespace, password: str
) -> None:
    from photobot.auth import hash_password
    from photobot.errors import Conflict
    from photobot.root import open_services

    password_hash = await trio.to_thread.run_sync(hash_password, password)
    upsert = (
        " on conflict (username) do update set password_hash = excluded.password_hash,"
        " role = excluded.role, disabled_at = null"
        if args.force
        else ""
    )
    async with open_services(settings, data_dir) as services:
        try:
            await services.db.execute(
                "insert into operators (username, password_hash, role) values ($1, $2, $3)"
                + upsert,
                args.username,
                password_hash,
                args.role,
            )
        except Conflict:
            raise Conflict(
                f"operator {args.username!r} already exists (--force replaces its password)"
            ) from None
    print(f"operator {args.username!r} saved (role {args.role})", flush=True)


async def _migrate(settings: Settings, data_dir: Path) -> None:
    from photobot.root import open_services

    # open_services applies pending migrations on the way in.
    async with open_services(settings, data_dir) as services:
        version = await services.db.fetchval("select max(version) from schema_migrations")
        print(f"database schema at version {version}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
