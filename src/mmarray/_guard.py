"""The fault guard's policy: a page fault in a mapped file becomes :class:`MappedFileError`.

The C layer (``csrc/mm_guard.c``) turns a SIGBUS in a guarded view into a zero page and a
record; the engine guards each view it maps and hands the records out (``guard_pop``). Here
the records become exceptions: a daemon thread sleeps on the guard's wake-up pipe and, for
each record, raises :class:`MappedFileError` in the thread that faulted
(``PyThreadState_SetAsyncExc``: at that thread's next chance, once the C call that touched
the page has returned). A run of faults of one thread in one mapping raises once: a scan
that faults on ten thousand pages raises once (the records the C layer queued while the
scan still faulted are taken by that exception as it is made), and the Mapping says
:attr:`~mmarray.Mapping.faulted` for good. A fault after that exception, in a later call,
is a new run and raises again. The thread is found by its ``pthread_self()``
(``threading.get_ident()``), recorded by the handler with its kernel thread id: a thread
that ``threading`` lists, or one started with ``_thread.start_new_thread`` that Python runs
(``sys._current_frames()``). A fault in a thread Python does not run (a BLAS worker inside a
numpy call) raises in the main thread. The queue of fault records holds 1024: when faults
outrun the dispatcher it overflows, the C layer counts the records it drops, and the
dispatcher raises :class:`MappedFileError` in the main thread saying how many were lost
(the threads they came from may have read zeros without an exception; each mapping's
``faulted`` still says it faulted: its count is kept apart from the queue).
mmarray's own C loops (prefetch, chunks) are not interrupted: they stop at the fault and
report it through their usual error path.

The exception is asynchronous, and late: the dispatcher needs the GIL, which the faulting
thread keeps until its interpreter lets it go (the switch interval, 5 ms by default), or
until it blocks. Code that faults and returns sooner has returned by then, with what it read
(zeros), and the exception comes up wherever that thread is: in the code it runs next. So:

- **Thread pools** (``concurrent.futures.ThreadPoolExecutor``,
  ``multiprocessing.pool.ThreadPool``): a task that faults and returns at once completes
  with what it read; its future does not carry the error. The dispatcher raises nothing in
  a pool's worker that is back in the pool's own code (raised there, the exception would end
  the worker: ``concurrent.futures`` logs "Exception in worker" and later futures never
  complete). If the worker already runs its next task, the exception comes up in that task.
  A pool task that must not return zeros checks for itself, before it returns: the
  :attr:`~mmarray.Mapping.faulted` attribute of its mapping, or
  :meth:`~mmarray.Mapping.flush` of a writable mapping, which raises
  :class:`MappedFileError` synchronously, in the task; :meth:`~mmarray.Mapping.close` of a
  writable mapping that faulted raises too.
- **Starting a thread**: the exception is not raised in a thread while it runs
  ``threading.Thread.start``, nor (CPython before 3.12) while it starts a thread, because
  there it would leave the new thread half started or kill it (see :func:`_deliver`); it is
  held back until the start finishes (at most :data:`_START_WAIT` seconds).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

from mmarray import _engine

__all__ = ["MappedFileError", "set_fault_guard"]

#: Set to 0 (or "off", "false", "no") to start with the guard off: a SIGBUS then ends the
#: process, as with numpy.memmap.
ENVIRONMENT_VARIABLE = "MMARRAY_FAULT_GUARD"

_lock = threading.RLock()  # re-entrant: an exception raised in a thread holding it takes it
_lock_pid = os.getpid()  # the process _lock and the tables below belong to (see _state_lock)
# thread id -> [(file name, first byte, end byte)] not yet carried by an exception
_pending: dict[int, list[tuple[str | None, int, int]]] = {}
_lost: dict[int, int] = {}  # thread id -> fault records lost (queue overflow) to tell it
_QUEUE = 1024  # csrc/mm.h MM_GUARD_QUEUE
_loop_threads: set[int] = set()  # mmarray's own loop threads: they report through a status
_helper: threading.Thread | None = None
_PAGE = _engine.PAGE_SIZE


def _state_lock() -> threading.RLock:
    """``_lock``, made anew (with the tables it guards emptied) the first time it is taken in
    a forked child: the parent's may be held by a thread that does not exist in the child.
    Checked on every use, not only in the after-fork hook, because other after-fork hooks run
    before that one and may use the guard (a ``flush()`` there goes through :func:`error`)."""
    global _lock, _lock_pid
    if _lock_pid != os.getpid():
        _lock = threading.RLock()
        _lock_pid = os.getpid()
        _loop_threads.clear()
        _pending.clear()
        _lost.clear()
        _native_threads.clear()
    return _lock


class MappedFileError(OSError):
    """A page of a mapped file could not be read or written.

    Raised in the thread whose access faulted (the kernel's SIGBUS, caught by mmarray's fault
    guard): the file was truncated below the mapped range by another process (or by
    ``open(path, "w")``, ``np.save`` over it), the storage returned an I/O error, or a write
    filled a hole of a sparse file on a full disk. The faulting pages read as zeros from then
    on; writes to them never reach the file. Also raised by :meth:`~mmarray.Mapping.flush`
    and :meth:`~mmarray.Mapping.close` of a writable mapping that faulted, and in the main
    thread when fault records were lost (see :mod:`mmarray._guard`).

    Raised asynchronously, at the faulting thread's next chance: code that faults and
    returns at once (a thread pool's task reading one element) may have returned zeros by
    then, and the exception comes up in what that thread runs next; in a pool's worker
    between tasks it is not raised at all. Such code checks :attr:`Mapping.faulted
    <mmarray.Mapping.faulted>` before it returns, or calls :meth:`~mmarray.Mapping.flush` of
    a writable mapping, which raises synchronously (see :mod:`mmarray._guard`).

    Made like :class:`OSError` (``MappedFileError(errno, message)``, ``filename`` and
    ``range`` None) or as mmarray makes it, ``(errno, message, filename, start, stop)``.

    Attributes
    ----------
    filename : str or None
        The mapped file.
    range : tuple of int or None
        ``(start, stop)``: the bytes of the file, whole pages, that faulted.
    """

    range: tuple[int, int] | None

    def __init__(self, *args: object) -> None:
        if len(args) == 5 and all(type(a) is int for a in args[3:]):
            # made by mmarray with (errno, message, filename, start, stop)
            code, message, filename, start, stop = args
            super().__init__(code, message, filename)
            self.range = (int(start), int(stop))  # type: ignore[call-overload]
            return
        super().__init__(*args)
        self.range = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (sent back from a worker process) with all it says, not rebuilt empty.
        if self.range is None:
            return (MappedFileError, self.args)
        return (MappedFileError, (self.errno, self.strerror, self.filename, *self.range))


class _Raised(MappedFileError):
    """The class the dispatcher raises in a thread (PyThreadState_SetAsyncExc raises a class:
    the interpreter makes it with no arguments, in the thread that faulted); it takes that
    thread's pending fault records. Shown, caught and pickled as MappedFileError."""

    def __init__(self, *args: object) -> None:
        if args:
            super().__init__(*args)
            return
        # This thread's records still queued belong to the run this exception reports (the
        # C call that faulted has returned): taken now, they cannot make a second one.
        ident = threading.get_ident()
        try:
            _drain()
        finally:  # even cut short (KeyboardInterrupt in its wait): a _pending entry left
            faults = _take(ident)  # behind would keep the dispatcher from telling this
            lost = _take_lost(ident)  # thread of any later fault
        filename, start, stop = _merge(faults)
        message = _message(filename, start, stop) + _elsewhere(faults) \
            if faults or not lost else ""
        if lost:
            message = (f"{message}; " if message else "") + _lost_message(lost)
        super().__init__(5, message, filename, start, stop)  # EIO


MappedFileError.__module__ = "mmarray"
_Raised.__module__ = "mmarray"
_Raised.__name__ = _Raised.__qualname__ = "MappedFileError"


def _message(filename: str | None, start: int, stop: int) -> str:
    return (f"bytes {start} to {stop} of the mapped file could not be read or written (it "
            f"was truncated below them, or the storage failed); the faulting pages read as "
            f"zeros from now on and writes to them do not reach the file")


def _lost_message(lost: int) -> str:
    return (f"{lost} fault record(s) were lost (the fault guard's queue of "
            f"{_QUEUE} records overflowed): some threads may have read zeros from a mapped "
            f"file without an exception; check the `faulted` attribute of your mappings")


def _take_lost(thread: int) -> int:
    with _state_lock():
        return _lost.pop(thread, 0)


def _merge(faults: list[tuple[str | None, int, int]]) -> tuple[str | None, int, int]:
    """(file name, first byte, end byte) of the first file's faults: the range spans those
    (one exception reports one run of faults; :func:`_elsewhere` names the other files)."""
    if not faults:
        return None, 0, 0
    first = [f for f in faults if f[0] == faults[0][0]]
    return faults[0][0], min(f[1] for f in first), max(f[2] for f in first)


#: Other files :func:`_elsewhere` names at most; the rest are counted.
_ELSEWHERE_MAX = 4


def _elsewhere(faults: list[tuple[str | None, int, int]]) -> str:
    """The part of a message that names the files other than the first that ``faults`` hit
    (a thread that faulted in two files before its exception was made: one exception says
    both), with the bytes of each; "" when they all hit one file."""
    spans: dict[str | None, tuple[int, int]] = {}
    for name, start, stop in faults:
        if name != faults[0][0]:
            lo, hi = spans.get(name, (start, stop))
            spans[name] = (min(lo, start), max(hi, stop))
    if not spans:
        return ""
    named = [f"{'a file object' if name is None else repr(name)} (bytes {lo} to {hi})"
             for name, (lo, hi) in list(spans.items())[:_ELSEWHERE_MAX]]
    more = len(spans) - len(named)
    return (f"; this thread faulted in {', '.join(named)} too"
            + (f", and in {more} more file(s)" if more else ""))


def _take(thread: int) -> list[tuple[str | None, int, int]]:
    with _state_lock():
        return _pending.pop(thread, [])


def error(filename: str | None, start: int, stop: int, what: str) -> MappedFileError:
    """A MappedFileError for ``what`` found out synchronously (flush, close, a C loop)."""
    _drain(take_lost=True)
    ident = threading.get_ident()
    with _state_lock():
        if ident in _loop_threads:  # nothing is raised in a loop thread
            faults, lost = _pending.pop(ident, []), _lost.pop(ident, 0)
        else:  # one may be on its way here: this one replaces it. Taken and cancelled in
            # one step (the dispatcher's raise checks _pending in one step too): between
            # the two, the one on its way would find nothing pending, or come on top.
            taken = _engine.cancel_and_take(ident, (_pending, _lost))
            faults, lost = taken[0] or [], taken[1] or 0
    if faults:  # the pages that faulted
        filename, start, stop = _merge(faults)
    message = f"{what}: {_message(filename, start, stop)}{_elsewhere(faults)}"
    if lost:
        message += f"; {_lost_message(lost)}"
    return MappedFileError(5, message, filename, start, stop)


def dispatch(take_lost: bool = True) -> None:
    """Turn the queued fault records into exceptions for the threads that faulted.

    The records of the calling thread stay in ``_pending`` (its caller, :func:`error` or the
    exception being made, takes them); the others are raised once per thread, outside the
    lock (the exception's ``__init__`` takes it). With ``take_lost`` False the count of lost
    records stays with the C layer for the dispatcher's next round."""
    current = threading.get_ident()
    targets = []
    with _state_lock():
        records = _engine.guard_pop()
        lost = _engine.guard_lost() if take_lost else 0
        for _token, filename, offset, thread, native in records:
            start = offset - offset % _PAGE
            target = _python_thread(thread, native)
            if target is None:
                continue  # that thread is gone: its mapping says `faulted`, nobody to tell
            first = not _pending.get(target) and not _lost.get(target)
            _pending.setdefault(target, []).append((filename, start, start + _PAGE))
            if first and target != current and target not in _loop_threads:
                targets.append(target)
        main = threading.main_thread().ident
        if lost and main is not None:  # whose they were is lost too: tell the main thread
            first = not _pending.get(main) and not _lost.get(main)
            _lost[main] = _lost.get(main, 0) + lost
            if first and main != current and main not in _loop_threads:
                targets.append(main)
    for target in targets:
        if not _deliver(target):
            with _state_lock():
                _pending.pop(target, None)
                _lost.pop(target, None)


#: How long a thread being told of its faults waits for fault records that other threads'
#: handlers are still writing (see :func:`_drain`), seconds.
_WRITE_WAIT = 0.1


def _drain(take_lost: bool = False) -> None:
    """:func:`dispatch`, quietly, until every fault record queued before this call is taken:
    called in a thread as it is told of its faults (the exception being made, :func:`error`,
    a loop thread's end), it puts all that thread's records still queued into ``_pending``,
    where its caller takes them. Lost records are left to the dispatcher unless
    ``take_lost``: it tells the main thread about them (it reads the pipe byte each of them
    wrote).

    The queue is taken in order, and a record of another thread ahead of this thread's may
    still be being written by that thread's signal handler (counted, not yet published): the
    records behind it wait for it. Taken later by the dispatcher, this thread's record would
    find nothing pending for it and raise a second exception for one run of faults. So this
    waits for the records counted before the call, sleeping (the handler needs no GIL), at
    most :data:`_WRITE_WAIT` seconds: a handler preempted longer than that leaves the rest
    to the dispatcher (an exception more, never one fewer)."""
    recorded = _engine.guard_recorded()
    deadline = None
    while True:
        try:
            dispatch(take_lost=take_lost)
        except _Raised:  # this thread's own report, arriving here (error()): it goes on up
            raise
        except Exception:  # the exception being made says what it can without the queue
            return
        if _engine.guard_taken() >= recorded:
            return
        now = time.monotonic()
        if deadline is None:
            deadline = now + _WRITE_WAIT
        elif now >= deadline:
            return
        time.sleep(0.0002)


#: How long the dispatcher waits for a thread start to finish (see _deliver), seconds.
_START_WAIT = 2.0
_nothing = contextlib.nullcontext()


def _deliver(target: int) -> bool:
    """Raise :class:`MappedFileError` in thread ``target``; False if it was not raised (the
    thread is gone, a pool's worker between tasks: see :func:`_in_pool_loop`, or a start
    that did not finish in time: below).

    Not while a thread is being started: the dispatcher waits (sleeping, so that the start
    can finish), at most :data:`_START_WAIT` seconds:

    - not while ``target`` runs ``threading.Thread.start``: raised there, the exception
      leaves the thread half started (after ``_start_new_thread`` returned, start's own
      ``except`` clause meets a KeyError in ``del _limbo[self]``; during ``_started.wait()``
      the caller never learns of the thread it started). Past the wait it is raised anyway.
    - not while the thread state that ``PyThreadState_SetAsyncExc(target)`` would take runs
      no Python code: before CPython 3.12 that is a thread ``target`` is starting (with
      ``Thread.start`` or ``_thread.start_new_thread``), whose state has ``target``'s ident
      until it runs, and the exception would kill it in its bootstrap (``Thread.start()``
      then waits for ever). The engine checks and raises in one step
      (:func:`mmarray._engine.raise_in_thread`). Past the wait it is not raised: the fault
      stays in the mapping's ``faulted`` and the next fault of the thread raises.

    The checks and the raise are made holding ``threading._active_limbo_lock``, which
    ``Thread.start`` takes before it makes the new thread: a thread that enters it meanwhile
    waits there, and the exception reaches it as it leaves that lock, before the new thread
    is made (the release is a call, after which the interpreter raises pending asynchronous
    exceptions), and propagates out of ``start()`` (that Thread stays listed in
    ``threading._limbo``, never started).
    """
    deadline = time.monotonic() + _START_WAIT
    while True:
        # read each time: threading makes the lock anew in a forked child
        lock = getattr(threading, "_active_limbo_lock", None) or _nothing
        with lock:
            frame = sys._current_frames().get(target)
            if frame is not None and _in_pool_loop(frame):
                return False
            late = time.monotonic() >= deadline
            if late or not _in_thread_start(frame):
                # Only while the thread still has something pending, checked in the same
                # step: error() may have taken it since (see error()).
                got = _engine.raise_in_thread(target, _Raised, (_pending, _lost))
                if got == _engine.NOTHING_TO_RAISE:
                    return True  # reported already: nothing for the caller to drop
                if got != _engine.THREAD_STARTING:
                    return got == _engine.RAISED
                if late:
                    return False
        del frame
        time.sleep(0.0005)


def _in_thread_start(frame: Any) -> bool:
    """Whether ``frame`` or a caller of it runs ``threading.Thread.start``."""
    start = threading.Thread.start.__code__
    while frame is not None:
        if frame.f_code is start:
            return True
        frame = frame.f_back
    return False


def _pool_loop_codes() -> tuple[set[Any], tuple[str, ...]]:
    """The code objects of the thread pools' own loops (``concurrent.futures`` and
    ``multiprocessing.pool.ThreadPool``, when imported), and the files of their machinery."""
    codes: set[Any] = set()
    files: list[str] = []
    futures = sys.modules.get("concurrent.futures.thread")
    if futures is not None:
        codes.update((futures._worker.__code__, futures._WorkItem.run.__code__))
        files.append(os.path.dirname(futures.__file__ or "") + os.sep)
    pool = sys.modules.get("multiprocessing.pool")
    if pool is not None:
        codes.add(pool.worker.__code__)
        files.append(pool.__file__ or "")
    if codes:
        files.extend(m.__file__ or "" for m in (threading, sys.modules.get("queue")) if m)
    return codes, tuple(f for f in files if f)


def _in_pool_loop(frame: Any) -> bool:
    """Whether a thread whose innermost frame is ``frame`` is a thread pool's worker between
    tasks: in the pool's own code, its task function returned (or not called yet).

    An exception raised there would not reach the task that faulted (it has returned, its
    result is set) but the pool's loop, which it ends: ``concurrent.futures`` logs
    "Exception in worker" and the worker is gone, so a later future never completes. The
    dispatcher raises nothing then (see the module's docstring)."""
    codes, files = _pool_loop_codes()
    if not codes:
        return False
    while frame is not None:
        code = frame.f_code
        if code in codes:
            return True  # reached the loop through the pool's own code only
        if not code.co_filename.startswith(files):
            return False  # a task's code runs (or code that is no pool's)
        frame = frame.f_back
    return False


def _python_thread(ident: int, native: int) -> int | None:
    """The ident of the Python thread to tell about a fault of thread (``ident``,
    ``native``): that thread while it lives; the main thread for a thread Python does not
    run (a BLAS worker faulting inside a numpy call); None when it is gone. Native ids tell a
    thread from a later one that reuses its ident."""
    # threading._active (ident -> Thread), read without threading._active_limbo_lock, which
    # threading.enumerate() takes: the dispatcher holds _lock here, and a thread whose
    # exception is made while it holds that lock (raised inside enumerate()) waits for _lock.
    thread = getattr(threading, "_active", {}).get(ident)
    if thread is not None and (not native or thread.native_id == native):
        return ident
    if native and os.path.isdir(f"/proc/self/task/{native}"):
        # Alive. The pthread_t of a live thread is its own (pthread_self(3): reused only
        # after the thread ended), so an ident Python runs a frame in is that thread: one
        # started with _thread.start_new_thread, which threading does not list.
        if ident in sys._current_frames():
            return ident
        # A Python thread that just ended keeps its /proc entry a little while after join()
        # returned (the kernel clears the tid for pthread_join before the task is released):
        # wait for that to pass before telling the main thread about a non-Python thread.
        # Once per thread: a BLAS worker faulting through a matrix queues a record for every
        # run, and this wait, made under the dispatcher's lock for each, held up the thread
        # being told (its exception takes that lock) for a second per ten records.
        if (ident, native) not in _native_threads:
            for _ in range(_EXIT_POLLS):
                time.sleep(0.01)
                if not os.path.isdir(f"/proc/self/task/{native}"):
                    return None
            if len(_native_threads) >= 256:
                _native_threads.clear()
            # While that thread lives its ids are its own ("pthread_self(3)", "gettid(2)"):
            # a later thread with both is checked above first, as a Python thread.
            _native_threads.add((ident, native))
        return threading.main_thread().ident  # not a Python thread (a BLAS worker)
    return None


_EXIT_POLLS = 10  # x 10 ms: how long an ended thread's /proc entry may linger
#: (ident, native id) of threads found alive and not Python's (see _python_thread)
_native_threads: set[tuple[int, int]] = set()


def _serve(fd: int) -> None:
    while True:
        try:
            os.read(fd, 4096)
        except OSError:  # the pipe is gone (interpreter teardown): nothing left to serve
            return
        try:
            dispatch()
        except Exception:  # a daemon must not die of one bad record; the next one may do
            pass


def _start() -> None:
    """The engine's hook, called when the guard is first installed: start the reader."""
    global _helper
    fd = _engine.guard_wake_fd()
    if fd < 0 or (_helper is not None and _helper.is_alive()):
        return
    _helper = threading.Thread(target=_serve, args=(fd,), name="mmarray-fault-guard",
                               daemon=True)
    _helper.start()


def _after_fork_in_child() -> None:
    global _helper
    _state_lock()  # the child's own lock and tables, if no earlier hook made them already
    # The C layer forgot the parent's queue inside fork() (mm_guard_after_fork, a
    # pthread_atfork handler). What is queued now are faults the child made in after-fork
    # hooks that ran before this one: they are dropped, not raised. No point inside fork()
    # is safe for an exception (raised in a hook it ends that hook, and CPython reports it
    # as unraisable; raised at fork()'s return the child takes it for a failed fork), nor
    # are the first statements after it (multiprocessing's bootstrap catches OSError). The
    # mapping's `faulted` says it, and a flush() or close() of a writable one raises.
    _engine.guard_pop()
    _engine.guard_lost()
    _engine.guard_new_pipe()  # the inherited one is the parent's too: its reader takes bytes
    if _helper is not None:  # threads do not survive fork(): start the child's own reader
        _helper = None
        _start()


class loop_thread:
    """Context manager for mmarray's own threads that run a C loop over a mapping: faults
    in them are reported by the loop's status, not raised asynchronously."""

    def __enter__(self) -> None:
        with _state_lock():
            _loop_threads.add(threading.get_ident())

    def __exit__(self, *exc_info: object) -> None:
        _drain(take_lost=True)  # this thread's records, while it is still a loop thread
        with _state_lock():
            _loop_threads.discard(threading.get_ident())
            _pending.pop(threading.get_ident(), None)
            _lost.pop(threading.get_ident(), None)


def set_fault_guard(enabled: bool) -> None:
    """Turn mmarray's fault guard on (the default) or off.

    With the guard on, a page of a mapped file that cannot be read or written (the file was
    truncated, an I/O error, a full disk under a sparse hole) raises :class:`MappedFileError`
    in the thread that touched it instead of killing the process with SIGBUS. Mappings made
    while it is off are not guarded; turning it off also removes the signal handler, so a
    SIGBUS takes its default course again. The environment variable ``MMARRAY_FAULT_GUARD=0``
    starts with it off. Windows has no guard (its own loops still raise :class:`OSError`).

    Examples
    --------
    >>> import mmarray
    >>> mmarray.set_fault_guard(False)
    >>> mmarray.set_fault_guard(True)
    """
    _engine.set_guard(bool(enabled))


_engine.set_guard_hook(_start)
if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() in ("0", "off", "false", "no"):
    _engine.set_guard(False)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
