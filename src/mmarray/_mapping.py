"""The public :class:`Mapping`, and :func:`map_region`, the one way to make one.

The engine's :class:`~mmarray._engine.Region` maps, counts exports and unmaps; this module adds
the policy on top: rows instead of bytes, advice by name, what each mode allows, prefetching
and chunked scans (``_access``), and the error messages (``_errors``).
"""
from __future__ import annotations

import io
import operator
import os
import sys
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

import numpy as np

from mmarray import _access, _engine, _errors, _fileref, _guard, _ranges
from mmarray._ranges import Advice, RowIndex
from mmarray._textsig import doc_with_text_signature

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _typeshed import StrOrBytesPath

    from mmarray._api import ShortMode
    from mmarray._ranges import Order

__all__ = ["Mapping", "map_region"]

_DONTNEED = _engine.ADVICE["dontneed"]
_READ = _engine.READ
_WRITE = _engine.WRITE
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


def array_as(array: np.ndarray[Any, Any], dtype: Any, copy: bool | None
             ) -> np.ndarray[Any, Any]:
    """What ``__array__(dtype, copy)`` gives for an object whose data is ``array``: it, a
    copy when asked, or a conversion to ``dtype`` (ValueError with ``copy=False``, which
    that needs a copy for)."""
    if dtype is not None and np.dtype(dtype) != array.dtype:
        if copy is False:
            raise ValueError(f"cannot give the mapped {array.dtype} data as "
                             f"{np.dtype(dtype)} without a copy (copy=False)")
        return array.astype(dtype)
    return array.copy() if copy else array


class ArrayLike:
    """An array-like over ``self.array``: what dask.array.from_array, xarray and friends use.

    The methods :class:`Mapping` and a compressed ``.npz`` member
    (:class:`~mmarray._npz.InMemoryMember`) share: ``ndim``, ``len()``, indexing and
    iteration as their :attr:`array`'s. Needs ``shape`` and ``array``."""
    __slots__ = ()
    shape: tuple[int, ...]
    array: np.ndarray[Any, np.dtype[Any]]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        """The array for ``np.asarray(m)``: :attr:`array`, or a copy when asked.

        numpy tries the buffer protocol first (the same typed array) and ignores its errors,
        so this is what it reaches for a closed mapping, or a dtype the buffer protocol
        cannot describe (datetime64): raise or give :attr:`array`, never a 0-d object array.
        """
        return array_as(self.array, dtype, copy)  # self.array raises once closed

    @property
    def ndim(self) -> int:
        """Number of dimensions of the mapped array."""
        return len(self.shape)

    @property
    def shards(self) -> tuple[()]:
        """``()``: the file has no shard or chunk layout to respect.

        Read by ``dask.array.from_array`` with ``chunks="auto"`` (its default) in place of
        ``x.chunks``, which it takes for a chunk layout (h5py, zarr) but which is the
        :meth:`chunks` method here: without it ``from_array(m)`` raised TypeError. Other
        automatic forms (``{0: "auto"}``, ``"64 MiB"``) read ``x.chunks`` all the same: give
        the chunks, or use :func:`mmarray.to_dask`.
        """
        return ()

    def __len__(self) -> int:
        """Length of the first axis, as ``len(m.array)``."""
        shape = self.shape
        if not shape:
            raise TypeError("len() of unsized object")
        return shape[0]

    def __bool__(self) -> bool:
        # Without this, bool() would be len() != 0 (and raise for a 0-d mapping): a Mapping
        # is an object, always true, as before it had a length.
        return True

    def __getitem__(self, key: Any) -> Any:
        """``m[key]`` is ``m.array[key]``: a view over the mapped pages for basic indexing
        (ints, slices, ``...``, ``None``, field names), a copy for fancy indexing, as numpy.

        An empty result is a new array that maps nothing, so that probing the shape of a
        selection (as dask does for its ``meta``) keeps no reference to the mapping.

        Examples
        --------
        >>> import mmarray, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "g.i64")
        >>> with mmarray.open(path, dtype="i8", mode="w+", shape=(3, 4)) as m:
        ...     m[1] = 7
        ...     m[1:, ::2].tolist(), m.ndim, len(m)
        ([[7, 7], [0, 0]], 2, 3)
        """
        result = self.array[key]
        if type(result) is np.ndarray and result.size == 0:
            if result.dtype.itemsize == 0:  # copy() would give 'S0' a size: 'S1', as numpy
                empty = np.ndarray(result.shape, result.dtype, buffer=bytearray())  # new arrays
            else:
                empty = result.copy()
            empty.flags.writeable = result.flags.writeable
            return empty
        return result

    def __iter__(self) -> Iterator[Any]:
        """Iterate over the first axis, as ``iter(m.array)`` (TypeError for a 0-d mapping)."""
        return iter(self.array)


class Mapping(ArrayLike, _engine.Region):
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

    # Two fields the engine keeps for this class (Region's, None until set; no slot here:
    # instances keep Region's layout, see _engine.set_region_dealloc).
    # _format: the spans ((start, stop), ...) of the file that say where the data lies (a
    # .npy header, a .npz member's local header), set by the code that read them to map it;
    # an int n for the one span (0, n), a .npy's header (no tuple to build on the open
    # path); None for a raw file. A reference carries their bytes (_fileref.read_layout).
    # _layout_read: (spans, layout) of the first pickle, for the next ones (see _layout).
    __slots__ = ()
    _format: int | tuple[tuple[int, int], ...] | None
    _layout_read: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, bytes], ...]] | None
    #: What a pickle of this class rebuilds: a key of _REOPEN_CLASSES, or None (a Mapping).
    _pickle_kind: str | None = None

    def __setitem__(self, key: Any, value: Any) -> None:
        """``m[key] = value`` writes into the mapped pages (modes ``'r+'``, ``'w+'``, ``'c'``)
        and, in ``'r+'``/``'w+'``, schedules the write-back of what it wrote
        (``msync(MS_ASYNC)``) before it returns: :meth:`flush` still makes it durable.

        Raises
        ------
        ValueError
            Mode ``'r'`` (read-only), or the mapping is closed.
        """
        if self.mode == "r":
            raise ValueError(f"assignment destination is read-only: the mapping of "
                             f"{self.filename!r} has mode 'r'")
        array = self.array
        array[key] = value
        if self.mode != "c":
            first, length = _written_bytes(array, key)
            try:
                self._flush_bytes(first, length, False)
            except ValueError:
                if not self.closed:
                    raise  # closed meanwhile by another thread: the write is in the pages


    # -- growing -----------------------------------------------------------------------------------

    def resize(self, shape: int | tuple[int, ...], *, truncate: bool = False) -> None:
        """Give the mapping a new shape (same dtype, order and file offset), mapping more or
        less of the file.

        A larger size grows the file first, with its blocks allocated as at open (a full
        disk is an :class:`OSError` here, not a fault later). A smaller size maps less and
        leaves the file as it is, unless ``truncate``: then the file ends where the mapping
        does. Arrays made before the resize stay valid over the region they were made on,
        which stays mapped until they are gone; :attr:`array` has the new shape. With no
        array alive the view is resized in place (Linux ``mremap``: its pages stay mapped
        and the cost does not grow with the size).

        Parameters
        ----------
        shape : int or tuple of int
            The new shape; at least one byte.
        truncate : bool, optional
            Cut the file at the new end of the mapping (a smaller size only).

        Raises
        ------
        ValueError
            The mapping is closed, read-only (``'r'``), copy-on-write (``'c'``), made from a
            file object without a name, the file at its name is another file by now, the
            new size is zero, or ``truncate`` would cut data after the mapping.
        BufferError
            ``truncate`` while arrays or other mappings of the file in this process are
            alive (they would fault), an operation (``flush``, ``prefetch``, ``chunks``) is
            running on the mapping, or another thread is resizing it. While a resize runs,
            those operations started by other threads raise :class:`BufferError` too.

        Examples
        --------
        >>> import mmarray, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "grow.f8")
        >>> m = mmarray.open(path, dtype="f8", mode="w+", shape=(2, 3))
        >>> m.array[:] = 1
        >>> m.resize((4, 3))
        >>> m.array[2:] = 2
        >>> m.array.sum(), os.path.getsize(path)
        (np.float64(18.0), 96)
        >>> m.close()
        """
        if self.closed:
            raise ValueError("mapping is closed")
        if self.mode not in ("r+", "w+"):
            raise ValueError(f"resize needs a writable mapping (mode 'r+' or 'w+'), this one "
                             f"has mode {self.mode!r}")
        self._refuse_if_faulted("resize()")
        filename = self.filename
        if filename is None:
            raise ValueError("resize reopens the file by name, and this mapping was made from "
                             "a file object without one")
        dims = _resize_dims(shape)
        nbytes = self.dtype.itemsize
        for d in dims:
            nbytes *= d
        if nbytes == 0:
            raise ValueError(f"shape {dims} is zero bytes; a mapping resizes to at least one "
                             f"byte (close it instead)")
        if self.offset + nbytes >= 1 << 63 or nbytes >= sys.maxsize:
            raise ValueError(f"shape {dims} of dtype {self.dtype} is {nbytes} bytes, which "
                             f"from offset {self.offset} reaches past the largest file or "
                             f"mapping; expected a size below 2**63 bytes in all")
        old_end = self.offset + self.nbytes
        end = self.offset + nbytes
        # Until the end, other threads' flush, advise, prefetch, chunks loops, raw buffers
        # and resizes are refused: the checks below still hold when the view moves.
        self._begin_resize()
        try:
            # A FileIO owns the descriptor from the open on: with os.open, an exception
            # (KeyboardInterrupt) landing before the try leaked it.
            with io.FileIO(filename, "r+") as file:
                fd = file.fileno()
                cut = truncate and end < old_end
                if cut:
                    self._check_cut(fd, old_end, end)
                # With cut, the engine checks again (arrays, other views) in the step that
                # moves the view, and truncates the file.
                self._resize(fd, nbytes, dims, True, cut)
        finally:
            self._end_resize()

    def _check_cut(self, fd: int, old_end: int, end: int) -> None:
        """Refuse a truncation that would pull pages from under arrays or other mappings, or
        drop data this mapping does not map."""
        if self.exports:
            raise BufferError(f"cannot truncate {self.filename!r} to {end} bytes: "
                              f"{self.exports} array(s) of this mapping are alive over the "
                              f"part that would be cut")
        identity = self._identity()
        if identity is not None and _engine.live_views(*identity) > 1:
            raise BufferError(f"cannot truncate {self.filename!r} to {end} bytes: other "
                              f"mappings of it are alive in this process")
        size = os.fstat(fd).st_size
        if size > old_end:
            raise ValueError(f"cannot truncate {self.filename!r} to {end} bytes: it has "
                             f"{size - old_end} bytes after the end of this mapping, which "
                             f"truncate would drop")

    # -- pickling by reference ----------------------------------------------------------------

    def _shared_file(self) -> tuple[str, _fileref.FileIdentity]:
        """(file name, identity) for a reference to this mapping's file, or raise TypeError
        naming why there can be none."""
        if self.mode == "c":
            raise TypeError(
                "a copy-on-write mapping (mode 'c') cannot be shared by reference: its "
                "changes live in this process's private pages, not in the file; pickle "
                "m.array.copy() to send the data")
        filename = self.filename
        if filename is None:
            raise TypeError("this mapping was made from a file object without a name, so no "
                            "other process can find its file; open the file by path to share "
                            "it")
        if not os.path.isabs(filename):
            raise TypeError(f"this mapping's file name {filename!r} is not absolute, so "
                            f"another process could find another file by it; open the file "
                            f"by an absolute path to share it")
        identity = self._identity()  # read before the check: a close in between is seen
        if identity is None:
            if self.nbytes and self.closed:
                raise ValueError(f"the Mapping of {filename!r} was closed and unmapped; "
                                 f"share it before close()")
            return filename, None
        return filename, _fileref.with_birth(filename, identity)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by reference: the file name, byte range, dtype, shape, order and mode, and
        the file's identity; never the data (a few hundred bytes whatever the size).

        Unpickling, in this process or another, maps the same range of the same file anew:
        mode ``'r'`` stays ``'r'``, ``'r+'`` stays ``'r+'`` and ``'w+'`` becomes ``'r+'``
        (nothing is ever created, truncated or grown by an unpickle). The receiver checks
        that the file it mapped is the one that was pickled (on the same host: same device
        and inode; anywhere: long enough for the range) and raises otherwise.

        Raises
        ------
        TypeError
            Mode ``'c'`` (pickle ``m.array.copy()`` instead), or a mapping of a file object
            that has no name.
        ValueError
            The mapping is closed.

        Examples
        --------
        >>> import mmarray, pickle, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "p.f4")
        >>> m = mmarray.open(path, dtype="f4", mode="w+", shape=(1000, 1000))
        >>> len(pickle.dumps(m)) < 1024
        True
        >>> other = pickle.loads(pickle.dumps(m))
        >>> other[0, 0] = 1.5          # the same file: the write shows through m
        >>> float(m[0, 0]), other.mode
        (1.5, 'r+')
        >>> other.close(); m.close()
        """
        filename, identity = self._shared_file()
        if self.closed:
            raise ValueError(f"cannot pickle a closed Mapping of {self.filename!r}; pickle it "
                             f"before close()")
        mode = "r+" if self.mode == "w+" else self.mode
        args: tuple[Any, ...] = (filename, self.offset, self.dtype, self.shape, self.order,
                                 mode, identity, _fileref.host_id())
        layout = self._layout(filename, identity)
        if layout is not None:  # (a mapping of no byte comes back as a plain Mapping)
            args += (layout, self._pickle_kind)
        return (_reopen, args)

    def _layout(self, filename: str, identity: _fileref.FileIdentity
                ) -> tuple[tuple[int, bytes], ...] | None:
        """The bytes of the file that say where this mapping's data lies (a ``.npy``
        header), read now, for a reference to carry; None for a raw file or no mapped byte."""
        spans: Any = self._format
        if spans is None or identity is None:
            return None
        kind = None
        if type(spans) is int:  # a .npy's header: it must still describe this mapping
            spans, kind = ((0, spans),), "npy"
        # Read once per spans (a resize that moves the data sets others): a header
        # rewritten since then stays a mismatch at the receiver, as it would be for a
        # reference made before; one only grown along its growth axis stays valid there.
        known = self._layout_read
        if known is not None and known[0] == spans:
            return known[1]
        layout = _fileref.read_layout(self, filename, identity, spans, kind)
        self._layout_read = (spans, layout)
        return layout

    def _reopened(self) -> None:
        """Called on a mapping just unpickled as this class (its layout checked)."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """dask's token: the file (name, identity, modification time) and the region; the
        same for every Mapping of the same range of the same unchanged file."""
        return ("mmarray.Mapping", self.filename, self._identity(), _mtime(self.filename),
                self.offset, self.dtype.str, self.dtype.descr, self.shape, self.order,
                self.mode, self.closed)

    def _byte_range(self, start: RowIndex, stop: RowIndex) -> tuple[int, int]:
        return _ranges.byte_range(self.shape, self.order, self.dtype.itemsize, start, stop)

    def _refuse_if_faulted(self, what: str) -> None:
        # A faulted view is zeros, not the file, and may no longer even map it (the guard
        # replaced it with anonymous memory): growing it would grow that, and writes after
        # would be lost without a word.
        if self._faults():
            raise _guard.error(self.filename, self.offset, self.offset + self.nbytes,
                               f"{what} of a mapping of {self.filename!r} that faulted "
                               f"(close it and open the file again)")

    @property
    def faulted(self) -> bool:
        """True once a page of this mapping could not be read or written (the file was
        truncated below it, an I/O error, a full disk under a sparse hole): the fault guard
        put a zero page there and raised :class:`~mmarray.MappedFileError` in the thread that
        touched it. Those pages read as zeros; writes to them do not reach the file, so
        :meth:`flush` and :meth:`close` of a writable mapping raise from then on."""
        return bool(self._faults())

    # close() is the engine's (Region.close), which calls this once the mapping is closed if
    # the fault guard caught faults in it.
    def _closed_faulted(self) -> None:
        """A mapping that faulted was just closed: in mode ``'r+'``/``'w+'`` what was written
        to the faulting pages is lost, so :meth:`close` raises
        :class:`~mmarray.MappedFileError` (the mapping is closed all the same)."""
        if self.mode in ("r+", "w+"):
            raise _guard.error(self.filename, self.offset, self.offset + self.nbytes,
                               "close() of a mapping that faulted")

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
        BufferError
            Another thread is resizing the mapping (:meth:`resize`): retry once it is done.
        OSError
            The write-back failed (for example EIO).
        MappedFileError
            The mapping faulted, or the file no longer covers the range flushed (another
            process truncated it): what was written past its end is lost.
        """
        if self.closed:
            raise ValueError("mapping is closed")
        first, length = self._byte_range(start, stop)  # checked in every mode
        if self.mode == "r" or self.mode == "c":
            return
        self._flush_checked(first, length, sync, "flush()")

    def _flush_checked(self, first: int, length: int, sync: bool, what: str) -> None:
        """Write bytes ``[first, first + length)`` back (``_flush_bytes``), then raise
        MappedFileError if writes were lost: the mapping faulted, or the file no longer
        covers the range (``what`` names the call in the message)."""
        self._flush_bytes(first, length, sync)
        if self._faults():
            raise _guard.error(self.filename, self.offset, self.offset + self.nbytes,
                               f"{what} of a mapping that faulted")
        self._check_covered(first, length, what)

    def _check_covered(self, first: int, length: int, what: str = "flush()") -> None:
        """MappedFileError unless the file still covers bytes ``[first, first + length)`` of
        the mapping: another process truncated it. msync(2) writes nothing back past the end
        of a file and reports nothing either (the truncation dropped those pages, written or
        not), and the fault guard hears of it only when a page there is touched again. Read
        by name (the mapping holds no descriptor); a name that leads to another file now
        says nothing of this one."""
        filename = self.filename
        identity = self._identity()
        if filename is None or not length or identity is None:
            return
        try:
            st = os.stat(filename)
        except (OSError, ValueError):
            return
        end = self.offset + first + length
        if (st.st_dev, st.st_ino) == tuple(identity[:2]) and st.st_size < end:
            begin = max(st.st_size, self.offset + first)
            raise _guard.MappedFileError(
                5, f"{what}: bytes {begin} to {end} of {filename!r} are past the end of the "
                   f"file, which is {st.st_size} bytes now (truncated since it was mapped, by "
                   f"another process or through another descriptor): they are not in the "
                   f"file, and whatever was written there is lost", filename, begin, end)

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

        Raises
        ------
        ValueError
            Unknown advice, advice the mode forbids, or the mapping is closed.
        BufferError
            Another thread is resizing the mapping (:meth:`resize`): retry once it is done.

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
        and page faults with the caller's work. Returns a handle with ``wait()``,
        ``cancel()`` and ``done``. Closing the mapping meanwhile stops the prefetch at its next
        step (at most 8 MiB on), and the unmap waits for the thread; until the prefetch ends,
        :meth:`resize` raises :class:`BufferError`.

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
               ahead: SupportsIndex = 2, *,
               drop_behind: bool | Literal["cache"] = False
               ) -> Iterator[np.ndarray[Any, np.dtype[Any]]]:
        """Iterate over views of ``rows`` rows each; the way to scan a mapping fast.

        With ``prefetch`` (default) a background thread populates up to ``ahead`` chunks
        beyond the one the caller is working on, so page faults and disk reads overlap the
        caller's computation instead of stalling it.

        With ``drop_behind``, the pages of each chunk are released from this process once
        the caller moves on to the next (scheduled for write-back first in modes ``'r+'`` and
        ``'w+'``, then ``madvise(MADV_DONTNEED)``): a scan of a file larger than memory keeps
        its resident size within a few chunks. The chunks stay valid; reading one again
        faults it in again. ``drop_behind="cache"`` also drops the pages from the page cache
        (written to the file first in ``'r+'``/``'w+'``, then
        ``posix_fadvise(POSIX_FADV_DONTNEED)`` as in :meth:`evict`), for a scan that must not
        push other data out of memory. Refused in mode ``'c'`` (it would discard private
        writes).

        Until a loop with ``drop_behind`` or ``prefetch`` ends (or its iterator is closed or
        dropped), :meth:`resize` raises :class:`BufferError`: the populator and the releases
        must go to the view the chunks are on. A loop started while another thread resizes
        the mapping raises :class:`BufferError` at its first chunk: retry once the resize is
        done.

        Examples
        --------
        >>> import mmarray, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s.f64")
        >>> with mmarray.open(path, dtype="f8", mode="w+", shape=(1000, 8)) as m:
        ...     m.array[:] = 1.0
        ...     float(sum(chunk.sum() for chunk in m.chunks(128)))
        8000.0
        """
        if isinstance(drop_behind, str):
            if drop_behind != "cache":
                raise ValueError(f"drop_behind must be False, True or 'cache', got "
                                 f"{drop_behind!r}")
        elif isinstance(drop_behind, (bool, np.bool_)):
            drop_behind = bool(drop_behind)
        else:
            raise TypeError(f"drop_behind must be False, True or 'cache', got "
                            f"{type(drop_behind).__name__} {drop_behind!r}")
        if drop_behind and self.mode == "c":
            raise ValueError("drop_behind on a copy-on-write mapping (mode 'c') would discard "
                             "its private changes; expected mode 'r', 'r+' or 'w+'")
        return _access.chunks(self, rows, prefetch, ahead, drop_behind)

Mapping.__module__ = "mmarray"
# Instances are deallocated by Region's deallocator, not CPython's generic one for classes
# (callgrind: ~130 instructions fewer per Mapping; the class has Region's layout).
_engine.set_region_dealloc(Mapping)
# close() of a Mapping is called by the interpreter from the call site, not through the
# generic call of a Cython method (callgrind: ~135 instructions fewer per close).
_engine.set_close_method(Mapping, doc_with_text_signature(_engine.Region.close, method=True))


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


#: Classes a pickled Mapping may come back as (``_pickle_kind`` -> class); _npy adds its own.
_REOPEN_CLASSES: dict[str, type[Mapping]] = {}


def _reopen(filename: str, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...],
            order: Order, mode: ShortMode, identity: _fileref.FileIdentity,
            host: str, layout: Any = None, kind: Any = None) -> Mapping:
    """Unpickle a :class:`Mapping`: map the pickled range of ``filename`` and prove it is the
    same file, and, with ``layout``, that the file still holds the header that said where the
    range lies. ``kind`` names the class to rebuild (None: Mapping). Creates, truncates and
    grows nothing (no CREATE, no GROW)."""
    _fileref.check_layout_field(layout, "a pickled Mapping")
    if kind is None:
        cls = Mapping
    else:
        found = _REOPEN_CLASSES.get(kind) if type(kind) is str else None
        if found is None or layout is None:
            raise TypeError(f"a pickled Mapping is of kind None or one of "
                            f"{sorted(_REOPEN_CLASSES)} (with a layout), got {kind!r:.50}")
        cls = found
    if mode not in ("r", "r+"):
        raise ValueError(f"a pickled Mapping has mode 'r' or 'r+', got {mode!r}")
    if not isinstance(dtype, np.dtype) or type(shape) is not tuple or not isinstance(
            filename, str) or type(offset) is not int:
        raise TypeError(f"a pickled Mapping holds a str file name, an int offset, a "
                        f"numpy.dtype and a tuple shape, got {type(filename).__name__}, "
                        f"{type(offset).__name__}, {type(dtype).__name__}, "
                        f"{type(shape).__name__}")
    _fileref.check_identity(identity, host, "a pickled Mapping")
    if not 0 <= offset < _fileref.LIMIT:
        raise ValueError(f"a pickled Mapping holds an offset in [0, 2**63), got {offset}")
    if any(type(n) is not int for n in shape):
        raise TypeError(f"a pickled Mapping holds a shape of ints, got {shape!r:.100}")
    if any(n < 0 for n in shape):
        raise ValueError(f"a pickled Mapping holds a shape of sizes >= 0, got {shape}")
    if order not in ("C", "F"):
        raise ValueError(f"a pickled Mapping has order 'C' or 'F', got {order!r:.50}")
    length = dtype.itemsize
    for n in shape:
        length *= n
    if offset + length >= _fileref.LIMIT:
        raise ValueError(f"a pickled Mapping of shape {shape} and dtype {dtype} at offset "
                         f"{offset} reaches past byte 2**63")
    try:
        m = map_region(path=filename, access=_READ if mode == "r" else _WRITE, offset=offset,
                       length=length, dtype=dtype, shape=shape, order=order, mode=mode,
                       filename=filename, cls=cls)
    except (ValueError, OSError) as exc:
        error = _fileref.remap_error(exc, "the pickled Mapping", filename, offset, length)
        if error is exc:
            raise
        raise error from exc
    _fileref.verify(m, filename, identity, host)
    _fileref.check_layout(m, filename, layout)
    if layout is not None:
        _fileref.keep_layout(m, layout)
    m._reopened()
    return m


def _mtime(filename: str | None) -> int | None:
    if filename is None:
        return None
    try:
        return os.stat(filename).st_mtime_ns
    except OSError:
        return None


def _written_bytes(array: np.ndarray[Any, Any], key: Any) -> tuple[int, int]:
    """(first byte, length) of ``array`` that ``array[key] = ...`` wrote, relative to the
    array's first byte: the extent of the view ``array[key]`` for basic indexing, the whole
    array for fancy indexing (whose targets need not be one range)."""
    if not _is_basic_index(key):
        return 0, array.nbytes
    view = array[view_key(key)]
    if not view.size:
        return 0, 0
    lo, hi = _extent(view)
    # view is a view of array (basic indexing), so [lo, hi) lies inside array's bytes.
    start = view.__array_interface__["data"][0] - array.__array_interface__["data"][0] + lo
    return start, hi - lo


def view_key(key: Any) -> Any:
    """A basic index ``key`` that gives an array even where ``key`` gives a scalar (one
    element): ``key`` with ``...`` appended, which makes numpy return a 0-d view. A field name
    already gives a view (and cannot share a tuple with ``...``)."""
    if isinstance(key, str):
        return key
    items = key if type(key) is tuple else (key,)
    if any(k is Ellipsis for k in items):
        return items
    return (*items, Ellipsis)


def _is_basic_index(key: Any) -> bool:
    """True for keys numpy answers with a view: ints, slices, Ellipsis, None, field names."""
    items = key if type(key) is tuple else (key,)
    for k in items:
        if k is None or k is Ellipsis or isinstance(k, (slice, str)):
            continue
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            continue
        return False
    return True


def _extent(array: np.ndarray[Any, Any]) -> tuple[int, int]:
    """(lowest, highest + 1) byte offsets that a non-empty ``array`` reaches, relative to
    its first element (negative strides reach below it)."""
    lo = hi = 0
    for n, stride in zip(array.shape, array.strides):
        step = (n - 1) * stride
        if step < 0:
            lo += step
        else:
            hi += step
    return lo, hi + array.itemsize


def _resize_dims(shape: Any) -> tuple[int, ...]:
    """The shape a resize asks for, as a tuple of non-negative ints (TypeError or ValueError
    naming it otherwise)."""
    try:
        return _check_dims((operator.index(shape),), shape)
    except TypeError:
        pass
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"resize expects an int or a tuple of ints as the new shape, got "
                        f"{shape!r} ({type(shape).__name__})") from None
    try:
        dims = tuple(operator.index(d) for d in items)
    except TypeError:
        raise TypeError(f"resize expects an int or a tuple of ints as the new shape, got "
                        f"{shape!r}") from None
    return _check_dims(dims, shape)


def _check_dims(dims: tuple[int, ...], shape: Any) -> tuple[int, ...]:
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension; expected sizes >= 0")
    if len(dims) > 64:
        raise ValueError(f"shape {shape!r} has {len(dims)} dimensions; expected at most 64")
    return dims
