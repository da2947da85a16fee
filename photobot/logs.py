"""Logs: one line per event on stderr, JSON for machines or a short line for a person.

Context that belongs in every line of a piece of work (``jobId``, ``actor``) is passed as
``extra={...}`` and copied into the record. Values under keys that look secret are replaced, and
``bytes`` are never written (only their length): a log line must never carry a key, a password or
image bytes. Both formats print the fields :func:`record_fields` selects and redacts, so the rule
lives in one place.

``LOG_FORMAT`` picks the format: ``auto`` (the default) writes text lines when stderr is a terminal
(``./dev run``) and JSON lines otherwise (a service, a pipe, a test); ``json`` and ``text`` force
one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Literal

LogFormat = Literal["auto", "json", "text"]

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_SECRET_MARKERS = ("password", "secret", "token", "apikey", "api_key", "authorization", "cookie")
_SHORT_LEVELS = {"WARNING": "WARN", "CRITICAL": "CRIT"}  # keeps the level column 5 wide


def _scrub(key: str, value: Any) -> Any:
    lowered = key.lower()
    if any(marker in lowered for marker in _SECRET_MARKERS):
        return "[redacted]"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context (its ``extra={...}`` keys), in the order given, with secret-looking
    keys replaced by ``[redacted]``, bytes by their length and other objects by ``str()``."""
    return {
        key: _scrub(key, value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            exc = record.exc_info[1]
            line["error"] = f"{type(exc).__name__}: {exc}"
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message key=value …`` in local time (what the booth's clock says), then
    the traceback on the following lines if there is one. Fields set to ``None`` are left out;
    values with spaces, quotes or ``=`` are JSON-quoted so that every ``key=value`` stays one
    token."""

    def format(self, record: logging.LogRecord) -> str:
        level = _SHORT_LEVELS.get(record.levelname, record.levelname)
        parts = [
            time.strftime("%H:%M:%S", time.localtime(record.created)),
            f"{level:<5}",
            record.getMessage(),
        ]
        parts += [
            f"{key}={_text_value(value)}"
            for key, value in record_fields(record).items()
            if value is not None  # "error=null delay=null" on every actor start is noise here
        ]
        line = " ".join(parts)
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def formatter_for(stream: IO[str], log_format: LogFormat = "auto") -> logging.Formatter:
    """The formatter for lines written to ``stream``: ``text`` or ``json`` as asked, and for
    ``auto`` text when ``stream`` is a terminal, JSON otherwise."""
    if log_format == "auto":
        log_format = "text" if _isatty(stream) else "json"
    return TextFormatter() if log_format == "text" else JsonFormatter()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or a file-like without a descriptor
        return False


def setup_logging(level: str = "INFO", log_format: LogFormat = "auto") -> None:
    """Route every logger (ours and the libraries') to one stream on stderr, in ``log_format``
    (see :func:`formatter_for`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(sys.stderr, log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Hypercorn's access log is one line per request; keep it at WARNING to keep the booth log
    # readable during a busy evening. Its error log stays.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
