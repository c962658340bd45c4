"""Resizes racing other threads (hostile review, session 20): the checks a resize makes before
it moves the view must still hold when it moves it. Each case makes the other thread act at
the worst moment deterministically: ``os.fstat``, which the resize calls with the GIL released
between its checks and the move, is wrapped to run the other thread's call to completion
right there. Each runs in a subprocess with a timeout and checks its exit code (the old code
crashed with SIGSEGV or SIGBUS, or lost writes)."""
import pytest

from helpers import assert_clean_exit, run_python

pytestmark = pytest.mark.skipif("sys.platform == 'win32'")

# Runs `action()` in another thread, to completion, the first time os.fstat is called once
# armed; records what it raised. The engine calls os.fstat through the os module, so the
# wrapper sees its calls too.
HOOK = """
import os, threading
_real_fstat = os.fstat
hook = {"action": None, "error": None, "ran": False}
def _fstat(fd):
    action, hook["action"] = hook["action"], None
    if action is not None:
        def run():
            try:
                action()
            except BaseException as exc:
                hook["error"] = exc
        t = threading.Thread(target=run)
        t.start()
        t.join(60)
        assert not t.is_alive()
        hook["ran"] = True
    return _real_fstat(fd)
os.fstat = _fstat
"""


def _run(code):
    proc = run_python(HOOK + code, timeout=120, env={"MMARRAY_FAULT_GUARD": "0"})
    assert_clean_exit(proc)
    assert "ok" in proc.stdout, proc.stdout + proc.stderr
    return proc


def test_pin_taken_by_another_thread_during_resize_is_refused_and_exports_stay_counted(
        tmp_path):
    """A pin (chunks(drop_behind=...)) taken while the resize had the GIL released moved
    with the exports to the retired view: its release drove the count to -1, and close()
    then unmapped under a live array (SIGSEGV)."""
    _run(f"""
import mmarray
from mmarray import _engine
m = mmarray.open({str(tmp_path / "p.bin")!r}, dtype="u1", mode="w+", shape=1 << 16)
pins = []
hook["action"] = lambda: pins.append(_engine._Pin(m))
m.resize(1 << 17)
assert hook["ran"]
assert isinstance(hook["error"], BufferError), hook["error"]
for pin in pins:
    pin.release()
assert m.exports == 0, m.exports
a = m.array
m.close()
assert m.exports == 1
assert int(a[-1]) == 0 and a.shape == (1 << 17,)
del a
st = os.stat({str(tmp_path / "p.bin")!r})
assert _engine.live_views(st.st_dev, st.st_ino) == 0
print("ok")
""")


def test_populating_loop_running_during_a_shrinking_resize_keeps_its_view(tmp_path):
    """A populating loop (prefetch, chunks) that started while a shrinking resize had the GIL
    released kept reading through the moved, smaller view past its end (SIGSEGV)."""
    _run(f"""
import time, threading
import mmarray
from mmarray import _engine
m = mmarray.open({str(tmp_path / "s.bin")!r}, dtype="u1", mode="w+", shape=64 << 20)
n = 64 << 20
loop = _engine._PopulateAhead(m, 0, n, 1 << 20, 1 << 20)
threads, outcome = [], []
def run_loop():
    try:
        loop.run()
        outcome.append(None)
    except BaseException as exc:
        outcome.append(exc)
def start():
    t = threading.Thread(target=run_loop)
    t.start()
    threads.append(t)
    time.sleep(0.05)            # the loop holds the region while it waits for a consumer
hook["action"] = start
try:
    m.resize(4096)
    resized = True
except BufferError:
    resized = False
loop.advance(1 << 20)           # the loop reads its next window, past byte 4096
time.sleep(0.2)
loop.advance(n)
threads[0].join(60)
assert not threads[0].is_alive()
# Either the loop was refused (BufferError: another thread is resizing) or the resize was.
assert resized == isinstance(outcome[0], BufferError), (resized, outcome)
m.close()
print("ok")
""")


def test_array_taken_during_a_truncating_resize_blocks_the_truncation(tmp_path):
    """An array taken while resize(truncate=True) had the GIL released (between its checks
    and the ftruncate) kept the full view over the cut part (SIGBUS with the guard off)."""
    path = str(tmp_path / "t.bin")
    _run(f"""
import mmarray
m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=1 << 16)
m.array[:] = 5
arrays = []
hook["action"] = lambda: arrays.append(m.array)
try:
    m.resize(4096, truncate=True)
    raised = None
except BufferError as exc:
    raised = exc
assert hook["ran"] and arrays
assert raised is not None and "alive" in str(raised), raised
assert os.path.getsize({path!r}) == 1 << 16
a = arrays.pop()
assert int(a[-1]) == 5 and int(a.sum()) == 5 << 16
del a
m.resize(4096, truncate=True)   # with no array alive it cuts
assert os.path.getsize({path!r}) == 4096
m.close()
print("ok")
""")


def test_second_resize_from_another_thread_is_refused_while_one_runs(tmp_path):
    """A grow from another thread completed between a truncating resize's move and its
    ftruncate: the mapping ended 48 KiB past the end of its file."""
    path = str(tmp_path / "two.bin")
    _run(f"""
import mmarray
from mmarray import _engine
m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=1 << 16)
_real_ftruncate = os.ftruncate
armed = [True]
def _ftruncate(fd, length):
    if armed and armed.pop():
        hook["action"] = lambda: m.resize(1 << 16)
        os.fstat(fd)            # runs the other thread's grow now
    return _real_ftruncate(fd, length)
os.ftruncate = _ftruncate
m.resize(1 << 14, truncate=True)
assert hook["ran"]
assert isinstance(hook["error"], BufferError), hook["error"]
assert m._mapped_length() <= os.path.getsize({path!r}), (m._mapped_length(),
                                                         os.path.getsize({path!r}))
assert m.shape == (1 << 14,)
m.close()
print("ok")
""")


def test_npy_rewrite_with_room_is_not_left_half_done_by_another_thread(tmp_path):
    """A .npy whose header had no room was copied and renamed over its name, then the move
    to the copy was refused because another thread held the mapping: the Mapping kept
    writing into the old, unlinked file."""
    path = str(tmp_path / "a.npy")
    _run(f"""
import threading, time
import numpy as np
import mmarray
from mmarray import _engine
a = np.arange(1000, dtype="f8")
header = b"{{'descr':'<f8','fortran_order':False,'shape':(1000,)}}" + bytes([10])
assert 10 + len(header) == 64  # a header exactly 64 bytes: no room to grow
with open({path!r}, "wb") as f:
    f.write(bytes([0x93]) + b"NUMPY" + bytes([1, 0]) + len(header).to_bytes(2, "little")
            + header)
    f.write(a.tobytes())
m = mmarray.load({path!r}, mode="r+")
loop = _engine._PopulateAhead(m, 0, 8000, 4096, 4096)
outcome = []
def hold():                     # holds the region (waits for a consumer) unless refused
    def run():
        try:
            loop.run()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.05)
hook["action"] = hold
m.resize(1001)                  # needs the rewrite with room
assert hook["ran"]
loop.cancel()
time.sleep(0.1)
assert outcome and isinstance(outcome[0], BufferError), outcome
m.array[:5] = -1
m.flush()
got = np.load({path!r})
assert got.shape == (1001,) and got[:5].tolist() == [-1.0] * 5, got[:6]
m.close()
print("ok")
""")


def test_npy_grow_refuses_bytes_after_the_data_and_leaves_the_file(tmp_path):
    """Two arrays saved into one file (np.save twice): growing the first took the second's
    header as rows and destroyed it."""
    import os

    import numpy as np

    import mmarray
    path = str(tmp_path / "two.npy")
    with open(path, "wb") as f:
        np.save(f, np.arange(6.0).reshape(3, 2))
        np.save(f, np.ones(4))
    before = open(path, "rb").read()
    m = mmarray.load(path, mode="r+")
    with pytest.raises(ValueError, match=r"bytes after the array's data"):
        m.resize(5)
    m.close()
    assert open(path, "rb").read() == before
    with open(path, "rb") as f:
        assert np.load(f).shape == (3, 2)
        assert np.load(f).tolist() == [1.0] * 4
    assert os.path.getsize(path) == len(before)


def test_npy_grow_after_shrink_without_truncate_does_not_bring_old_rows_back(tmp_path):
    import numpy as np

    import mmarray
    path = str(tmp_path / "s.npy")
    np.save(path, np.arange(1.0, 5.0))
    m = mmarray.load(path, mode="r+")
    m.resize(2)                  # the file keeps rows 3 and 4 after the data
    with pytest.raises(ValueError, match=r"16 bytes after the array's data"):
        m.resize(4)
    m.resize(2, truncate=False)
    m.close()
    assert np.load(path).tolist() == [1.0, 2.0]


def test_resize_mark_is_stale_in_a_forked_child(tmp_path):
    """A child forked while another thread resizes has no such thread: flush, pins and
    resizes work there."""
    path = str(tmp_path / "f.bin")
    _run(f"""
import sys
import mmarray
from mmarray import _engine
m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=1 << 16)
def fork_and_check():
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            m.flush()
            _engine._Pin(m).release()
            m.resize(1 << 15)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    hook["child"] = status
hook["action"] = fork_and_check
m.resize(1 << 17)
assert hook["ran"] and hook["error"] is None, hook["error"]
assert hook["child"] == 0, hook["child"]
m.close()
print("ok")
""")


@pytest.mark.skipif("not hasattr(__import__('os'), 'fork')")
def test_npy_resize_waits_for_an_append_holding_the_file_lock(tmp_path):
    """A resize and an append_npy of one .npy must not interleave (both rewrite its header):
    the resize takes the append's lock."""
    import fcntl
    import os
    import threading
    import time

    import numpy as np

    import mmarray
    path = str(tmp_path / "l.npy")
    np.save(path, np.arange(4.0))
    m = mmarray.load(path, mode="r+")
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)   # what append_npy holds while it appends
    done = threading.Event()
    errors = []

    def resize():
        try:
            m.resize(6)
        except BaseException as exc:
            errors.append(exc)
        done.set()
    t = threading.Thread(target=resize)
    t.start()
    try:
        time.sleep(0.3)
        assert not done.is_set(), "the resize did not wait for the lock"
    finally:
        os.close(holder)                 # releases the lock
    t.join(30)
    assert done.is_set() and not errors, errors
    m.close()
    assert np.load(path).tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, 0.0]


def test_npy_resize_after_a_rewrite_with_room_does_not_wait_for_its_own_lock(tmp_path):
    """The rewrite with room locks the copy and the mapping moves to it: the mapping kept the
    copy's open file description, so closing the descriptor left the flock held and the next
    resize of the same mapping waited for ever."""
    path = str(tmp_path / "r.npy")
    _run(f"""
import numpy as np
import mmarray
header = b"{{'descr':'<f8','fortran_order':False,'shape':(1000,)}}" + bytes([10])
with open({path!r}, "wb") as f:
    f.write(bytes([0x93]) + b"NUMPY" + bytes([1, 0]) + len(header).to_bytes(2, "little")
            + header + np.arange(1000.0).tobytes())
m = mmarray.load({path!r}, mode="r+")
m.resize(1001)                  # no room: rewritten, the mapping moves to the copy
m.resize(1002)
mmarray.append_npy({path!r}, np.ones(1))
m.close()
assert np.load({path!r}).shape == (1003,)
print("ok")
""")


def test_npy_grow_interrupted_after_the_view_grew_still_writes_the_header(tmp_path,
                                                                           monkeypatch):
    """A KeyboardInterrupt between the grow of the view and the header write left the header
    saying fewer rows than the mapping had: later resizes were refused and rows written past
    the header were not what np.load read."""
    import numpy as np

    import mmarray
    from mmarray import _npy
    path = str(tmp_path / "i.npy")
    np.save(path, np.arange(8.0).reshape(4, 2))
    m = mmarray.load(path, mode="r+")
    real = _npy._fmt.pwrite
    calls = []

    def interrupted(fd, data, pos):
        calls.append(pos)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(fd, data, pos)
    monkeypatch.setattr(_npy._fmt, "pwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        m.resize(6)
    monkeypatch.setattr(_npy._fmt, "pwrite", real)
    assert m.shape == (6, 2)
    m.array[5] = 7.0
    m.flush()
    assert np.load(path).shape == (6, 2) and np.load(path)[5].tolist() == [7.0, 7.0]
    m.resize(7)
    m.close()
    assert np.load(path).shape == (7, 2)
