"""The gallery's websocket fan-out: a small Trio server of our own, on its own port.

- :mod:`photobot.fanout.protocol`: the websocket protocol without I/O — the opening handshake
  (``GET /ws/events/<slug>``, Origin check, subprotocol ``msgpack``), frame encoding (server
  frames are unmasked, so one frame's bytes go to every guest) and parsing of what guests send
  (through wsproto).
- :mod:`photobot.fanout.server`: the Trio adapter — listening socket, one reader task per guest,
  rooms, the broadcast path, bounded per-guest queues, pings, graceful close.

Why not Hypercorn's websocket path: measured on this machine it costs ~240 µs of CPU per
delivery (wsproto framing per guest plus quart-trio tasks); the benchmark
(``tests/bench/bench_fanout.py``) needs a few µs. See :mod:`photobot.fanout.server`.
"""

from photobot.fanout.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NO_PONG,
    CLOSE_TOO_SLOW,
    SUBPROTOCOL_MSGPACK,
)
from photobot.fanout.server import FanoutServer

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NO_PONG",
    "CLOSE_TOO_SLOW",
    "SUBPROTOCOL_MSGPACK",
    "FanoutServer",
]
