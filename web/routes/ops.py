"""Operations: ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from photobot import health
from photobot.metrics import CONTENT_TYPE
from web.deps import services

bp = Blueprint("ops", __name__)


@bp.get("/health")
async def get_health() -> Response:
    body, status = await health.report(services())
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
async def get_metrics() -> Response:
    s = services()
    for queue, depth in s.wiring.depths().items():
        s.metrics.queue_depth.labels(queue).set(depth)
    return Response(s.metrics.render(), status=200, content_type=CONTENT_TYPE)
