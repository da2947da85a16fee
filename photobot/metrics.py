"""Prometheus metrics: one registry per booth process (never the global default registry, so
tests can run several booths in one interpreter).

Metric families are declared here, in one place, so ``/metrics`` has a stable shape; the actors
update them. Labels are low-cardinality only (status, provider, actor, outcome) — never ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import photobot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ActorCollector(Collector):
    """Reads the supervisor's view at scrape time, so the gauge can never drift from /health."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "photobot_actor_up", "1 when the actor is running, else 0", labels=["actor"]
        )
        for name, state in self._states():
            up.add_metric([name], 1.0 if state == "running" else 0.0)
        yield up


class Metrics:
    def __init__(self) -> None:
        # The *_created series double the output and no dashboard of ours reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge("photobot_build_info", "Photobot version", ["version"], registry=r)
        self.build_info.labels(photobot.__version__).set(1)
        self.actor_restarts = Counter(
            "photobot_actor_restarts", "Actor restarts by the supervisor", ["actor"], registry=r
        )
        self.actor_crashes = Counter(
            "photobot_actor_crashes", "Actor crashes seen by the supervisor", ["actor"], registry=r
        )
        self.jobs = Counter(
            "photobot_jobs", "Jobs reaching a state", ["status", "provider"], registry=r
        )
        self.job_duration = Histogram(
            "photobot_job_duration_seconds",
            "Time from submit to a final state",
            ["provider"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.queue_depth = Gauge(
            "photobot_queue_depth", "Work waiting in an actor's inbox", ["queue"], registry=r
        )
        self.gallery_connections = Gauge(
            "photobot_gallery_connections", "Open gallery websockets", registry=r
        )
        self.gallery_messages = Counter(
            "photobot_gallery_messages_sent", "Gallery messages delivered to guests", registry=r
        )
        self.hotfolder_files = Counter(
            "photobot_hotfolder_files", "Hot folder files by outcome", ["outcome"], registry=r
        )
        self.clips = Counter(
            "photobot_clip_requests", "CCTV clip requests by outcome", ["outcome"], registry=r
        )
        self.clip_duration = Histogram(
            "photobot_clip_seconds", "CCTV clip request processing time", registry=r,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
        )  # fmt: skip

    def watch_actors(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.registry.register(_ActorCollector(states))

    def render(self) -> bytes:
        return generate_latest(self.registry)
