"""Keep Python's full garbage collections off the objects a process held before a long run.

A full (oldest-generation) collection walks every tracked object in the process. With torch,
transformers and Ember imported that is ~240k objects, ~90 ms on a 2-core CI box, and it runs
inside whichever engine step triggers it: the once-per-run 50-70 ms decode step seen in the
offline benchmark (benchmarks/NOTES.md). ``gc.freeze()`` moves what exists into a permanent
generation in O(1), so collections during the run walk only what the run allocates;
``gc.unfreeze()`` hands those objects back to the oldest generation afterwards, so nothing is
kept alive for good.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap for the block's duration. A freeze the caller made is left as it is."""
    if gc.get_freeze_count() > 0 or not gc.isenabled():  # the caller manages the collector
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
