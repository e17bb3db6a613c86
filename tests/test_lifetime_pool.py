"""`lifetime.child_pool`: an interrupted pool kills its running workers instead of waiting for them."""

from __future__ import annotations

import time

import pytest

from process_tree import wait_until_gone
from sparsealign.lifetime import child_pool, start_time


def test_an_interrupted_pool_kills_its_running_workers_at_once():
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), child_pool(2) as pool:
        futures = [pool.submit(time.sleep, 120) for _ in range(2)]
        while sum(f.running() for f in futures) < 2:  # both workers busy in their task
            time.sleep(0.05)
        workers = {pid: start_time(pid) for pid in pool._processes}
        raise KeyboardInterrupt  # what Ctrl-C raises in the parent while it waits on the futures
    assert time.monotonic() - t0 < 60  # ProcessPoolExecutor's own exit would wait the tasks' 120 s
    assert len(workers) == 2 and wait_until_gone(workers, within_s=10) == {}
    assert all(f.done() for f in futures)


def test_a_pool_that_ends_normally_returns_every_result():
    with child_pool(2) as pool:
        results = [f.result() for f in [pool.submit(pow, 2, k) for k in range(6)]]
    assert results == [1, 2, 4, 8, 16, 32]
