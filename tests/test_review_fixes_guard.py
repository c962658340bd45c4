"""Where the fault guard's exceptions land and what they say: a raw _thread thread, a queue
that overflowed, MappedFileError made by user code. Faults run in a subprocess with a
timeout and check its exit code."""
import copy
import os
import pickle

import pytest

import mmarray
from mmarray._compat import _dask_loads
from helpers import assert_clean_exit, run_python

posix_only = pytest.mark.skipif(os.name == "nt", reason="the fault guard is POSIX only")


@posix_only
def test_a_fault_in_a_raw_thread_raises_there_not_in_the_main_thread(tmp_path):
    """threading.enumerate() does not list a _thread.start_new_thread thread: its fault was
    raised in the main thread (/tmp/a6/t_rawthread.py)."""
    path = str(tmp_path / "rt.bin")
    proc = run_python(f"""
        import os, _thread, threading, time, mmarray
        path = {path!r}
        with open(path, "wb") as f:
            f.truncate(4096)
        m = mmarray.open(path, dtype="f8", mode="r")
        os.truncate(path, 0)
        done = threading.Event(); out = []
        def worker():
            try:
                float(m.array[0]); time.sleep(0.5); out.append("worker: silent")
            except mmarray.MappedFileError:
                out.append("worker: raised")
            done.set()
        _thread.start_new_thread(worker, ())
        try:
            done.wait(10); time.sleep(0.5); out.append("main: nothing")
        except mmarray.MappedFileError:
            out.append("main: raised"); done.wait(10)
        print(out)
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "['worker: raised', 'main: nothing']"


@posix_only
def test_fault_records_lost_to_a_full_queue_raise_in_the_main_thread(tmp_path):
    """Faults past the queue's 1024 records were dropped without a word, so a thread could
    read zeros with no exception (/tmp/a6/t_qoverflow4.py)."""
    d = str(tmp_path)
    proc = run_python(f"""
        import os, threading, time, ctypes, mmarray
        MB = 1 << 20
        pa, pb = {d!r} + "/a.bin", {d!r} + "/b.bin"
        with open(pa, "wb") as f: f.truncate(64 * MB)
        with open(pb, "wb") as f: f.truncate(256 * MB)
        ma = mmarray.open(pa, dtype="f8", mode="r")
        mb = mmarray.open(pb, dtype="f8", mode="r")
        ma.array[: 32 * MB // 8].sum(); mb.array[: 128 * MB // 8].sum()
        os.truncate(pa, 32 * MB)
        os.truncate(pb, 128 * MB)
        def reader_a():
            try:
                ma.array.sum(); time.sleep(0.5)
            except mmarray.MappedFileError:
                pass
        def reader_b(i):   # two threads faulting on alternate pages: a record each
            try:
                mb.array.reshape(-1, 512)[i::2].sum(); time.sleep(0.5)
            except mmarray.MappedFileError:
                pass
        threads = [threading.Thread(target=reader_b, args=(i,)) for i in range(2)]
        threads.append(threading.Thread(target=reader_a))
        for t in threads: t.start()
        time.sleep(0.0005)
        got = "nothing"
        try:
            ctypes.PyDLL(None).usleep(3_000_000)   # holds the GIL: the dispatcher waits
            time.sleep(1.0)
        except mmarray.MappedFileError as e:
            got = str(e)
        for t in threads: t.join()
        print("lost" if "fault record(s) were lost" in got else got)
        print(ma.faulted, mb.faulted)
    """, timeout=120)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    if lines and lines[0] == "nothing":
        pytest.skip("the readers did not outrun the dispatcher on this machine")
    assert lines == ["lost", "True True"]


@posix_only
def test_the_dispatcher_reports_lost_records_in_the_main_thread():
    proc = run_python("""
        import threading, time, mmarray
        from mmarray import _engine, _guard
        real = _engine.guard_lost
        _engine.guard_lost = lambda: 7
        got = []
        def other():
            _guard.dispatch()
        try:
            t = threading.Thread(target=other); t.start(); t.join()
            time.sleep(0.5)
        except mmarray.MappedFileError as e:
            got.append((isinstance(e, mmarray.MappedFileError), "7 fault record(s)" in str(e),
                        type(e).__name__, e.errno))
        print(got)
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "[(True, True, 'MappedFileError', 5)]"


def test_mapped_file_error_is_made_like_an_oserror():
    """MappedFileError(5, "m") failed (/tmp/a6/t_exc.py)."""
    error = mmarray.MappedFileError(5, "m")
    assert (error.errno, error.strerror, error.filename, error.range) == (5, "m", None, None)
    for again in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(again) is mmarray.MappedFileError
        assert (again.errno, again.strerror, again.range) == (5, "m", None)
    assert mmarray.MappedFileError().range is None
    assert isinstance(mmarray.MappedFileError(5, "m"), OSError)
    # OSError's own five-argument form still works: the last two are not a byte range
    odd = mmarray.MappedFileError(5, "m", "f", None, "g")
    assert (odd.filename, odd.filename2, odd.range) == ("f", "g", None)


@posix_only
def test_a_mapped_file_error_made_by_user_code_takes_no_pending_fault():
    import threading

    from mmarray import _guard
    ident = threading.get_ident()
    with _guard._lock:
        _guard._pending[ident] = [("/x", 4096, 8192)]
    try:
        made = mmarray.MappedFileError()
        assert made.range is None and made.filename is None
        assert _guard._pending.get(ident) == [("/x", 4096, 8192)]
    finally:
        _guard._pending.pop(ident, None)


@pytest.mark.parametrize("frames, kind", [([], ValueError), ([b"garbage"], ValueError),
                                          ([pickle.dumps(42)], TypeError),
                                          ([b"a", b"b"], ValueError), (None, ValueError)])
def test_dask_loads_refuses_empty_or_tampered_frames(frames, kind):
    with pytest.raises(kind):
        _dask_loads({}, frames)
