"""Logs: JSON lines for machines, short lines for a person on a terminal, the same redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from photobot.logs import JsonFormatter, TextFormatter, formatter_for

# A child that sets logging up exactly as `photobot run` does, then logs one line.
_CHILD = """
import logging, sys
from photobot.logs import setup_logging
setup_logging("INFO", sys.argv[1])
logging.getLogger("photobot.jobs").info("job queued", extra={"jobId": "j-1", "actor": "api"})
"""


@pytest.fixture
def terminal() -> Iterator[tuple[int, IO[str]]]:
    """A real pseudo-terminal: (master fd, the slave opened for writing)."""
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8") as stream:
        yield master, stream
    os.close(master)


def _read_all(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every slave end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _child_stderr_on_a_terminal(log_format: str) -> str:
    master, slave = os.openpty()
    try:
        subprocess.run(
            [sys.executable, "-c", _CHILD, log_format],
            stderr=slave, stdin=subprocess.DEVNULL, timeout=60, check=True,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        return _read_all(master)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def _child_stderr_on_a_pipe(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, log_format],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stderr


def _format(
    formatter: logging.Formatter, msg: str, *, with_exc: bool = False, **extra: object
) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.Logger("photobot.test")  # not registered: nothing else sees it
    logger.addHandler(handler)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.warning(msg, extra=extra, exc_info=with_exc)
    return out.getvalue()


def test_auto_chooses_text_for_a_terminal_and_json_otherwise(
    terminal: tuple[int, IO[str]], tmp_path: Path
) -> None:
    _, tty = terminal
    with open(tmp_path / "log", "w", encoding="utf-8") as file:
        assert isinstance(formatter_for(tty), TextFormatter)
        assert isinstance(formatter_for(file), JsonFormatter)
        assert isinstance(formatter_for(io.StringIO()), JsonFormatter)
        assert isinstance(formatter_for(tty, "json"), JsonFormatter)
        assert isinstance(formatter_for(file, "text"), TextFormatter)
    assert isinstance(formatter_for(file), JsonFormatter)  # closed: no terminal to speak of


def test_setup_logging_on_a_terminal_writes_a_human_line() -> None:
    lines = _child_stderr_on_a_terminal("auto").strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO  job queued jobId=j-1 actor=api", lines[0])
    forced = _child_stderr_on_a_terminal("json").strip()
    assert json.loads(forced)["jobId"] == "j-1"


def test_setup_logging_on_a_pipe_writes_json_unless_told_text() -> None:
    entry = json.loads(_child_stderr_on_a_pipe("auto"))
    assert (entry["level"], entry["msg"], entry["jobId"], entry["actor"]) == (
        "info", "job queued", "j-1", "api",
    )  # fmt: skip
    text = _child_stderr_on_a_pipe("text").strip()
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO  job queued jobId=j-1 actor=api", text)


def test_a_human_line_has_time_level_message_fields_and_traceback() -> None:
    text = _format(
        TextFormatter(), "upload failed", jobId="j-9", sessionId="s-2", boothId="booth-1",
        event="photo:upload:complete", reason="disk full, retrying", attempt=2, done=False,
        delay=None, with_exc=True,
    )  # fmt: skip
    first, *rest = text.rstrip("\n").split("\n")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARN  upload failed jobId=j-9 sessionId=s-2 boothId=booth-1 "
        r'event=photo:upload:complete reason="disk full, retrying" attempt=2 done=false',
        first,
    )
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_json_line_keeps_its_shape() -> None:
    entry = json.loads(_format(JsonFormatter(), "upload failed", jobId="j-9", with_exc=True))
    assert entry["level"] == "warning" and entry["logger"] == "photobot.test"
    assert entry["msg"] == "upload failed" and entry["jobId"] == "j-9"
    assert entry["error"] == "ValueError: boom" and "Traceback" in entry["traceback"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_both_formats_redact_secrets_and_image_bytes(formatter: logging.Formatter) -> None:
    secrets = {
        "password": "hunter2", "apiKey": "kie-123456", "Authorization": "Bearer eyJabc",
        "jwt_secret": "s3cr3t", "callbackToken": "tok-987",
    }  # fmt: skip
    image = b"\xff\xd8\xff\xe0JFIF" + b"PIXELDATA" * 100
    out = _format(formatter, "stored", jobId="j-1", image=image, **secrets)
    for value in secrets.values():
        assert value not in out
    assert "PIXELDATA" not in out and "JFIF" not in out
    assert out.count("[redacted]") == len(secrets)
    assert f"<{len(image)} bytes>" in out and "j-1" in out
