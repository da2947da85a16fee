"""Benchmark: cold and warm start of ``photobot run`` to ``/health`` ok, and idle memory.

    .venv/bin/python -m tests.bench.bench_startup [--runs 5]

Cold: a fresh data dir each time (initdb, migrations, secrets). Warm: the same data dir again.
Goal (issue 2): median cold ≤ 5 s, warm ≤ 2 s. Memory: peak RSS (VmHWM) of the idle booth
process and of each child server after 3 s idle. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from tests.bench.common import proc_status_kib
from tests.booth_process import Booth


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def start_to_healthy(booth: Booth) -> float:
    t0 = time.monotonic()
    booth.start()
    booth.wait_healthy()
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="pb-bench-"))
    cold: list[float] = []
    warm: list[float] = []
    memory: dict[str, int] = {}
    try:
        for i in range(runs):
            data_dir = root / f"cold-{i}"
            booth = Booth(data_dir)
            cold.append(start_to_healthy(booth))
            if i == 0:
                time.sleep(3)
                assert booth.proc is not None
                memory["photobot"] = proc_status_kib("VmHWM", booth.proc.pid)
                by_name: dict[str, int] = {}
                for pid in booth.children():
                    peak = proc_status_kib("VmHWM", pid)
                    by_name[_comm(pid)] = by_name.get(_comm(pid), 0) + peak
                memory.update(by_name)
            assert booth.stop(signal.SIGTERM) == 0
            warm_booth = Booth(data_dir)
            warm.append(start_to_healthy(warm_booth))
            assert warm_booth.stop(signal.SIGTERM) == 0
            print(f"run {i + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("peak RSS after 3 s idle (VmHWM, summed per process name):")
    for name, kib in sorted(memory.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {kib / 1024:7.1f} MiB")
    print(f"cold start to /health ok: median {statistics.median(cold):.2f} s (goal ≤ 5 s)")
    print(f"warm start to /health ok: median {statistics.median(warm):.2f} s (goal ≤ 2 s)")
    print(
        f"startup: cold {statistics.median(cold):.2f} s, warm {statistics.median(warm):.2f} s "
        f"(median of {runs})"
    )


if __name__ == "__main__":
    main()
