import gc
import weakref

import pytest

from ember.engine.frozen_heap import frozen_heap


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def test_full_collections_inside_skip_what_existed_and_everything_is_thawed_after():
    gc.unfreeze()  # a clean start whatever ran before in this process (a server thread freezes too)
    before = Node()
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        # frozen: in no generation a collection walks (unfrozen, a new object sits in generation 0)
        assert gc.is_tracked(before)
        assert all(o is not before for g in range(3) for o in gc.get_objects(generation=g))
        during = Node()
        gc.collect()
    assert gc.get_freeze_count() == 0
    refs = [weakref.ref(before), weakref.ref(during)]
    del before, during
    gc.collect()  # the cycles made before and inside are both collectable again
    assert [r() for r in refs] == [None, None]


def test_thaws_on_error_and_leaves_a_callers_freeze_or_disabled_collector_alone():
    gc.unfreeze()
    with pytest.raises(RuntimeError):
        with frozen_heap():
            raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen  # not thawed by us
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        with frozen_heap():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
