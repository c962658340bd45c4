"""chunks(drop_behind=...) while another thread closes the mapping: the loop's releases of
the rows it passed stop quietly ("closed meanwhile: its pages go with it"), and only then."""
import os
import time

import numpy as np
import pytest

import mmarray
from mmarray import _access
from helpers import assert_clean_exit, run_python


class _ClosingProxy:
    """A mapping whose ``_flush_checked`` (msync and its checks) is followed by another
    thread's close(): the moment msync releases the GIL in the real race."""

    def __init__(self, mapping, after="_flush_checked", error=None):
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


# -- the page-cache drop reopens the file by name (helper-57) ---------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
@pytest.mark.parametrize("call", ["m.evict()",
                                  "for c in m.chunks(1 << 18, drop_behind='cache'): pass"])
def test_page_cache_drop_skips_a_name_that_now_leads_to_a_fifo(tmp_path, call):
    """A blocking open(O_RDONLY) of the name, now a FIFO, waited for a writer for ever."""
    proc = run_python(f"""
        import os
        import mmarray
        p = {str(tmp_path / "a.bin")!r}
        m = mmarray.open(p, mode="w+", shape=1 << 20)
        m.array[:] = 1
        os.rename(p, p + ".old")
        os.mkfifo(p)
        {call}
        assert int(m.array.sum()) == 1 << 20
        m.close()
        # removed, then a FIFO made at the name: it may get the file's inode number
        os.unlink(p)
        os.rename(p + ".old", p)
        m = mmarray.open(p, mode="r+")
        os.unlink(p)
        os.mkfifo(p)
        {call}
        assert int(m.array.sum()) == 1 << 20
        m.close()
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


@pytest.mark.parametrize("replacement", ["symlink loop", "not a directory", "another file"])
def test_evict_does_nothing_to_the_cache_of_a_name_that_leads_elsewhere(tmp_path, replacement):
    """A name that no longer opens (ELOOP, ENOTDIR) raised a raw OSError after the flush and
    the advice were done; one that leads to another file had that file's cache dropped."""
    sub = tmp_path / "d"
    sub.mkdir()
    path = sub / "a.bin"
    m = mmarray.open(path, mode="w+", shape=1 << 16)
    m.array[:] = 3
    if replacement == "symlink loop":
        os.unlink(path)
        os.symlink(path, path)
    elif replacement == "not a directory":
        os.rename(sub, tmp_path / "d.old")
        (tmp_path / "d").write_bytes(b"x")
    else:
        os.rename(path, tmp_path / "moved.bin")
        with open(path, "wb") as f:  # clean pages in the cache: what the drop would drop
            f.write(b"y" * 4096)
            f.flush()
            os.fsync(f.fileno())
    m.evict()
    assert int(m.array.sum()) == 3 << 16
    m.close()
    if replacement == "another file":
        with mmarray.open(path, mode="r") as other:
            assert other.resident() == 1.0  # its cached page was left alone


@pytest.mark.parametrize("call", [
    "m.evict()",
    "for c in m.chunks(16, drop_behind=True, prefetch=False): pass",
    "for c in m.chunks(16, drop_behind='cache', prefetch=False): pass",  # no populator faults
])
def test_release_of_written_rows_reports_writes_lost_to_a_truncation(tmp_path, call):
    """evict() and chunks(drop_behind=...) flush what they release, and said nothing when
    another process had truncated the file below it, where flush() raises."""
    path = tmp_path / "a.bin"
    m = mmarray.open(path, mode="w+", shape=(256, 4096))
    m.array[:] = 9
    os.truncate(path, 128 * 4096)   # as another process would
    with pytest.raises(mmarray.MappedFileError, match="past the end of the file") as info:
        exec(call, {"m": m})
    assert info.value.range[0] == 128 * 4096, info.value.range
    m.close()


def test_chunks_set_up_while_another_thread_resizes_agrees_with_its_array(tmp_path):
    """chunks() read the array, the shape and the byte ranges at separate moments: a resize
    in between gave a ValueError from a valid loop, empty chunks, or rows never visited."""
    proc = run_python(f"""
        import sys, threading, time
        import mmarray
        sys.setswitchinterval(1e-6)
        m = mmarray.open({str(tmp_path / "a.bin")!r}, mode="w+", shape=(256, 1024))
        stop = False
        def resizer():
            i = 0
            while not stop:
                try:
                    m.resize((128 if i % 2 else 256, 1024))
                    i += 1
                except BufferError:
                    pass
        th = threading.Thread(target=resizer)
        th.start()
        bad, loops, end = [], 0, time.monotonic() + 4
        while time.monotonic() < end:
            try:
                seen, total = 0, None
                for c in m.chunks(16, prefetch=loops % 2 == 0):
                    total = c.base.shape[0] if total is None else total
                    assert c.shape[0] > 0, "an empty chunk"
                    seen += c.shape[0]
                if total is not None and seen != total:
                    bad.append(f"{{seen}} of {{total}} rows")
                loops += 1
            except BufferError:
                pass
            except (ValueError, AssertionError) as exc:
                bad.append(repr(exc))
        stop = True
        th.join()
        assert not bad, bad[:3]
        assert loops > 0
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


@pytest.mark.parametrize("shape", [(), (4, 4)])
@pytest.mark.parametrize("call, name", [
    ("m.flush(2.0)", "start"), ("m.resident(1.5)", "start"), ("m.prefetch([1])", "start"),
    ("m.evict(None, 'q')", "stop"), ("m.advise('normal', 'x')", "start"),
])
def test_row_bounds_that_are_not_integers_are_type_errors_naming_them(tmp_path, shape, call,
                                                                      name):
    """A 0-d mapping took any start/stop, and flush() in modes 'r' and 'c' returned before
    looking at them; elsewhere the message did not name the argument."""
    path = tmp_path / "a.bin"
    with mmarray.open(path, mode="w+", shape=(4, 4)):
        pass
    for mode in ("r", "r+", "c"):
        with mmarray.open(path, mode=mode, shape=shape) as m:
            if mode == "c" and "evict" in call:
                continue  # evict() refuses mode 'c' first
            with pytest.raises(TypeError, match=f"{name} must be an integer row index or "
                                                f"None, got"):
                exec(call, {"m": m})


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 2.5}, "rows must be a positive number of rows per chunk, got float 2.5"),
    ({"rows": 2, "ahead": 1.0}, "ahead must be a number of chunks >= 1, got float 1.0"),
])
def test_chunk_counts_that_are_not_integers_are_type_errors_naming_them(tmp_path, kwargs,
                                                                        message):
    with mmarray.open(tmp_path / "a.bin", mode="w+", shape=(4, 4)) as m:
        with pytest.raises(TypeError, match=message.replace(".", r"\.")):
            next(m.chunks(**kwargs))


@pytest.mark.parametrize("stop", ["m.close()", "handle.cancel()"])
def test_close_or_cancel_stops_a_running_prefetch(tmp_path, stop):
    """A prefetch went on reading the whole range (4 GiB: about 10 s) after close(), the
    mapping kept mapped and unresizable meanwhile, and its handle had no way to stop it."""
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(2 << 30)
    try:
        m = mmarray.open(path, mode="r")
        handle = m.prefetch()
        time.sleep(0.05)
        exec(stop, {"m": m, "handle": handle})
        started = time.monotonic()
        assert handle.wait(timeout=30)
        waited = time.monotonic() - started
        with mmarray.open(path, mode="r") as again:
            resident = again.resident()
        m.close()
        assert resident < 0.5, (resident, waited)
    finally:
        os.unlink(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("loop", ["prefetch", "chunks", "chunks drop_behind"])
def test_child_forked_while_another_thread_runs_a_loop_can_resize_and_close(tmp_path, loop):
    """helper-58: the loop's pin (taken by a thread the child does not have) stayed counted
    in the child: resize() and close(strict=True) refused there for good."""
    proc = run_python(f"""
        import os, threading, time
        import mmarray
        p = {str(tmp_path / "x.bin")!r}
        with open(p, "wb") as f:
            f.truncate(1 << 30)          # sparse: a prefetch of it takes a while
        m = mmarray.open(p, mode="r+", shape=(16384, 65536))
        go, forked = threading.Event(), threading.Event()
        loop = {loop!r}
        if loop == "prefetch":
            handle = m.prefetch()
            time.sleep(0.05)
        else:
            def scan():
                for i, c in enumerate(m.chunks(16, drop_behind=loop.endswith("behind"))):
                    if i == 2:
                        go.set()
                        forked.wait()
                        return
            t = threading.Thread(target=scan)
            t.start()
            go.wait()
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(20)
            m.resize((10, 65536))
            # The scanning thread's frame, gone with it, still holds its chunks in the child:
            # only the prefetch leaves no export behind.
            m.close(strict=loop == "prefetch")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        forked.set()
        if loop == "prefetch":
            handle.cancel()
            handle.wait()
        else:
            t.join()
        m.close()
        print(os.waitstatus_to_exitcode(status))
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"]
