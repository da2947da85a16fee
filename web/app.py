"""The Quart-Trio application factory.

:func:`create_app` takes the running :class:`~photobot.root.Services` from the composition root;
routes reach them through :func:`web.deps.services`, never through import-time globals, so a
test can build an app around any set of services.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from photobot.root import Services
from web import auth, cors, errors
from web.routes import auth as auth_routes
from web.routes import booth, events, files, jobs, ops, sessions

#: Largest request body accepted anywhere (uploads of 24 MP JPEGs fit with room to spare);
#: larger bodies get 413 before they are read.
MAX_BODY_BYTES = 50 * 1024 * 1024


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("photobot")
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
    return app
