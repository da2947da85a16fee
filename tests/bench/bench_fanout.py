"""Gallery fan-out benchmark: our broadcaster against the reference servers, in one run.

    .venv/bin/python -m tests.bench.bench_fanout --n 5000      # 1,000 and 5,000 guests
    .venv/bin/python -m tests.bench.bench_fanout --sizes 1000 --servers photobot,ws

N guests connected to the ``demo`` event's gallery, 50 photos announced 200 ms apart; p50/p99
delivery latency, messages lost, server memory per connection and server CPU per delivery. The
load client, its driver and the reference servers are ``../shared/bench/fanout`` (``client.js``
driven by ``bench_ws.py``, unchanged: Node ``socket.io`` and ``ws``, bare ``trio-websocket``);
``npm install`` must have been run there.

What "photobot" is here: a server process running the real gallery broadcaster actor
(:class:`actors.gallery.GalleryBroadcaster`, with its Redis relay on an embedded Redis unless
``--no-redis``) and its websocket server (:class:`photobot.fanout.FanoutServer`, default
settings), not a whole booth: the room check answers ``demo`` without PostgreSQL, and the
announcements are :class:`~actors.GalleryMessage` s put on the actor's ``publish`` channel by the
control protocol of ``bench_ws.py`` (``count``; ``start M INTERVAL_MS`` → ``done {json}``),
each stamped with ``ts`` (CLOCK_MONOTONIC ms) just before it is handed over. So latency covers
the channel, the actor, the encode and the sends, as the reference servers' ``ts`` covers their
emit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHARED = (ROOT / ".." / "shared" / "bench" / "fanout").resolve()
PAD = "x" * 40
PHOTO_ID = "01J9Z3K4M5N6P7Q8R9S0T1V2W3"
REFERENCE = ("sio", "ws", "trio")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- the server process ---------------------------------------------------------------------


def serve(port: int, redis_url: str | None) -> None:
    """Our broadcaster on ``port`` (websocket) and ``port + 1`` (control), until killed."""
    import trio

    import actors
    from actors.gallery import GalleryBroadcaster
    from photobot.cache import Cache
    from photobot.fanout import FanoutServer
    from photobot.metrics import Metrics
    from photobot.supervisor import ChildContext

    lifetime = float(os.environ.get("MAX_LIFETIME_S", "900"))

    async def room_exists(slug: str) -> bool:
        return slug == "demo"

    async def server_main() -> None:
        wiring = actors.Wiring()
        server = FanoutServer(room_exists)
        cache = Cache.from_url(redis_url, prefix="bench:") if redis_url else None
        broadcaster = GalleryBroadcaster(server, wiring.publish[1], cache=cache, metrics=Metrics())
        publish = wiring.publish[0]
        loop_ms: list[float] = []
        done = {"want": 0, "event": trio.Event()}
        broadcast = server.broadcast

        def timed_broadcast(slug: str, type_: str, data: Any) -> int:
            t0 = time.perf_counter()
            n = broadcast(slug, type_, data)
            loop_ms.append((time.perf_counter() - t0) * 1000)
            if len(loop_ms) >= done["want"]:
                done["event"].set()  # type: ignore[attr-defined]
            return n

        server.broadcast = timed_broadcast  # type: ignore[method-assign]

        async def run_broadcast(m: int, interval_ms: float) -> dict[str, Any]:
            loop_ms.clear()
            done["want"], done["event"] = m, trio.Event()
            t0 = time.monotonic_ns() / 1e6
            for k in range(m):
                data = {"photo_id": PHOTO_ID, "seq": k, "ts": time.monotonic_ns() / 1e6}
                data["pad"] = PAD
                publish.send_nowait(actors.GalleryMessage("demo", "photo:upload:complete", data))
                if k + 1 < m:
                    nxt = t0 + (k + 1) * interval_ms
                    await trio.sleep(max(0.0, (nxt - time.monotonic_ns() / 1e6) / 1000))
            await done["event"].wait()  # type: ignore[attr-defined]
            return {
                "loop_ms": list(loop_ms),
                "dropped": server.dropped_slow + server.dropped_dead,
                "span_ms": time.monotonic_ns() / 1e6 - t0,
            }

        async def control(stream: trio.SocketStream) -> None:
            buf = b""
            async for chunk in stream:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    parts = line.decode().split()
                    if parts and parts[0] == "count":
                        await stream.send_all(f"{server.connections}\n".encode())
                    elif parts and parts[0] == "start":
                        res = await run_broadcast(int(parts[1]), float(parts[2]))
                        await stream.send_all(("done " + json.dumps(res) + "\n").encode())

        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, "127.0.0.1", port)
            ctx = ChildContext("gallery_broadcaster", 0, lambda _ctx: None)
            nursery.start_soon(broadcaster.run, ctx)
            if cache is not None:
                with trio.fail_after(10):
                    await broadcaster.subscribed.wait()
            serve_control = functools.partial(trio.serve_tcp, control, port + 1, host="127.0.0.1")
            await nursery.start(serve_control)
            print("LISTENING", flush=True)
            await trio.sleep(lifetime)
            nursery.cancel_scope.cancel()

    _raise_nofile()
    trio.run(server_main)


def serve_with_redis(port: int, use_redis: bool) -> None:
    if not use_redis:
        serve(port, None)
        return
    from photobot.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="bench-fanout-redis-") as tmp:
        os.chmod(tmp, 0o755)  # as root the embedded server runs as `nobody`
        with EmbeddedRedis(Path(tmp) / "redis", durable=False) as rd:
            serve(port, rd.url)


# -- one measured run, through the shared driver ----------------------------------------------


def run_one_photobot(argv: list[str], use_redis: bool) -> None:
    """``bench_ws.main()`` with one more ``--server``: ``photobot`` (this file's server)."""
    sys.path.insert(0, str(SHARED))
    import bench_ws  # type: ignore[import-not-found]

    original = bench_ws.server_cmd

    def server_cmd(kind: str, port: int, qsize: int) -> tuple[list[str], str, str]:
        if kind != "photobot":
            return original(kind, port, qsize)  # type: ignore[no-any-return]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
        if not use_redis:
            cmd.append("--no-redis")
        return cmd, "ws", f"ws://127.0.0.1:{port}/ws/events/demo"

    bench_ws.server_cmd = server_cmd
    sys.argv = ["bench_ws.py", *argv]
    bench_ws.main()


def measure(kind: str, n: int, a: argparse.Namespace, port: int, out: Path) -> dict[str, Any]:
    args = ["--server", kind, "--n", str(n), "--m", str(a.m), "--interval", str(a.interval)]
    args += ["--port", str(port), "--out", str(out)]
    if kind == "photobot":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", *args]
        if a.no_redis:
            cmd.append("--no-redis")
    else:
        cmd = [sys.executable, str(SHARED / "bench_ws.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FANOUT_PYTHON": sys.executable}
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        print(f"  {kind} N={n}: FAILED ({proc.returncode}): {' | '.join(tail)}", flush=True)
        return {"server": kind, "n": n, "failed": True}
    res: dict[str, Any] = json.loads(out.read_text())
    print(
        f"  {kind:8} N={n:5}: p50 {res['lat_p50_ms']:.0f} ms, p99 {res['lat_p99_ms']:.0f} ms,"
        f" lost {res['lost']}, {res['rss_per_conn_kb']:.1f} KB/conn,"
        f" {res['server_cpu_us_per_delivery']:.1f} µs/delivery ({time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    return res


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| server | N | connected | p50 ms | p99 ms | max ms | last-client p50 ms | lost "
        "| dropped | KB/conn | server CPU µs/delivery |"
    )
    rows = [head, "|" + "---|" * 11]
    for r in results:
        if r.get("failed"):
            rows.append(f"| {r['server']} | {r['n']:,} | failed |" + " |" * 8)
            continue
        rows.append(
            f"| {r['server']} | {r['n']:,} | {r['connected']:,} | {r['lat_p50_ms']:.0f}"
            f" | {r['lat_p99_ms']:.0f} | {r['lat_max_ms']:.0f} | {r['last_client_p50_ms']:.0f}"
            f" | {r['lost']:,} | {r['server_dropped']} | {r['rss_per_conn_kb']:.1f}"
            f" | {r['server_cpu_us_per_delivery']:.1f} |"
        )
    return "\n".join(rows)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    argv = sys.argv[1:]
    # internal modes: the server process, and one run through the shared driver
    if argv[:1] == ["--serve"]:
        serve_with_redis(int(argv[1]), "--no-redis" not in argv)
        return
    if argv[:1] == ["--one"]:
        run_one_photobot([x for x in argv[1:] if x != "--no-redis"], "--no-redis" not in argv)
        return

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="largest N; 1,000 is always run too")
    ap.add_argument("--sizes", default=None, help="comma list of N, instead of 1000 and --n")
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--interval", type=float, default=200)
    ap.add_argument("--servers", default="photobot," + ",".join(REFERENCE))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--port", type=int, default=23000)
    ap.add_argument("--no-redis", action="store_true", help="photobot without its Redis relay")
    ap.add_argument("--out-dir", default=None)
    a = ap.parse_args(argv)

    if not (SHARED / "node_modules" / "ws").is_dir():
        sys.exit(f"run `npm install --no-audit --no-fund` in {SHARED} first")
    _raise_nofile()
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else sorted({min(1000, a.n), a.n})
    servers = a.servers.split(",")
    if "sio" in servers and not (SHARED / "node_modules" / "socket.io").is_dir():
        print("socket.io is not installed: comparing without it", flush=True)
        servers.remove("sio")
    out_dir = Path(a.out_dir or tempfile.mkdtemp(prefix="bench-fanout-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    port = a.port
    print(f"fan-out: {a.m} messages x {a.interval:g} ms; results in {out_dir}", flush=True)
    for n in sizes:
        for rep in range(a.repeat):
            for kind in servers:
                out = out_dir / f"{kind}_{n}_{rep}.json"
                results.append(measure(kind, n, a, port, out))
                port += 10  # fresh ports: no TIME_WAIT leftovers between runs
    print()
    print(table(results))
    top = max(sizes)
    mine = [r for r in results if r["server"] == "photobot" and r["n"] == top and "lost" in r]
    theirs = [r for r in results if r["server"] == "sio" and r["n"] == top and "lost" in r]
    if mine:
        ref = f"{_median([r['lat_p99_ms'] for r in theirs]):.0f} ms" if theirs else "n/a"
        print(
            f"fanout: photobot p99 {_median([r['lat_p99_ms'] for r in mine]):.0f} ms"
            f" vs socket.io {ref} at {top:,} guests, lost {sum(r['lost'] for r in mine)},"
            f" {_median([r['rss_per_conn_kb'] for r in mine]):.1f} KB/conn"
        )


if __name__ == "__main__":
    main()
