"""chunks(drop_behind=...) while another thread closes the mapping: the loop's releases of
the rows it passed stop quietly ("closed meanwhile: its pages go with it"), and only then."""
import numpy as np
import pytest

import mmarray
from mmarray import _access
from helpers import assert_clean_exit, run_python


class _ClosingProxy:
    """A mapping whose ``_flush_bytes`` is followed by another thread's close(): the moment
    msync releases the GIL in the real race."""

    def __init__(self, mapping, after="_flush_bytes", error=None):
        self._mapping = mapping
        self._after = after
        self._error = error

    def __getattr__(self, name):
        attr = getattr(self._mapping, name)
        if name != self._after:
            return attr

        def call(*args):
            if self._error is not None:
                raise self._error
            result = attr(*args)
            self._mapping.close()
            return result
        return call


@pytest.fixture
def writable(tmp_path):
    path = tmp_path / "c.f4"
    with mmarray.open(path, dtype="f4", mode="w+", shape=(64, 1024)) as m:
        m.array[:] = 1
    m = mmarray.open(path, dtype="f4", mode="r+", shape=(64, 1024))
    yield m
    m.close()


def test_drop_behind_is_quiet_when_the_mapping_closes_during_the_release(writable):
    """Audit c02: _Dropper.drop checked `closed` once, then msync (GIL released) let another
    thread close the mapping and madvise raised ValueError('mapping is closed')."""
    dropper = _access._Dropper(writable, cache=False)
    try:
        dropper.mapping = _ClosingProxy(writable)
        dropper.drop(0, 8)  # closes the mapping between the flush and the advice
        assert writable.closed
        dropper.drop(8, 16)  # closed before: nothing to do
    finally:
        dropper.pin.release()


def test_drop_behind_lets_other_value_errors_through(writable):
    dropper = _access._Dropper(writable, cache=False)
    try:
        dropper.mapping = _ClosingProxy(writable, error=ValueError("some other failure"))
        with pytest.raises(ValueError, match="some other failure"):
            dropper.drop(0, 8)
        # 'mapping is closed' from a mapping that is not closed is a real error too
        dropper.mapping = _ClosingProxy(writable, error=ValueError("mapping is closed"))
        with pytest.raises(ValueError, match="mapping is closed"):
            dropper.drop(0, 8)
        assert not writable.closed
    finally:
        dropper.pin.release()


def test_chunks_drop_behind_with_a_concurrent_close_does_not_raise(tmp_path):
    """The real race, many times over (it raised in about 1% of the loops before): a close()
    from a timer thread during chunks(8, drop_behind=True) never makes the loop's release of
    the passed rows raise. (A close before the loop starts raises at its first chunk, as
    chunks() of a closed mapping does: those are told apart by their traceback.)"""
    proc = run_python(f"""
        import os, random, threading, time, traceback
        import mmarray
        p = {str(tmp_path / "c.f4")!r}
        with mmarray.open(p, dtype="f4", mode="w+", shape=(512, 1024)) as m:
            m.array[:] = 1
        from_drop = loops = 0
        stop = time.monotonic() + 6
        while time.monotonic() < stop:
            m = mmarray.open(p, dtype="f4", mode="r+", shape=(512, 1024))
            t = threading.Timer(random.random() * 0.002, m.close)
            t.start()
            loops += 1
            try:
                for c in m.chunks(8, drop_behind=True):
                    c[0, 0] += 1
            except ValueError as e:
                names = [f.name for f in traceback.extract_tb(e.__traceback__)]
                if "drop" in names or "_drop" in names:
                    from_drop += 1
                    traceback.print_exc()
            t.join()
        print(loops, from_drop)
        assert from_drop == 0, from_drop
    """, timeout=120)
    assert_clean_exit(proc)
    loops, from_drop = map(int, proc.stdout.split())
    assert loops > 100 and from_drop == 0


def test_chunks_drop_behind_still_works(writable):
    total = sum(float(np.asarray(c).sum()) for c in writable.chunks(8, drop_behind=True))
    assert total == 64 * 1024
