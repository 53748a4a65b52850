"""The server's engine thread, with a stand-in engine (no model)."""

import gc
import threading

from ember.server.async_engine import AsyncEngine


class CountingEngine:
    """Has work for a few steps; records whether the heap was frozen at each."""

    def __init__(self, steps: int):
        self.steps_left = steps
        self.frozen_at_step: list[bool] = []
        self.done = threading.Event()

    def stats(self) -> dict:
        return {}

    def has_unfinished(self) -> bool:
        return self.steps_left > 0

    def step(self) -> list:
        self.frozen_at_step.append(gc.get_freeze_count() > 0)
        self.steps_left -= 1
        if self.steps_left == 0:
            self.done.set()
        return []


def test_engine_thread_steps_with_the_heap_frozen_and_thaws_at_shutdown():
    gc.unfreeze()  # a clean start whatever ran before in this process
    engine = CountingEngine(steps=3)
    async_engine = AsyncEngine(engine, max_num_seqs=4, max_queue=4)
    async_engine.start()
    assert engine.done.wait(10)
    async_engine.shutdown()
    assert not async_engine.is_alive
    assert engine.frozen_at_step == [True, True, True]
    assert gc.get_freeze_count() == 0
