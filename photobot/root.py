"""The composition root: the one place that opens every component and wires the actors.

:func:`open_services` opens, in order, the database (an embedded PostgreSQL when
``DATABASE_URL`` is unset), Redis (an embedded server when ``REDIS_URL`` is unset) and storage
(a local folder with HMAC-signed URLs unless ``S3_*`` is set), each as an async context manager,
and closes them in reverse. :func:`run_booth` then runs the supervisor, Hypercorn and the
gallery's websocket listener (``GALLERY_WS_PORT``, :mod:`photobot.fanout`) side by side in the
root nursery until a signal or a supervisor give-up ends it.

Shutdown (SIGINT/SIGTERM): Hypercorn stops accepting and finishes in-flight requests; the
supervisor stops the actors in reverse start order, each with its grace period (the gallery
broadcaster closes guests' websockets with 1001 "going away"); then the services close and the
embedded servers stop. The whole sequence is bounded by ``SHUTDOWN_GRACE_SECONDS`` plus a few
seconds for the servers; after that everything left is cancelled.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

import actors
from actors import registry
from actors.cctv import CctvConfig, CctvPoller
from actors.dispatcher import Dispatcher
from actors.gallery import GalleryBroadcaster
from actors.hotfolder import HotfolderPaths, HotfolderWatcher
from actors.optimizer import ImageOptimizer, OptimizerConfig
from actors.pool import WorkerPool
from actors.registry import SessionRegistry
from photobot.bus import Bus
from photobot.cache import Cache
from photobot.cctv.store import CameraKey, ClipStore
from photobot.config import Settings
from photobot.db import Database, ensure_database
from photobot.db.migrate import migrate
from photobot.embedded import open_embedded_postgres, open_embedded_redis
from photobot.errors import ConfigError
from photobot.fanout import FanoutServer
from photobot.image_jobs import ImageJobs, announce_on
from photobot.local_secrets import LocalSecrets, load_or_create
from photobot.metrics import Metrics
from photobot.providers import build_providers, concurrency
from photobot.publishing import Publisher
from photobot.storage import LocalStorage, S3Storage, Storage
from photobot.supervisor import ChildSpec, Restart, Supervisor, SupervisorEvent

log = logging.getLogger("photobot")

#: How often the embedded servers are checked; one that died is started again on its port.
EMBEDDED_CHECK_SECONDS = 1.0

#: Name of the database Photobot creates on its embedded PostgreSQL.
EMBEDDED_DATABASE = "photobot"


@dataclass
class Services:
    """Everything a request handler or an actor may use. Built only by :func:`open_services`."""

    settings: Settings
    data_dir: Path
    db: Database
    cache: Cache
    storage: Storage
    secrets: LocalSecrets
    metrics: Metrics
    backends: dict[str, str]
    registry: SessionRegistry
    wiring: actors.Wiring
    bus: Bus
    dispatcher: Dispatcher
    pool: WorkerPool
    hotfolder: HotfolderWatcher
    publisher: Publisher
    gallery: GalleryBroadcaster
    image_jobs: ImageJobs
    optimizer: ImageOptimizer
    clips: ClipStore
    cctv: CctvPoller
    started_at: float = field(default_factory=time.time)
    supervisor: Supervisor = field(init=False)

    @property
    def upload_spool(self) -> Path:
        """Where photo uploads are written while they arrive (``web/uploads.py``); only this
        process uses it, so :func:`open_services` empties what a crash left there."""
        return upload_spool(self.data_dir)


def upload_spool(data_dir: Path) -> Path:
    return data_dir / "tmp" / "uploads"


@asynccontextmanager
async def open_services(settings: Settings, data_dir: Path) -> AsyncIterator[Services]:
    secrets = await trio.to_thread.run_sync(load_or_create, data_dir)
    await trio.to_thread.run_sync(
        functools.partial(shutil.rmtree, upload_spool(data_dir), ignore_errors=True)
    )
    backends: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        if settings.database_url is None:
            pg = await stack.enter_async_context(
                open_embedded_postgres(data_dir / "postgres", keep_alive=EMBEDDED_CHECK_SECONDS)
            )
            dsn = await ensure_database(pg.url, EMBEDDED_DATABASE)
            backends["database"] = f"embedded postgresql on 127.0.0.1:{pg.port}"
        else:
            dsn = settings.database_url.get_secret_value()
            backends["database"] = "external postgresql"
        db = await stack.enter_async_context(
            # All connections up front: opening one mid-burst costs ~0.3 s on a busy box.
            Database.open(
                dsn,
                min_size=settings.database_pool_size,
                max_size=settings.database_pool_size,
                statement_timeout=settings.database_statement_timeout_seconds,
            )
        )
        await migrate(db)

        if settings.redis_url is None:
            rd = await stack.enter_async_context(
                open_embedded_redis(data_dir / "redis", keep_alive=EMBEDDED_CHECK_SECONDS)
            )
            redis_url = rd.url
            backends["redis"] = f"embedded redis on 127.0.0.1:{rd.port}"
        else:
            redis_url = settings.redis_url.get_secret_value()
            backends["redis"] = "external redis"
        cache = Cache.from_url(redis_url, prefix=settings.redis_prefix)
        stack.push_async_callback(cache.aclose)
        await cache.check(timeout=5)

        storage: Storage
        if settings.uses_s3:
            assert (
                settings.s3_access_key_id and settings.s3_secret_access_key and settings.s3_bucket
            )
            storage = S3Storage(
                settings.s3_bucket,
                endpoint_url=settings.s3_endpoint,
                public_endpoint_url=settings.s3_public_endpoint,
                region=settings.s3_region,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key.get_secret_value(),
                force_path_style=settings.s3_force_path_style,
            )
            backends["storage"] = f"s3 bucket {settings.s3_bucket}"
        else:
            storage = LocalStorage(data_dir / "storage", secrets.url_signing_key)
            backends["storage"] = "local disk"
        stack.push_async_callback(storage.aclose)
        await storage.check()

        providers = build_providers(settings)
        for provider in providers.values():
            stack.push_async_callback(provider.aclose)
        wiring = actors.Wiring()
        bus = Bus()
        metrics = Metrics()
        registry_ = SessionRegistry(db, cache, settings)
        dispatcher = Dispatcher(db, wiring.dispatch[0])
        image_jobs = ImageJobs(
            db=db,
            cache=cache,
            storage=storage,
            mode=settings.image_workers,
            optimize=wiring.optimize[0],
            announce=announce_on(wiring.publish[0]),
        )
        publisher = Publisher(db, wiring.publish[0], derivatives=image_jobs)
        gallery = _gallery(settings, db, cache, metrics, wiring)
        hot_root = settings.hotfolder_path or data_dir / "hotfolder"
        clips = ClipStore(
            db,
            CameraKey(
                settings.camera_encryption_key.get_secret_value()
                if settings.camera_encryption_key is not None
                else secrets.camera_key
            ),
            padding=settings.clip_padding_seconds,
            flush_delay=settings.clip_flush_delay_seconds,
        )
        yield Services(
            settings=settings,
            data_dir=data_dir,
            db=db,
            cache=cache,
            storage=storage,
            secrets=secrets,
            metrics=metrics,
            backends=backends,
            registry=registry_,
            wiring=wiring,
            bus=bus,
            dispatcher=dispatcher,
            pool=WorkerPool(
                db=db,
                storage=storage,
                bus=bus,
                metrics=metrics,
                providers=providers,
                concurrency=concurrency(settings),
                default_chain=[settings.ai_provider_default, "local"],
                worker_id=settings.booth_id,
                public_base_url=settings.public_base_url,
                publisher=publisher,
                lease=settings.job_lease_seconds,
            ),
            publisher=publisher,
            gallery=gallery,
            image_jobs=image_jobs,
            optimizer=ImageOptimizer(
                image_jobs=image_jobs,
                storage=storage,
                worker_id=settings.booth_id,
                mode=settings.image_workers,
                config=OptimizerConfig(concurrency=settings.optimizer_concurrency),
            ),
            hotfolder=HotfolderWatcher(
                paths=HotfolderPaths.under(
                    hot_root.absolute(),
                    processed=settings.processed_path,
                    orphan=settings.orphan_path,
                    invalid=settings.invalid_path,
                ),
                booth_id=settings.booth_id,
                registry=registry_,
                dispatcher=dispatcher,
                storage=storage,
                cache=cache,
                db=db,
                metrics=metrics,
                publisher=publisher,
                stability_delay=settings.file_stability_delay_ms / 1000,
                workers=settings.hotfolder_workers,
            ),
            clips=clips,
            cctv=CctvPoller(
                clips,
                storage,
                CctvConfig(
                    worker_id=settings.booth_id,
                    temp_dir=(settings.temp_video_dir or data_dir / "tmp" / "cctv").absolute(),
                    batch_interval=settings.batch_interval_seconds,
                    batch_size=settings.batch_size,
                    auto_batch=settings.auto_batch_enabled,
                    exact_cut=settings.exact_cut,
                    min_free_bytes=settings.cctv_min_free_mb * 2**20,
                    nvr_timeout=settings.nvr_timeout_seconds,
                ),
                metrics,
            ),
        )


def _gallery(
    settings: Settings, db: Database, cache: Cache, metrics: Metrics, wiring: actors.Wiring
) -> GalleryBroadcaster:
    """The gallery broadcaster and its websocket server (listening only once ``_serve`` runs)."""

    async def room_exists(slug: str) -> bool:
        return bool(await db.fetchval("select exists(select 1 from events where slug = $1)", slug))

    server = FanoutServer(
        room_exists,
        ping_interval=settings.gallery_ws_ping_interval,
        max_connections=settings.gallery_ws_max_connections,
        max_per_ip=settings.gallery_ws_max_per_ip,
        queue_messages=settings.gallery_ws_queue_messages,
        queue_bytes=settings.gallery_ws_queue_bytes,
        allowed_origins=settings.gallery_ws_origins.split(","),
    )
    return GalleryBroadcaster(server, wiring.publish[1], cache=cache, metrics=metrics)


#: Grace for actors that hold no work in progress: they return as soon as they are asked.
QUICK_GRACE = 2.0


def actor_specs(services: Services) -> list[ChildSpec]:
    """The supervision tree, in start order (see :mod:`actors`).

    Stopping goes one actor at a time, so the shutdown budget is the sum of the graces: the
    worker pool, which may hold running jobs, gets ``SHUTDOWN_GRACE_SECONDS``; the others get
    :data:`QUICK_GRACE`.
    """
    grace = services.settings.shutdown_grace_seconds
    quick = min(QUICK_GRACE, grace)
    return [
        ChildSpec(
            "session_registry",
            functools.partial(registry.run, registry=services.registry),
            Restart.PERMANENT,
            quick,
        ),
        ChildSpec("gallery_broadcaster", services.gallery.run, Restart.PERMANENT, quick),
        ChildSpec(
            "ai_worker_pool",
            functools.partial(services.pool.run, work=services.wiring.work[1]),
            Restart.PERMANENT,
            grace,
        ),
        ChildSpec(
            "image_optimizer",
            functools.partial(services.optimizer.run, inbox=services.wiring.optimize[1]),
            Restart.PERMANENT,
            grace,
        ),
        ChildSpec(
            "job_dispatcher",
            functools.partial(
                services.dispatcher.run,
                inbox=services.wiring.dispatch[1],
                work=services.wiring.work[0],
            ),
            Restart.PERMANENT,
            quick,
        ),
        ChildSpec("hotfolder_watcher", services.hotfolder.run, Restart.PERMANENT, quick),
        ChildSpec(
            "cctv_poller",
            functools.partial(services.cctv.run, triggers=services.wiring.clip_trigger[1]),
            Restart.PERMANENT,
            quick,
        ),
    ]


def shutdown_budget(specs: list[ChildSpec]) -> float:
    """The longest a graceful stop can take (actors stop one after another), plus slack."""
    return sum(spec.shutdown_grace for spec in specs) + 5.0


def build_supervisor(
    services: Services, specs: list[ChildSpec] | None = None, **kwargs: object
) -> Supervisor:
    metrics = services.metrics

    def on_event(event: SupervisorEvent) -> None:
        if event.kind == "crashed":
            metrics.actor_crashes.labels(event.child).inc()
        elif event.kind == "restarting":
            metrics.actor_restarts.labels(event.child).inc()

    supervisor = Supervisor(
        actor_specs(services) if specs is None else specs,
        on_event=on_event,
        **kwargs,  # type: ignore[arg-type]
    )
    services.supervisor = supervisor
    metrics.watch_actors(lambda: [(s.name, s.state) for s in supervisor.status()])
    return supervisor


def listen_urls(binds: list[str]) -> list[str]:
    """Turn Hypercorn's bound addresses into URLs a person can open (0.0.0.0 → loopback + LAN)."""
    urls = []
    for bind in binds:
        if "://0.0.0.0:" in bind:
            port = bind.rsplit(":", 1)[1]
            urls.append(f"http://127.0.0.1:{port}")
            lan = _lan_address()
            if lan:
                urls.append(f"http://{lan}:{port}")
        else:
            urls.append(bind)
    return urls


def _lan_address() -> str | None:
    # Connecting a UDP socket sends nothing; it only asks the kernel which source address a
    # packet to that network would use — the address guests' phones on the LAN can reach.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


async def run_booth(
    settings: Settings,
    data_dir: Path,
    *,
    on_ready: Callable[[list[str]], None] | None = None,
    prepare: Callable[[Services], Awaitable[None]] | None = None,
) -> None:
    """Run the booth until SIGINT/SIGTERM; raises ``SupervisorGaveUp`` if an actor gives up.

    A signal during start-up, or a second signal during a graceful stop, cancels at once (the
    embedded servers are still stopped on the way out).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as root:
            stop_requested = trio.Event()
            ready = False

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if ready and not stop_requested.is_set():
                        log.info("shutting down gracefully", extra={"signal": name})
                        stop_requested.set()
                    else:
                        log.warning("stopping now", extra={"signal": name})
                        root.cancel_scope.cancel()

            def mark_ready(urls: list[str]) -> None:
                nonlocal ready
                ready = True
                if on_ready is not None:
                    on_ready(urls)

            root.start_soon(watch_signals)
            try:
                await _serve(settings, data_dir, stop_requested, mark_ready, prepare)
            finally:
                root.cancel_scope.cancel()


async def _serve(
    settings: Settings,
    data_dir: Path,
    stop_requested: trio.Event,
    on_ready: Callable[[list[str]], None],
    prepare: Callable[[Services], Awaitable[None]] | None,
) -> None:
    from web.app import create_asgi  # the web layer depends on the core, never the reverse

    async with open_services(settings, data_dir) as services:
        if prepare is not None:
            await prepare(services)
        supervisor = build_supervisor(services)
        app = create_asgi(services)
        stop_http = trio.Event()

        config = HypercornConfig()
        config.bind = [f"{settings.host}:{settings.port}"]
        config.graceful_timeout = settings.shutdown_grace_seconds
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")  # type: ignore[assignment]

        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            binds = await nursery.start(
                functools.partial(serve, app, config, shutdown_trigger=stop_http.wait)
            )
            ws_port = await _start_gallery_listener(nursery, services)
            urls = listen_urls(binds)
            log.info("gallery websockets listening", extra={"port": ws_port})
            log.info("photobot ready", extra={"urls": " ".join(urls), **services.backends})
            on_ready(urls)

            await stop_requested.wait()
            # Stop taking requests and stop the actors at the same time; both are bounded by
            # the grace period, and this deadline is the safety net over both.
            nursery.cancel_scope.deadline = trio.current_time() + shutdown_budget(
                actor_specs(services)
            )
            stop_http.set()
            await supervisor.stop()
            # Already done by the gallery actor's stop, unless it was cancelled before.
            await services.gallery.server.aclose(timeout=0.5)


async def _start_gallery_listener(nursery: trio.Nursery, services: Services) -> int:
    """Bind the gallery's websocket port; the default (``PORT + 1``) falls back to a free port
    when taken, since the page asks ``GET /api/gallery/<slug>/socket`` where it is."""
    settings = services.settings
    server = services.gallery.server
    try:
        return int(await nursery.start(server.serve, settings.host, settings.gallery_port))
    except OSError as exc:
        if settings.gallery_ws_port is not None or settings.gallery_port == 0:
            raise ConfigError(
                f"GALLERY_WS_PORT {settings.gallery_port} cannot be used: {exc.strerror}"
            ) from None
        log.warning(
            "gallery port taken, using a free one",
            extra={"port": settings.gallery_port, "error": exc.strerror},
        )
        return int(await nursery.start(server.serve, settings.host, 0))
