"""The fault guard's policy: a page fault in a mapped file becomes :class:`MappedFileError`.

The C layer (``csrc/mm_guard.c``) turns a SIGBUS in a guarded view into a zero page and a
record; the engine guards each view it maps and hands the records out (``guard_pop``). Here
the records become exceptions: a daemon thread sleeps on the guard's wake-up pipe and, for
each record, raises :class:`MappedFileError` in the thread that faulted
(``PyThreadState_SetAsyncExc``: at that thread's next chance, once the C call that touched
the page has returned). One exception per mapping and thread: a scan that faults on ten
thousand pages raises once, and the Mapping says :attr:`~mmarray.Mapping.faulted` for good.
mmarray's own C loops (prefetch, chunks) are not interrupted: they stop at the fault and
report it through their usual error path.
"""
from __future__ import annotations

import os
import threading

from mmarray import _engine

__all__ = ["MappedFileError", "set_fault_guard"]

#: Set to 0 (or "off", "false", "no") to start with the guard off: a SIGBUS then ends the
#: process, as with numpy.memmap.
ENVIRONMENT_VARIABLE = "MMARRAY_FAULT_GUARD"

_lock = threading.Lock()
# thread id -> [(file name, first byte, end byte)] not yet carried by an exception
_pending: dict[int, list[tuple[str | None, int, int]]] = {}
_reported: set[tuple[int, int]] = set()  # (view's guard token, thread): raised once already
_loop_threads: set[int] = set()  # mmarray's own loop threads: they report through a status
_helper: threading.Thread | None = None
_PAGE = _engine.PAGE_SIZE


class MappedFileError(OSError):
    """A page of a mapped file could not be read or written.

    Raised in the thread whose access faulted (the kernel's SIGBUS, caught by mmarray's fault
    guard): the file was truncated below the mapped range by another process (or by
    ``open(path, "w")``, ``np.save`` over it), the storage returned an I/O error, or a write
    filled a hole of a sparse file on a full disk. The faulting pages read as zeros from then
    on; writes to them never reach the file. Also raised by :meth:`~mmarray.Mapping.flush`
    and :meth:`~mmarray.Mapping.close` of a writable mapping that faulted.

    Attributes
    ----------
    filename : str or None
        The mapped file.
    range : tuple of int
        ``(start, stop)``: the bytes of the file, whole pages, that faulted.
    """

    range: tuple[int, int]

    def __init__(self, *args: object) -> None:
        if args:  # made by mmarray with (errno, message, filename, start, stop)
            code, message, filename, start, stop = args
            super().__init__(code, message, filename)
            self.range = (int(start), int(stop))  # type: ignore[call-overload]
            return
        # Made by the interpreter in the thread that faulted (PyThreadState_SetAsyncExc
        # raises the class): the details wait in _pending.
        faults = _take(threading.get_ident())
        filename, start, stop = _merge(faults)
        super().__init__(5, _message(filename, start, stop), filename)  # EIO
        self.range = (start, stop)


MappedFileError.__module__ = "mmarray"


def _message(filename: str | None, start: int, stop: int) -> str:
    return (f"bytes {start} to {stop} of the mapped file could not be read or written (it "
            f"was truncated below them, or the storage failed); the faulting pages read as "
            f"zeros from now on and writes to them do not reach the file")


def _merge(faults: list[tuple[str | None, int, int]]) -> tuple[str | None, int, int]:
    if not faults:
        return None, 0, 0
    return (faults[0][0], min(f[1] for f in faults),
            max(f[2] for f in faults if f[0] == faults[0][0]))


def _take(thread: int) -> list[tuple[str | None, int, int]]:
    with _lock:
        return _pending.pop(thread, [])


def error(filename: str | None, start: int, stop: int, what: str) -> MappedFileError:
    """A MappedFileError for ``what`` found out synchronously (flush, close, a C loop)."""
    dispatch()
    ident = threading.get_ident()
    faults = _take(ident)
    if faults:  # the pages that faulted, if this thread's: this exception carries them
        if ident not in _loop_threads:  # one is on its way here: this one replaces it
            _engine.raise_in_thread(ident, None)
        filename, start, stop = _merge(faults)
    return MappedFileError(5, f"{what}: {_message(filename, start, stop)}", filename,
                           start, stop)


def dispatch() -> None:
    """Turn the queued fault records into exceptions for the threads that faulted."""
    with _lock:
        for token, filename, offset, thread in _engine.guard_pop():
            start = offset - offset % _PAGE
            if thread in _loop_threads:  # its C loop stops and reports the fault itself
                _pending.setdefault(thread, []).append((filename, start, start + _PAGE))
                continue
            key = (token, thread)
            if key in _reported:
                continue  # one exception per mapping and thread
            _reported.add(key)
            first = not _pending.get(thread)
            _pending.setdefault(thread, []).append((filename, start, start + _PAGE))
            if first and not _engine.raise_in_thread(thread, MappedFileError):
                _pending.pop(thread, None)  # that thread is gone


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
    global _lock, _helper
    _lock = threading.Lock()
    _loop_threads.clear()
    _pending.clear()
    if _helper is not None:  # threads do not survive fork(): start the child's own reader
        _helper = None
        _start()


class loop_thread:
    """Context manager for mmarray's own threads that run a C loop over a mapping: faults
    in them are reported by the loop's status, not raised asynchronously."""

    def __enter__(self) -> None:
        with _lock:
            _loop_threads.add(threading.get_ident())

    def __exit__(self, *exc_info: object) -> None:
        dispatch()  # this thread's records, while it is still known as a loop thread
        with _lock:
            _loop_threads.discard(threading.get_ident())
            _pending.pop(threading.get_ident(), None)


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
