"""The fault guard and threads: a MappedFileError raised asynchronously must reach the thread
that faulted, once per run of faults, without hanging a thread that starts another one or a
thread pool whose task faulted. Each case runs in a subprocess with a timeout (a watchdog
inside it reports a stuck thread with exit code 2) and checks its exit code."""
import os
import subprocess

import pytest

from helpers import assert_clean_exit, run_python

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fault guard is POSIX only")

# A thread that faults (one element read with the GIL held: the exception comes later) and
# then starts a thread: prefetch() and chunks() start one at once. On CPython 3.11 the
# exception went to the thread being started (its state still had the ident of the thread
# starting it), which died before saying it started: Thread.start() waited for ever.
START_AFTER_FAULT = """
import os, sys, threading, time, faulthandler, _thread
import mmarray
from mmarray import _engine, _guard

d = {d!r}
other = os.path.join(d, "other.bin")
with mmarray.open(other, mode="w+", shape={other_size}):
    pass
m2 = mmarray.open(other, mode="r")
progress = [0, time.monotonic()]
caught = {{"A": 0, "other": [], "stray": []}}

def start_a_thread():
    {start}

def A():
    p = os.path.join(d, "t.bin")
    stop = time.monotonic() + {seconds}
    i = 0
    while time.monotonic() < stop:
        try:
            with open(p, "wb") as f:
                f.write(b"x" * 8192)
            m = mmarray.open(p, mode="r")
            os.truncate(p, 0)
            int(m.array[4096])          # faults: a zero page, the error comes asynchronously
            start_a_thread()
            for _ in range(50):
                pass
        except mmarray.MappedFileError as e:
            caught["A"] += 1
            assert e.range is not None and e.range[1] > e.range[0], e.range
        except BaseException as e:      # KeyError from inside Thread.start, for one
            caught["other"].append(repr(e))
            return
        i += 1
        progress[:] = [i, time.monotonic()]
    # the last fault's exception may still be on its way: let it come, here. The dispatcher
    # may hold it back while a thread start runs (up to _guard._START_WAIT, 2 s), longer on
    # a loaded machine: wait until no record is queued and none is pending for this thread.
    try:
        me = threading.get_ident()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                _engine.guard_recorded() > _engine.guard_taken() or _guard._pending.get(me)):
            time.sleep(0.01)
        for _ in range(1000):
            pass
    except mmarray.MappedFileError:
        caught["A"] += 1

threading.excepthook = lambda args: caught["stray"].append(
    f"{{args.thread.name}}: {{args.exc_type.__name__}}")

def unraisable(u):
    # The bug: the exception killed the new thread in Thread._bootstrap ("bytes 0 to 0": it
    # took no record). An asynchronous exception that fires inside a weakref callback or a
    # __del__ run by thread A is printed and dropped by CPython: a known limit (A misses that
    # one), not this bug.
    if "_bootstrap" in repr(u.object) or "bytes 0 to 0" in str(u.exc_value) or (
            "thread started by" in str(u.err_msg)):
        caught["stray"].append(f"unraisable: {{u.object!r}} {{u.exc_value!r}}")

sys.unraisablehook = unraisable
t = threading.Thread(target=A, daemon=True)
t.start()
while t.is_alive():
    time.sleep(0.2)
    if time.monotonic() - progress[1] > 10:
        print(f"HANG after {{progress[0]}} iterations: {{caught}}", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(2)
assert not caught["other"], caught
assert not caught["stray"], caught
assert caught["A"] > 0, caught
print("ok", progress[0], caught["A"])
"""


@pytest.mark.parametrize("start", [
    "m2.prefetch()",
    "for _ in m2.chunks(1024): pass",
    "threading.Thread(target=lambda: None).start()",
    "_thread.start_new_thread(lambda: None, ())",
])
def test_a_thread_that_faulted_can_start_a_thread(tmp_path, start):
    """Was a hang on CPython 3.11 (audit g01/g02): the MappedFileError killed the thread being
    started, in its bootstrap, and the faulting thread waited for ever in Thread.start()."""
    script = START_AFTER_FAULT.format(d=str(tmp_path), start=start, seconds=4,
                                      other_size=1 << 20 if "chunks" in start else 4096)
    proc = run_python(script, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("ok"), proc.stdout


# Three truncated ranges of one mapping read by one thread, one after another.
SECOND_FAULT = """
import os, time
import mmarray

p = {path!r}
with open(p, "wb") as f:
    f.write(b"\\1" * (1 << 20))
m = mmarray.open(p, dtype="u1", mode="r")
a = m.array
os.truncate(p, 4096)
got = []
for attempt in range(3):
    lo = 65536 * (attempt + 1)
    try:
        s = int(a[lo:lo + 4096].sum())
        time.sleep(0.3)                 # the exception's chance to come, in this statement
        got.append(("returned", s))
    except mmarray.MappedFileError as e:
        got.append(("raised", e.range))
expected = [("raised", (65536 * k, 65536 * k + 4096)) for k in (1, 2, 3)]
assert got == expected, got
assert m.faulted
print("ok")
"""


def test_each_later_fault_of_a_thread_raises_again(tmp_path):
    """Audit b3: after the first MappedFileError, later faults of the same thread in the same
    mapping read zeros silently (the C guard queued a fault only for a thread other than the
    last one, for good)."""
    proc = run_python(SECOND_FAULT.format(path=str(tmp_path / "t.bin")), timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


# One numpy call faulting on thousands of pages (a reduction that releases the GIL, so the
# dispatcher takes records while it still faults): one exception, none after it.
ONE_BURST = """
import os, time
import numpy as np
import mmarray

p = {path!r}
size = 96 << 20
with open(p, "wb") as f:
    f.truncate(size)
m = mmarray.open(p, dtype="u1", mode="r")
a = m.array
os.truncate(p, 4096)
raised = []
for attempt in range(3):
    lo = 4096 + attempt * (size // 3)
    try:
        np.add.reduce(a[lo:lo + size // 3 - 4096], dtype=np.uint64)  # ~8000 pages
        time.sleep(0.3)
    except mmarray.MappedFileError as e:
        raised.append(e.range)
        # the same run of faults must not raise again once caught
        try:
            for _ in range(5):
                time.sleep(0.1)
                sum(range(10000))
        except mmarray.MappedFileError as e2:
            raise SystemExit(f"a second exception for the same call: {{e2.range}}")
assert len(raised) == 3, raised
for attempt, (start, stop) in enumerate(raised):
    assert start == 4096 + attempt * (size // 3), raised
print("ok")
"""


def test_a_call_that_faults_on_many_pages_raises_once(tmp_path):
    """A run of faults of one C call gives one MappedFileError, also now that each later run
    raises again (the records of a run taken while it still faults are merged into the one
    exception)."""
    proc = run_python(ONE_BURST.format(path=str(tmp_path / "t.bin")), timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


# A pool task reads a truncated page and returns before the exception can come (it needs the
# GIL the task holds). It used to be raised in the pool's own loop, which ended the worker:
# the next future never completed.
POOL = """
import os, time, faulthandler
import mmarray

faulthandler.dump_traceback_later(60, exit=True)
p = {path!r}
with open(p, "wb") as f:
    f.write(b"\\1" * (1 << 20))
m = mmarray.open(p, dtype="u1", mode="r+")
a = m.array
os.truncate(p, 4096)
outcomes = []
{make_pool}
for k in range(1, 20):
    {submit_read}
    outcomes.append(result)
    time.sleep(0.1)
    {submit_next}
    assert nxt == "next done", nxt
    # the fault is known without an exception: the mapping says so
    assert m.faulted
assert set(outcomes) <= {{0, "raised"}}, outcomes
# flush() and close() of a writable mapping that faulted raise, synchronously
try:
    m.close()
except mmarray.MappedFileError:
    print("ok", outcomes.count("raised"), outcomes.count(0))
else:
    raise SystemExit("close() of a faulted writable mapping did not raise")
"""

FUTURES = dict(
    make_pool="from concurrent.futures import ThreadPoolExecutor\nex = ThreadPoolExecutor(1)",
    submit_read=("f = ex.submit(lambda: int(a[k * 8192]))\n"
                 "    try:\n        result = f.result(timeout=20)\n"
                 "    except mmarray.MappedFileError:\n        result = 'raised'"),
    submit_next='nxt = ex.submit(lambda: "next done").result(timeout=20)',
)
THREADPOOL = dict(
    make_pool="from multiprocessing.pool import ThreadPool\nex = ThreadPool(1)",
    submit_read=("f = ex.apply_async(lambda: int(a[k * 8192]))\n"
                 "    try:\n        result = f.get(timeout=20)\n"
                 "    except mmarray.MappedFileError:\n        result = 'raised'"),
    submit_next='nxt = ex.apply_async(lambda: "next done").get(timeout=20)',
)


@pytest.mark.parametrize("pool", [FUTURES, THREADPOOL], ids=["futures", "ThreadPool"])
def test_a_pool_worker_that_faulted_keeps_serving(tmp_path, pool):
    """Audit b4: the late MappedFileError ended concurrent.futures' worker ("Exception in
    worker") and the next future never completed. Documented now: a task that returned
    before its exception could come returns what it read (zeros), with no exception in the
    pool; Mapping.faulted, flush() and close() tell."""
    script = POOL.format(path=str(tmp_path / "t.bin"), **pool)
    try:
        proc = run_python(script, timeout=120)
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure this test is about
        pytest.fail("the pool hung")
    assert_clean_exit(proc)
    assert proc.stdout.startswith("ok"), proc.stdout
    assert "Exception in worker" not in proc.stderr, proc.stderr


# A thread's fault record held up in the queue behind another thread's record, which that
# thread's signal handler is still writing (counted, not yet published): the exception made
# in the faulting thread took its records without it, and the dispatcher, taking it later,
# raised a second exception for one run of faults (seen once in ~300 runs of
# test_readers_racing_truncations_never_crash_or_hang under load). Now the exception waits
# for the records counted before it. Faked here: the records come from a stand-in queue.
HELD_UP_RECORD = """
import threading, time
import mmarray
from mmarray import _engine, _guard

me, native = threading.get_ident(), threading.get_native_id()
queue, counts = [], {"recorded": 0, "taken": 0}
def pop():
    taken = list(queue)
    queue.clear()
    counts["taken"] += len(taken)
    return taken
_engine.guard_pop = pop
_engine.guard_recorded = lambda: counts["recorded"]
_engine.guard_taken = lambda: counts["taken"]

def dispatch_elsewhere():
    t = threading.Thread(target=_guard.dispatch)
    t.start()
    t.join()

queue.append((0, "/x", 4096, me, native))     # a fault of this thread, published
counts["recorded"] = 2                        # and a second one, still being written
def publish():
    time.sleep(0.03)
    queue.append((0, "/x", 8192, me, native))
publisher = threading.Thread(target=publish)
publisher.start()
try:
    dispatch_elsewhere()                      # takes the first: tells this thread
    time.sleep(0.5)
    print("not told")
except mmarray.MappedFileError as e:
    print("told", e.range)
publisher.join()
try:
    dispatch_elsewhere()                      # whatever is queued now
    time.sleep(0.3)
    print("once")
except mmarray.MappedFileError as e:
    print("told again", e.range)
"""


def test_an_exception_waits_for_its_threads_records_still_being_written():
    proc = run_python(HELD_UP_RECORD, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines() == ["told (4096, 12288)", "once"]


# error() (a flush that finds its mapping faulted) takes this thread's records through
# _drain, which swallowed any Exception of the dispatch it runs: the MappedFileError that the
# dispatcher raised in this thread meanwhile, for a fault in another mapping, was lost with
# it (helper-40's review). Here another thread stands for the dispatcher holding the lock.
FLUSH_MEETS_REPORT = """
import ctypes, os, tempfile, threading, time
import mmarray
from mmarray import _guard

PAGE = 4096
d = tempfile.mkdtemp()
fa, fb = os.path.join(d, "a.bin"), os.path.join(d, "b.bin")
for p in (fa, fb):
    with open(p, "wb") as f:
        f.write(b"\\1" * 16 * PAGE)
A = mmarray.open(fa, dtype="u1", mode="r")
B = mmarray.open(fb, dtype="u1", mode="r+")
os.truncate(fa, 0)
os.truncate(fb, 0)
byte = ctypes.create_string_buffer(1)
def touch(m, page):  # one byte read in C: the exception comes later
    ctypes.memmove(byte, m.array.ctypes.data + page * PAGE, 1)
try:
    touch(B, 0)
    time.sleep(0.5)
except mmarray.MappedFileError:
    pass                          # B faulted: its flush raises from now on

def dispatcher():
    with _guard._lock:            # holds the lock while main waits in flush's error()
        time.sleep(0.2)
        _guard.dispatch()         # takes main's record of A: raises in main
x = threading.Thread(target=dispatcher)
with _guard._lock:
    x.start()
    time.sleep(0.05)
    touch(A, 3)                   # main reads zeros from A
told = []
try:
    B.flush()
except mmarray.MappedFileError as e:
    told.append(os.path.basename(e.filename or "?"))
try:
    time.sleep(1.0)
except mmarray.MappedFileError as e:
    told.append(os.path.basename(e.filename or "?"))
x.join()
print("a.bin" in told, A.faulted)
"""


def test_a_report_arriving_during_flush_s_error_is_not_swallowed():
    proc = run_python(FLUSH_MEETS_REPORT, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["True", "True"]


# A KeyboardInterrupt in the exception's wait for records still being written (_drain) left
# the thread's records in _pending: the dispatcher tells a thread only when it has none
# there, so it never told that thread of a fault again (helper-40's review).
INTERRUPTED_WAIT = """
import signal, threading
from mmarray import _engine, _guard

me = threading.get_ident()
_engine.guard_recorded = lambda: 5    # records counted that nobody ever publishes:
_engine.guard_taken = lambda: 0       # the wait runs its full 0.1 s
_guard._pending[me] = [("/x", 4096, 8192)]
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
signal.setitimer(signal.ITIMER_REAL, 0.02)
try:
    _guard._Raised()                  # as the interpreter makes it in the faulting thread
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted", me in _guard._pending)
"""


def test_an_interrupted_wait_leaves_nothing_pending():
    proc = run_python(INTERRUPTED_WAIT, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["interrupted", "False"]


# flush() of a faulted mapping raises synchronously and cancels the exception "on its way"
# to its thread. The dispatcher, preempted between taking the record and raising, raised it
# after that: a second exception, for nothing (helper-40's review). Its raise now checks, in
# the same step, that the thread still has something pending. The preemption is made here
# with a sleep before the dispatcher's raise.
FLUSH_THEN_LATE_RAISE = """
import ctypes, os, tempfile, threading, time
import mmarray
from mmarray import _guard

real_deliver = _guard._deliver
def preempted_deliver(target):
    time.sleep(0.05)
    return real_deliver(target)
_guard._deliver = preempted_deliver
PAGE = 4096
d = tempfile.mkdtemp()
path = os.path.join(d, "b.bin")
with open(path, "wb") as f:
    f.write(b"\\1" * 16 * PAGE)
B = mmarray.open(path, dtype="u1", mode="r+")
os.truncate(path, 0)
byte = ctypes.create_string_buffer(1)
told = []
me = threading.get_ident()
try:
    ctypes.memmove(byte, B.array.ctypes.data + 3 * PAGE, 1)   # the fault, queued
    deadline = time.monotonic() + 10
    while not _guard._pending.get(me) and time.monotonic() < deadline:
        time.sleep(0.001)                                    # until the dispatcher takes it
    try:
        B.flush()
    except mmarray.MappedFileError as e:
        told.append(e.range)
    time.sleep(0.5)
except mmarray.MappedFileError as e:
    told.append(e.range)
print(told)
"""


def test_a_flush_that_reported_a_fault_gets_no_second_exception_for_it():
    proc = run_python(FLUSH_THEN_LATE_RAISE, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "[(12288, 16384)]"


@pytest.mark.parametrize("listed", [True, False])
def test_the_engine_cancels_only_for_a_listed_thread(listed):
    import threading

    from mmarray import _engine

    started, go, seen = threading.Event(), threading.Event(), []

    def waiter():
        try:
            started.set()
            go.wait()
            for _ in range(1000):  # an async exception comes up at a call or a back edge
                pass
            seen.append("none")
        except RuntimeError:
            seen.append("RuntimeError")

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    pending: dict = {t.ident: [("/x", 0, 4096)]} if listed else {}
    assert _engine.raise_in_thread(t.ident, RuntimeError) == _engine.RAISED
    taken = _engine.cancel_and_take(t.ident, (pending, {}))
    go.set()
    t.join()
    if listed:
        assert taken == ([("/x", 0, 4096)], None) and seen == ["none"]
    else:
        assert taken == (None, None) and seen == ["RuntimeError"]


def test_the_engine_raises_and_takes_only_for_a_listed_thread():
    import threading

    from mmarray import _engine

    me = threading.get_ident()
    pending: dict = {me: []}   # listed, but nothing true: as good as absent
    lost: dict = {me + 1: 3}   # another thread's
    assert _engine.raise_in_thread(me, RuntimeError, (pending, lost)) == _engine.NOTHING_TO_RAISE
    assert _engine.cancel_and_take(me, (pending, lost)) == (None, None)
    assert pending == {me: []} and lost == {me + 1: 3}
    pending[me] = [("/x", 0, 4096)]
    assert _engine.cancel_and_take(me, (pending, lost)) == ([("/x", 0, 4096)], None)
    assert me not in pending and lost == {me + 1: 3}

