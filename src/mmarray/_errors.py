"""Turn the C layer's status codes into Python exceptions: the one place that does it.

The engine raises whatever :func:`from_status` returns; :func:`install` hands it over (the
engine imports no module of the package).
"""
from __future__ import annotations

import errno
import os

from mmarray import _engine, _guard

# enum mm_status of csrc/mm.h, as the engine exports it.
(E_ARG, E_OPEN, E_STAT, E_RANGE, E_GROW, E_MAP, E_FLUSH, E_UNMAP, E_ADVISE, E_QUERY, E_EMPTY,
 E_FAULT) = (_engine.STATUS[name] for name in (
    "E_ARG", "E_OPEN", "E_STAT", "E_RANGE", "E_GROW", "E_MAP", "E_FLUSH", "E_UNMAP",
    "E_ADVISE", "E_QUERY", "E_EMPTY", "E_FAULT"))


class SizeNotMultipleError(ValueError):
    """The data after ``offset`` is not a whole number of items (no shape was given)."""

    def __init__(self, message: str, nbytes: int) -> None:
        super().__init__(message)
        self.nbytes = nbytes

_WHAT = {
    E_ARG: "invalid argument",
    E_OPEN: "cannot open file",
    E_STAT: "cannot map file",
    E_GROW: "cannot grow file",
    E_MAP: "cannot map file",
    E_FLUSH: "cannot flush mapping",
    E_UNMAP: "cannot unmap mapping",
    E_ADVISE: "cannot advise the kernel about mapping",
    E_QUERY: "cannot query residency of mapping",
}

# Windows error codes the Win32 layer reports for a directory (mm_win32.c documents which).
_WINDOWS_DIRECTORY_CODES = (267, 336)


def install() -> None:
    """Make the engine raise the exceptions of :func:`from_status`."""
    _engine.set_error_factory(from_status)


def from_status(status: int, code: int, file_size: int, filename: object, offset: int,
                length: int) -> Exception:
    """Return the exception for a failed C call, or for a refusal of the engine's own.

    ``code`` is errno on POSIX and GetLastError() on Windows; OSError then picks the subclass
    (FileNotFoundError, PermissionError, ...) as it does for the os module's own calls.
    """
    if status == _engine.REFUSED_MAPPED:
        return truncation_refused(filename, code)
    if status == _engine.REFUSED_RESETTING:
        return ValueError(f"{filename!r} is being reset (mode 'w+') by another thread of this "
                          f"process; expected one writer at a time")
    if status == _engine.RACED_RESETS:
        return ValueError(f"{filename!r} was reset (mode 'w+') by another thread of this "
                          f"process while it was being mapped, {code} times; map it once the "
                          f"writer is done")
    if status == E_FAULT:
        return _guard.error(filename if isinstance(filename, str) else None, offset,
                            offset + length, "a page of the mapping faulted")
    if status == E_RANGE:
        return ValueError(
            f"offset {offset} + {length} bytes = {offset + length} lies past the end of "
            f"{filename!r} ({file_size} bytes); mode 'r' and 'c' cannot grow a file "
            f"(use 'r+' or 'w+', or a shape that fits)")
    if status == E_EMPTY:
        return ValueError(
            f"nothing to map: {filename!r} has {file_size} bytes and offset is {offset}; "
            f"cannot map an empty range (give a shape, or an offset below the file size)")
    if status == E_ADVISE and code == errno.EFAULT and os.name != "nt":
        # madvise(2): MADV_POPULATE_(READ|WRITE) fail with EFAULT where "a SIGBUS would have
        # been generated on actual access": pages past the end of a truncated file.
        name = filename if isinstance(filename, str) else None
        return _guard.MappedFileError(
            errno.EIO, f"advise() could not populate bytes {offset} to {offset + length} of "
                       f"the mapped file: some of them would fault (the file is shorter than "
                       f"the mapping now: truncated since it was mapped)", name, offset,
            offset + length)
    what = _WHAT.get(status, f"mapping layer error {status}")
    if status == E_STAT and code == errno.ENODEV and os.name != "nt":
        return OSError(code, f"{what}: not a regular file (a FIFO, socket, device or a "
                             f"file such as /proc's that cannot be sized cannot be "
                             f"memory-mapped)", filename)
    if status == E_ARG:
        return ValueError(f"{what} for {filename!r}: offset {offset}, length {length}")
    if os.name == "nt" and code:
        if code in _WINDOWS_DIRECTORY_CODES:
            return IsADirectoryError(errno.EISDIR, "Is a directory", filename)
        return OSError(None, f"{what}: Windows error {code}", filename, code)
    if code:
        return OSError(code, f"{what}: {os.strerror(code)}", filename)
    return OSError(f"{what} {filename!r}")


def truncation_refused(name: object, live: int) -> ValueError:
    """The error for a mode-'w+' truncation of a file this process still maps."""
    return ValueError(
        f"{name!r} is mapped by {live} live mapping(s) in this process; mode 'w+' would "
        f"truncate it under them (their arrays would fault). Close them and release their "
        f"arrays first, or open it with mode 'r+'")
