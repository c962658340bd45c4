"""Mappings are deallocated by the engine's Region deallocator (_engine.set_region_dealloc),
not by CPython's generic one for classes: what that one does must still happen."""
import gc
import sys
import weakref

import pytest

import mmarray
from mmarray import _api, _engine
from helpers import assert_clean_exit, mapped_regions, run_python


def _prints_ok(code):
    """Run ``code`` in a fresh interpreter: it must exit cleanly, having printed "ok"."""
    proc = run_python(code, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok", proc.stdout


def test_set_region_dealloc_refuses_a_class_without_regions_layout():
    class WithDict(_engine.Region):   # a __dict__ of its own
        pass

    class WithSlot(mmarray.Mapping):
        __slots__ = ("extra",)

    class WithWeakref(_engine.Region):
        __slots__ = ()

    class Meta(type):
        pass

    WithMeta = Meta("WithMeta", (mmarray.Mapping,), {"__slots__": ("extra",)})
    for cls in (_engine.Region, WithDict, WithSlot, WithMeta, int, type("Other", (), {}), 5):
        with pytest.raises(TypeError, match="Region's layout"):
            _engine.set_region_dealloc(cls)
    _engine.set_region_dealloc(WithWeakref)          # Region's layout: taken
    _engine.set_region_dealloc(mmarray.Mapping)      # again: nothing changes


def _opened_as(cls, path, n):
    _engine.set_fast_open(_api._FAST_MODES, _api._dtype_cache, cls, _api._abspath, True,
                          True, _api._general_open)
    try:
        for _ in range(n):
            m = mmarray.open(str(path), mode="r")
            assert type(m) is cls
            a = m.array
            m.close()
            del a, m
    finally:
        _api.install_fast_open()


@pytest.mark.parametrize("kind", ["Mapping", "subclass", "subclass with a dict"])
def test_each_mapping_gives_back_its_reference_to_its_class(data, kind):
    if kind == "Mapping":
        cls = mmarray.Mapping
    elif kind == "subclass":
        cls = type("Sub", (mmarray.Mapping,), {"__slots__": ()})
    else:
        cls = type("SubDict", (mmarray.Mapping,), {})
    _opened_as(cls, data, 10)
    before = sys.getrefcount(cls)
    _opened_as(cls, data, 1000)
    assert sys.getrefcount(cls) == before
    assert not mapped_regions(data)


def test_a_subclass_instance_dict_and_weak_references_go_with_it(data):
    class SubDict(mmarray.Mapping):
        pass

    class Payload:
        pass

    _engine.set_fast_open(_api._FAST_MODES, _api._dtype_cache, SubDict, _api._abspath, True,
                          True, _api._general_open)
    try:
        m = mmarray.open(str(data), mode="r")
    finally:
        _api.install_fast_open()
    m.payload = payload = Payload()
    gone = []
    ref = weakref.ref(m, lambda r: gone.append(True))
    watch = weakref.ref(payload)
    del payload, m
    assert ref() is None and gone == [True] and watch() is None
    assert not mapped_regions(data)


def test_a_cycle_through_the_format_field_is_collected_and_unmapped(data):
    m = mmarray.open(str(data), mode="r")
    m._format = (m,)                                  # a cycle the collector must see
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
    assert not mapped_regions(data)


def test_a_del_set_on_mapping_runs_and_may_resurrect(data):
    # In a subprocess: the finalizer is set on mmarray.Mapping itself.
    _prints_ok(f"""
        import gc, mmarray
        kept = []
        def finalizer(self):
            kept.append(self) if not kept else None
        mmarray.Mapping.__del__ = finalizer
        m = mmarray.open({str(data)!r}, mode="r")
        total = int(m.array.sum())
        del m                                    # resurrected by __del__
        assert len(kept) == 1 and int(kept[0].array.sum()) == total
        assert not kept[0].closed
        kept.clear()                             # the second time: __del__ ran already
        del mmarray.Mapping.__del__
        for _ in range(1000):
            m = mmarray.open({str(data)!r}, mode="r")
            m.__class__                          # and dropped
        del m
        gc.collect()
        print("ok")
    """)


def test_class_assignment_between_mapping_classes_deallocates_cleanly(data):
    _prints_ok(f"""
        import sys, mmarray
        class Sub(mmarray.Mapping):
            __slots__ = ()
        before = (sys.getrefcount(mmarray.Mapping), sys.getrefcount(Sub))
        for _ in range(500):
            m = mmarray.open({str(data)!r}, mode="r")
            m.__class__ = Sub
            a = m.array
            m.__class__ = mmarray.Mapping
            m.close()
            del m, a
        assert (sys.getrefcount(mmarray.Mapping), sys.getrefcount(Sub)) == before, before
        print("ok")
    """)


def test_a_del_that_assigns_class_leaves_both_classes_references_balanced():
    # Helper-72: the class was read before __del__ ran and assigned __class__: the old class
    # lost a reference per object and the new one kept one, until the old one was freed
    # while in use (SIGSEGV).
    _prints_ok("""
        import sys
        import mmarray
        from mmarray._npy import NpyMapping
        Mapping = mmarray.Mapping
        Mapping.__del__ = lambda self: setattr(self, "__class__", NpyMapping)
        before = (sys.getrefcount(Mapping), sys.getrefcount(NpyMapping))
        for _ in range(200):
            Mapping.__new__(Mapping)
        assert (sys.getrefcount(Mapping), sys.getrefcount(NpyMapping)) == before, before
        print("ok")
    """)


def test_a_long_chain_of_mappings_through_their_fields_is_freed_without_recursion():
    # Helper-72: each Mapping freed the next from its own deallocator, a C recursion as deep
    # as the chain (SIGSEGV at 100,000); the trashcan frees it iteratively.
    _prints_ok("""
        import mmarray
        Mapping = mmarray.Mapping
        head = None
        for _ in range(300000):
            m = Mapping.__new__(Mapping)
            m._format = head
            head = m
        del m, head
        print("ok")
    """)
