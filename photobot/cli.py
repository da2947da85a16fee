"""``photobot`` command line: ``run`` (the booth) and ``migrate``.

Exit codes: 0 after a clean stop, 2 for a bad setting or argument (one line on stderr naming it),
1 when the booth cannot start or an actor exhausted its restart intensity.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

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
    return p


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
    except ConfigError as exc:
        print(f"photobot: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if args.command == "run":
            trio.run(_run, settings, data_dir, args.demo)
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


async def _migrate(settings: Settings, data_dir: Path) -> None:
    from photobot.root import open_services

    # open_services applies pending migrations on the way in.
    async with open_services(settings, data_dir) as services:
        version = await services.db.fetchval("select max(version) from schema_migrations")
        print(f"database schema at version {version}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
