"""photobot.concurrency: background threads at a lower CPU priority."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from photobot.concurrency import BackgroundThreads


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_background_threads_run_at_a_lower_priority_and_leave_trio_threads_alone() -> None:
    threads = BackgroundThreads("bg-test", 1, nice=5)
    try:
        mine = await trio.to_thread.run_sync(niceness)
        assert await threads.run_sync(niceness) == min(19, mine + 5)
        assert await threads.run_sync(niceness) == min(
            19, mine + 5
        )  # once per thread, not per call
        # trio's cached worker threads, which also run the styling, keep their priority.
        assert await trio.to_thread.run_sync(niceness) == mine
    finally:
        threads.close()


async def test_background_threads_return_results_and_raise_errors() -> None:
    threads = BackgroundThreads("bg-test", 2)
    limiter = trio.CapacityLimiter(1)
    try:
        assert await threads.run_sync(pow, 2, 10, limiter=limiter) == 1024
        with pytest.raises(ZeroDivisionError):
            await threads.run_sync(divmod, 1, 0)
        assert threading.current_thread().name != "bg-test"
        names = await threads.run_sync(lambda: threading.current_thread().name)
        assert names.startswith("bg-test")
    finally:
        threads.close()
