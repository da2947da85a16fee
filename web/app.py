"""The Quart-Trio application factory.

:func:`create_app` takes the running :class:`~photobot.root.Services` from the composition root;
routes reach them through :func:`web.deps.services`, never through import-time globals, so a
test can build an app around any set of services.

Every answer that is not a page (JSON, errors of any status, redirects, stored files, the QR
SVG) carries ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``; a header a route set
itself is kept. Pages get their own policy from :mod:`web.pages`.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from photobot.root import Services
from web import auth, cors, errors, pages
from web.routes import auth as auth_routes
from web.routes import booth, cctv, events, files, gallery, guest, jobs, ops, photos, sessions
from web.routes import gallery_socket as gallery_socket_routes
from web.routes import image_jobs as image_jobs_routes

#: Largest request body accepted anywhere (uploads of 24 MP JPEGs fit with room to spare);
#: larger bodies get 413 before they are read.
MAX_BODY_BYTES = 50 * 1024 * 1024
#: Nothing the API answers is a document: it may load nothing and be framed by no one.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("photobot", static_folder=None)  # static files: web/pages.py
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["photobot"] = services
    errors.install(app)
    cors.install(app, services.settings.cors_origins)
    auth.install(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(auth_routes.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(booth.bp)
    app.register_blueprint(gallery_socket_routes.bp)
    app.register_blueprint(photos.bp)
    app.register_blueprint(gallery.bp)
    app.register_blueprint(guest.bp)
    app.register_blueprint(image_jobs_routes.bp)
    app.register_blueprint(cctv.bp)
    app.register_blueprint(pages.bp)

    # An app-level hook, so errors raised before any view (unknown route, 405, 413, a failed
    # preflight) and unhandled 500s get the headers too.
    @app.after_request
    async def security_headers(response: Response) -> Response:
        if request.blueprint == pages.bp.name:
            return response
        response.headers.setdefault("Content-Security-Policy", API_CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


class FinalSendShield:
    """ASGI wrapper: the response's last ``send`` is shielded from the app's own cancellation.

    Quart-Trio cancels a request's tasks as soon as Hypercorn reports ``http.disconnect``, which
    Hypercorn does *during* the final ``send`` — exactly when it re-arms the connection's
    keep-alive idle timer. Cancelled there, the timer never runs: idle keep-alive connections
    (every browser and phone keeps one) were never closed, and a graceful shutdown waited the
    full grace period for them. The shield is bounded so a client that stops reading cannot hold
    a request forever.
    """

    def __init__(self, app: Any, limit: float = 30.0) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(self.limit) as scope_:
                    scope_.shield = True
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, guarded_send)


def create_asgi(services: Services) -> FinalSendShield:
    """The app as Hypercorn should serve it."""
    return FinalSendShield(create_app(services))
