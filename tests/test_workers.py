"""maillab.workers: blocking calls on worker threads, results back on the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from maillab.workers import Workers


def test_results_exceptions_and_a_burst_settle_on_the_loop() -> None:
    pool = Workers(4, "test-workers")

    async def main() -> None:
        loop_thread = threading.get_ident()
        threads: set[int] = set()

        def job(n: int) -> int:
            threads.add(threading.get_ident())
            time.sleep(0.001)
            return n * n

        # more jobs than threads, finishing while the loop is busy: every one settles
        assert await asyncio.gather(*(pool.run(job, n) for n in range(200))) == [n * n for n in range(200)]
        assert loop_thread not in threads and 1 <= len(threads) <= 4

        def fails() -> None:
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            await pool.run(fails)

        # a task cancelled while its job runs: the job still ends, nothing breaks
        done = threading.Event()

        def slow() -> None:
            time.sleep(0.05)
            done.set()

        task = asyncio.ensure_future(pool.run(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        assert await pool.run(lambda: done.wait(5))

    asyncio.run(main())
    # a second loop uses the same threads
    assert asyncio.run(_one(pool)) == 3


async def _one(pool: Workers) -> int:
    return await pool.run(len, "abc")
