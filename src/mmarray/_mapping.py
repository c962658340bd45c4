"""The public :class:`Mapping`, and :func:`map_region`, the one way to make one.

The engine's :class:`~mmarray._engine.Region` maps, counts exports and unmaps; this module adds
the policy on top: rows instead of bytes, advice by name, what each mode allows, prefetching
and chunked scans (``_access``), and the error messages (``_errors``).
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, SupportsIndex

from mmarray import _access, _engine, _errors, _ranges
from mmarray._ranges import Advice, RowIndex

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from _typeshed import StrOrBytesPath

    from mmarray._api import ShortMode
    from mmarray._ranges import Order

__all__ = ["Mapping", "map_region"]

_DONTNEED = _engine.ADVICE["dontneed"]
_POPULATE_WRITE = _engine.ADVICE["populate_write"]
_map_file = _engine.map_file
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_errors.install()

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _encode_path(path: StrOrBytesPath) -> bytes:
        """The C layer takes UTF-8 paths on Windows."""
        return os.fsdecode(path).encode("utf-8")

    _os_handle = msvcrt.get_osfhandle  # type: ignore[attr-defined, unused-ignore]  # on POSIX
else:
    def _encode_path(path: StrOrBytesPath) -> bytes:
        if type(path) is str:
            return path.encode(_FS_ENCODING, _FS_ERRORS)
        return os.fsencode(path)

    def _os_handle(fd: int) -> int:
        return fd


class Mapping(_engine.Region):
    """A mapped byte range of a file, viewed as an array of one dtype and shape.

    Do not construct directly: use :func:`mmarray.open` (or :func:`mmarray.load`). A Mapping
    supports the buffer protocol (read-only for mode ``'r'``), hands out plain
    :class:`numpy.ndarray` objects through :attr:`array`, and can be closed at any time
    without leaving any array dangling.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.bin")
    >>> with mmarray.open(path, dtype="float32", mode="w+", shape=(2, 3)) as m:
    ...     a = m.array
    ...     a[:] = 1.5
    ...     m.flush()
    >>> m.closed
    True
    >>> float(a.sum())          # the array outlived the Mapping's close: still valid
    9.0
    >>> del a                   # the region is unmapped now
    """

    __slots__ = ()

    def _byte_range(self, start: RowIndex, stop: RowIndex) -> tuple[int, int]:
        return _ranges.byte_range(self.shape, self.order, self.dtype.itemsize, start, stop)

    def flush(self, start: RowIndex = None, stop: RowIndex = None, sync: bool = True) -> None:
        """Write changes back to the file.

        Parameters
        ----------
        start, stop : int, optional
            Flush only rows ``[start, stop)`` (along the first axis for C order, the last for
            Fortran order; elements for 1-D). Python slicing rules; default: everything.
        sync : bool, optional
            True (default): durable, returns after the data reached storage
            (``msync(MS_SYNC)``; Windows ``FlushViewOfFile`` + ``FlushFileBuffers``).
            False: schedule the write-back and return at once.

        A no-op for modes ``'r'`` and ``'c'``.

        Raises
        ------
        ValueError
            The mapping is closed.
        OSError
            The write-back failed (for example EIO).
        """
        if self.closed:
            raise ValueError("mapping is closed")
        if self.mode == "r" or self.mode == "c":
            return
        first, length = self._byte_range(start, stop)
        self._flush_bytes(first, length, sync)

    def advise(self, advice: Advice, start: RowIndex = None, stop: RowIndex = None) -> None:
        """Tell the kernel how rows ``[start, stop)`` will be used (``madvise``).

        Parameters
        ----------
        advice : str
            One of ``"normal"``, ``"sequential"``, ``"random"``, ``"willneed"``,
            ``"dontneed"``, ``"hugepage"``, ``"nohugepage"``, ``"populate_read"``,
            ``"populate_write"``. On Windows ``willneed``/``populate_*`` prefetch
            (``PrefetchVirtualMemory``) and the others are no-ops.
        start, stop : int, optional
            Row range as for :meth:`flush`.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "adv.bin")
        >>> with mmarray.open(path, mode="w+", shape=1 << 16) as m:
        ...     m.advise("random")
        ...     m.advise("willneed", 0, 4096)
        """
        code = _ranges.advice_code(advice)
        if self.closed:
            raise ValueError("mapping is closed")
        if code == _DONTNEED and self.mode == "c":
            raise ValueError("advice 'dontneed' on a copy-on-write mapping (mode 'c') would "
                             "discard its private changes; expected mode 'r', 'r+' or 'w+'")
        if code == _POPULATE_WRITE and self.mode == "r":
            raise ValueError("advice 'populate_write' needs a writable mapping (mode 'r+', "
                             "'w+' or 'c'), this one has mode 'r'")
        first, length = self._byte_range(start, stop)
        self._advise_bytes(first, length, code)

    def resident(self, start: RowIndex = None, stop: RowIndex = None) -> float:
        """Fraction (0.0 to 1.0) of the pages of rows ``[start, stop)`` that are in memory.

        Uses ``mincore`` (Windows: ``QueryWorkingSetEx``, which sees only this process's
        working set). An empty range gives 1.0.
        """
        if self.closed:
            raise ValueError("mapping is closed")
        first, length = self._byte_range(start, stop)
        resident, total = self._resident_bytes(first, length)
        return resident / total if total else 1.0

    def evict(self, start: RowIndex = None, stop: RowIndex = None) -> None:
        """Give the memory of rows ``[start, stop)`` back: the "free this" call.

        Flushes the range (modes ``'r+'``/``'w+'``), drops it from this process
        (``madvise(MADV_DONTNEED)``) and from the page cache where the OS allows
        (``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file, reopened by name; skipped for
        mappings of file objects and on Windows). The data stays readable: the next access
        reads it from the file again.

        Raises
        ------
        ValueError
            Mode ``'c'`` (evicting would discard the private changes), or the mapping is closed.
        """
        _access.evict(self, start, stop)

    def prefetch(self, start: RowIndex = None, stop: RowIndex = None) -> _access.Prefetch:
        """Fault rows ``[start, stop)`` in from a background thread and return at once.

        The thread runs a C loop without the GIL (one read per 64 KiB fault-around window,
        about twice as fast as ``madvise(MADV_POPULATE_READ)``), overlapping I/O
        and page faults with the caller's work. Returns a handle with ``wait()`` and
        ``done``. Closing the mapping meanwhile is safe: the unmap waits for the thread.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "p.bin")
        >>> m = mmarray.open(path, mode="w+", shape=1 << 20)
        >>> m.prefetch().wait()
        True
        """
        if self.closed:
            raise ValueError("mapping is closed")
        first, length = self._byte_range(start, stop)
        return _access.Prefetch(self, first, length)

    def chunks(self, rows: SupportsIndex, prefetch: bool = True,
               ahead: SupportsIndex = 2) -> Iterator[np.ndarray[Any, np.dtype[Any]]]:
        """Iterate over views of ``rows`` rows each; the way to scan a mapping fast.

        With ``prefetch`` (default) a background thread populates up to ``ahead`` chunks
        beyond the one the caller is working on, so page faults and disk reads overlap the
        caller's computation instead of stalling it.

        Examples
        --------
        >>> import mmarray, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s.f64")
        >>> with mmarray.open(path, dtype="f8", mode="w+", shape=(1000, 8)) as m:
        ...     m.array[:] = 1.0
        ...     float(sum(chunk.sum() for chunk in m.chunks(128)))
        8000.0
        """
        return _access.chunks(self, rows, prefetch, ahead)

Mapping.__module__ = "mmarray"


def map_region(*, path: StrOrBytesPath | None = None, fd: int | None = None, access: int,
               offset: int = 0, length: int, flags: int = 0, dtype: np.dtype[Any],
               shape: tuple[int, ...] | None = None, order: Order = "C", mode: ShortMode,
               filename: str | None, cls: type[Mapping] = Mapping) -> Mapping:
    """Map a file region: the one entry point every mapping of the package goes through.

    Give ``path`` (str, bytes or os.PathLike: encoded here) or ``fd`` (an OS descriptor:
    turned into a Windows handle here), or neither for a zero-size region that maps nothing.
    ``length`` is a byte count, ``_engine.TO_END``, or 0 (nothing is mapped, but the file is
    checked, created or grown as for data). With ``shape`` None (``TO_END`` only) the array is
    1-D over what was mapped, which must then be a multiple of the itemsize (ValueError
    otherwise). ``filename`` is what errors and :attr:`Mapping.filename` show.
    """
    if path is not None:
        target = _encode_path(path)
    elif fd is not None:
        target = _os_handle(fd)
    else:
        target = None
    m = _map_file(target, access, offset, length, flags, dtype, shape, order, mode, filename,
                  cls)
    if shape is None:
        nbytes = m._mapped_length()
        if nbytes % dtype.itemsize:
            m.close()
            raise _errors.SizeNotMultipleError(
                f"{nbytes} bytes after offset {offset} in {filename!r} are not a multiple of "
                f"the itemsize {dtype.itemsize} of dtype {dtype}; give a shape", nbytes)
        m._set_shape((nbytes // dtype.itemsize,))
    return m
