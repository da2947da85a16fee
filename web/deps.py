"""Access to the running services from inside a request."""

from __future__ import annotations

from quart import current_app

from photobot.root import Services


def services() -> Services:
    return current_app.extensions["photobot"]  # type: ignore[no-any-return]
