# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""The engine: one mapped region per `Mapping`, its buffer exports and its lifetime.

Thin on purpose: types, errors and lifetimes live here; policy (argument checking, shapes,
modes, messages) lives in the Python modules. All OS work is done by the C layer (csrc/mm.h)
with the GIL released.

Lifetime rules
--------------
* Every buffer handed out -- a memoryview of the Mapping, or an array from ``Mapping.array``
  (through a private ``_ArrayExport`` that lives exactly as long as the array and its views) --
  counts as one export.
* ``close()`` with no live export unmaps at once; with live exports it marks the Mapping closed
  and the last release unmaps. Nothing ever reads or writes through an unmapped pointer.
* Operations that use the region with the GIL released (flush, advise, resident) hold an
  export for their duration, so a concurrent close defers the unmap until they finish.
* Counters change only while holding the GIL, and the view is copied out and cleared before
  the GIL is released to unmap, so racing threads cannot unmap twice or use a stale view.
"""
cimport cython
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.exc cimport PyErr_WriteUnraisable
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_release_lock, PyThread_type_lock)
from libc.stdint cimport uint64_t, int64_t
from libc.string cimport memset

cimport numpy as cnp
from cpython.ref cimport Py_INCREF

import os as _os

import numpy as _np

cnp.import_array()


cdef extern from "numpy/arrayobject.h":
    # numpy's C API (the .pxd leaves it commented out). Steals a reference to descr.
    object PyArray_NewFromDescr(object subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims,
                                cnp.npy_intp *strides, void *data, int flags, object obj)

from mmarray import _access, _errors, _ranges

cdef object _ndarray = _np.ndarray
# A valid address for empty mappings: buffers must not carry NULL (an empty region has no view).
cdef char _empty_byte = 0

# Files this process maps, (st_dev, st_ino) -> number of live views: what lets mode 'w+' refuse
# to truncate a file whose mapped pages would then fault (SIGBUS) on the next access.
_live_files = {}
# Held across "check the registry, truncate, map, register" (mode 'w+') and "map, register"
# (every other map), so that no thread truncates a file between another thread's mmap and its
# registration. Taken without the GIL (see _lock_registry), so holders may need the GIL.
cdef PyThread_type_lock _registry_lock = PyThread_allocate_lock()

ALIGNMENT = mm_alignment()
PAGE_SIZE = mm_page_size()
TO_END = MM_TO_END
READ = MM_READ
WRITE = MM_WRITE
COPY = MM_COPY
CREATE = MM_CREATE
GROW = MM_GROW
POPULATE = MM_POPULATE


cdef object _new_array(Mapping m, type subtype, object export):
    """An array of ``subtype`` over the mapped region, based on ``export`` (which holds the
    export for the array's lifetime). The C API call that ``ndarray.__new__(buffer=...)``
    ends in, without parsing its arguments (measured: ~0.4 us less per array)."""
    cdef cnp.npy_intp dims[64]     # NPY_MAXDIMS in numpy 2; numpy 1.x allows 32
    cdef cnp.dtype descr = m._dtype
    cdef int nd = len(m._shape), i, flags = 0
    if nd > 64:
        raise ValueError(f"shape {m._shape!r} has more than 64 dimensions")
    for i in range(nd):
        dims[i] = m._shape[i]
    if not m._readonly:
        flags |= cnp.NPY_ARRAY_WRITEABLE
    if m._order == "F":
        flags |= cnp.NPY_ARRAY_F_CONTIGUOUS
    Py_INCREF(descr)               # PyArray_NewFromDescr steals it
    # data is the mapping's first byte; the shape was checked against the mapped length.
    array = PyArray_NewFromDescr(subtype, descr, nd, dims, NULL, m.view.data, flags, None)
    cnp.set_array_base(array, export)
    return array


cdef int _raise(const mm_error *err, object filename, uint64_t offset, uint64_t length) except -1:
    raise _errors.from_status(err.status, err.code, err.file_size, filename, offset, length)


@cython.auto_pickle(False)
cdef class Mapping:
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

    def __init__(self, *args, **kwargs):
        raise TypeError("Mapping objects are made by mmarray.open() or mmarray.load(), "
                        "not directly")

    def __cinit__(self):
        memset(&self.view, 0, sizeof(mm_view))
        self._exports = 0
        self._closed = True          # a bare Mapping (not made by map_file) maps nothing
        self._readonly = True

    def __dealloc__(self):
        # No export can be alive here (each holds a reference to self).
        cdef mm_error err
        if self.view.data != NULL and self.view.data != &_empty_byte:
            _unregister(self)
            with nogil:
                mm_unmap(&self.view, &err)

    # -- lifetime ---------------------------------------------------------------------------

    cdef int _acquire(self) except -1:
        if self._closed:
            raise ValueError("mapping is closed")
        self._exports += 1
        return 0

    cdef int _release(self) except -1:
        self._exports -= 1
        if self._exports == 0 and self._closed:
            self._unmap_now()
        return 0

    cdef int _unmap_now(self) except -1:
        cdef mm_view view = self.view
        cdef mm_error err
        cdef int status
        if self._raw_exported:
            # A raw buffer consumer (np.ndarray(buffer=m), C code) may keep the pointer with
            # only a reference to self, not an export: unmap when self is garbage (__dealloc__).
            return 0
        if view.data == NULL or view.data == &_empty_byte:
            self.view.data = NULL
            return 0
        # Clear before releasing the GIL: no other thread can see the view from here on.
        memset(&self.view, 0, sizeof(mm_view))
        _unregister(self)
        with nogil:
            status = mm_unmap(&view, &err)
        if status != MM_OK:
            _raise(&err, self._filename, 0, 0)
        return 0

    def close(self, strict=False):
        """Close the mapping.

        Idempotent. With no exported array or memoryview alive the region is unmapped now.
        Otherwise the Mapping is marked closed and the region stays mapped until the last
        export is released, so no array is ever left pointing at unmapped memory.

        Once the Mapping itself has been used as a buffer (``memoryview(m)``,
        ``np.frombuffer(m)``, ``np.ndarray(buffer=m)``), the unmap waits until the Mapping
        object is garbage: some buffer consumers keep the pointer while holding only a
        reference to the Mapping, not an export. Arrays from :attr:`array` are counted
        exactly and do not have this cost.

        Parameters
        ----------
        strict : bool, optional
            If True and exports are alive, raise :class:`BufferError` and change nothing.

        Raises
        ------
        BufferError
            ``strict=True`` and arrays or memoryviews of this mapping are alive.
        OSError
            Unmapping failed.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> m = mmarray.open(path, mode="w+", shape=4)
        >>> a = m.array
        >>> m.close(strict=True)
        Traceback (most recent call last):
        ...
        BufferError: cannot close strictly: 1 export(s) of this mapping are alive
        >>> m.close(); m.closed, m.exports
        (True, 1)
        """
        if self._closed:
            return
        if strict and self._exports:
            raise BufferError(
                f"cannot close strictly: {self._exports} export(s) of this mapping are alive")
        self._closed = True
        if self._exports == 0:
            self._unmap_now()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    # -- properties -------------------------------------------------------------------------

    @property
    def closed(self):
        """True once :meth:`close` was called (the region may still be mapped for live arrays)."""
        return self._closed

    @property
    def exports(self):
        """Number of live exports: arrays from :attr:`array` (with their views) and memoryviews."""
        return self._exports

    @property
    def dtype(self):
        """The :class:`numpy.dtype` of the mapped array."""
        return self._dtype

    @property
    def shape(self):
        """The shape of the mapped array, a tuple."""
        return self._shape

    @property
    def order(self):
        """Memory layout, ``'C'`` or ``'F'``."""
        return self._order

    @property
    def offset(self):
        """Byte offset of the array's first element in the file."""
        return self._offset

    @property
    def mode(self):
        """The mode the file was mapped with: ``'r'``, ``'r+'``, ``'w+'`` or ``'c'``."""
        return self._mode

    @property
    def filename(self):
        """Absolute path of the mapped file, or None if it was given as a file object."""
        return self._filename

    @property
    def nbytes(self):
        """Size of the mapped array in bytes."""
        return self.size * self._dtype.itemsize

    @property
    def size(self):
        """Number of elements."""
        cdef Py_ssize_t n = 1
        for d in self._shape:
            n *= d
        return n

    # -- arrays and buffers -----------------------------------------------------------------

    @property
    def array(self):
        """A new plain :class:`numpy.ndarray` over the mapped region.

        Each access returns a new array object (not a subclass) that keeps the region mapped for
        as long as it, or any view derived from it, is alive. Read-only for mode ``'r'``.

        Raises
        ------
        ValueError
            The mapping is closed.
        """
        cdef _ArrayExport export = _ArrayExport.__new__(_ArrayExport)
        self._acquire()              # count first: the array below may trigger GC
        export.mapping = self
        return _new_array(self, _ndarray, export)

    def _array_of(self, type subtype):
        """As :attr:`array`, of an ndarray subclass (``mmarray.memmap``)."""
        cdef _ArrayExport export = _ArrayExport.__new__(_ArrayExport)
        self._acquire()
        export.mapping = self
        return _new_array(self, subtype, export)

    def _export(self):
        """A new export object to build an array on (``ndarray.__new__(..., buffer=it)``).

        It counts as one export from now until it is garbage: keep it only as an array's buffer.
        """
        cdef _ArrayExport export = _ArrayExport.__new__(_ArrayExport)
        self._acquire()
        export.mapping = self
        return export

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if (flags & PyBUF_WRITABLE) and self._readonly and not self._closed:
            raise BufferError("mapping is read-only (mode 'r')")
        self._acquire()
        self._raw_exported = True  # see _unmap_now: the consumer may outlive its export
        _fill_buffer(self, buffer, self)

    def __releasebuffer__(self, Py_buffer *buffer):
        try:
            self._release()
        except BaseException:
            PyErr_WriteUnraisable(self)

    def _mapped_length(self):
        """Bytes mapped (0 once unmapped)."""
        return self.view.length if self.view.data != &_empty_byte else 0

    # -- region operations --------------------------------------------------------------------

    def _byte_range(self, start, stop):
        return _ranges.byte_range(self._shape, self._order, self._dtype.itemsize, start, stop)

    def flush(self, start=None, stop=None, sync=True):
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
        if self._closed:
            raise ValueError("mapping is closed")
        if self._mode == "r" or self._mode == "c":
            return
        first, length = self._byte_range(start, stop)
        self._flush_bytes(first, length, sync)

    def advise(self, advice, start=None, stop=None):
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
        if self._closed:
            raise ValueError("mapping is closed")
        if code == 8 and self._readonly:
            raise ValueError("advice 'populate_write' needs a writable mapping (mode 'r+', "
                             "'w+' or 'c'), this one has mode 'r'")
        first, length = self._byte_range(start, stop)
        self._advise_bytes(first, length, code)

    def resident(self, start=None, stop=None):
        """Fraction (0.0 to 1.0) of the pages of rows ``[start, stop)`` that are in memory.

        Uses ``mincore`` (Windows: ``QueryWorkingSetEx``, which sees only this process's
        working set). An empty range gives 1.0.
        """
        if self._closed:
            raise ValueError("mapping is closed")
        first, length = self._byte_range(start, stop)
        resident, total = self._resident_bytes(first, length)
        return resident / total if total else 1.0

    def evict(self, start=None, stop=None):
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

    def prefetch(self, start=None, stop=None):
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
        first, length = self._byte_range(start, stop)
        if self._closed:
            raise ValueError("mapping is closed")
        return _access.Prefetch(self, first, length)

    def chunks(self, rows, prefetch=True, ahead=2):
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

    # -- region operations (byte ranges relative to the array's first byte) -----------------

    def _flush_bytes(self, uint64_t start, uint64_t length, bint sync):
        cdef mm_error err
        cdef int status
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return
        self._acquire()
        try:
            with nogil:
                status = mm_flush(&self.view, start, length, sync, &err)
            if status != MM_OK:
                _raise(&err, self._filename, start, length)
        finally:
            self._release()

    def _advise_bytes(self, uint64_t start, uint64_t length, int advice):
        cdef mm_error err
        cdef int status
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return
        self._acquire()
        try:
            with nogil:
                status = mm_advise(&self.view, start, length, advice, &err)
            if status != MM_OK:
                _raise(&err, self._filename, start, length)
        finally:
            self._release()

    def _resident_bytes(self, uint64_t start, uint64_t length):
        cdef mm_error err
        cdef int status
        cdef uint64_t resident = 0, total = 0
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return 0, 0
        self._acquire()
        try:
            with nogil:
                status = mm_resident(&self.view, start, length, &resident, &total, &err)
            if status != MM_OK:
                _raise(&err, self._filename, start, length)
        finally:
            self._release()
        return resident, total

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (f"<mmarray.Mapping {state} mode={self._mode!r} dtype={self._dtype} "
                f"shape={self._shape} offset={self._offset} file={self._filename!r} "
                f"exports={self._exports}>")

    def __reduce__(self):
        raise TypeError("cannot pickle a Mapping; pickle Mapping.array (a copy of the data) "
                        "or reopen the file by name")


cdef inline void _fill_buffer(Mapping m, Py_buffer *buffer, object owner):
    buffer.buf = m.view.data
    buffer.obj = owner
    buffer.len = <Py_ssize_t>m.view.length
    buffer.readonly = m._readonly
    buffer.itemsize = 1
    buffer.format = "B"
    buffer.ndim = 1
    buffer.shape = &buffer.len
    buffer.strides = &buffer.itemsize
    buffer.suboffsets = NULL
    buffer.internal = NULL


@cython.auto_pickle(False)  # a copy would release an export it never acquired
cdef class _ArrayExport:
    """Holds one export of a Mapping for exactly as long as the array built on it lives.

    ``ndarray.__new__(buffer=obj)`` releases obj's buffer at once and keeps only a reference to
    obj, so the export is counted here, from creation to deallocation, not in the buffer call.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("_ArrayExport objects are made by Mapping.array, not directly")

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        # The Mapping cannot be unmapped while self exists (self holds one export).
        if self.mapping is None:
            raise ValueError("export is not attached to a mapping")
        if (flags & PyBUF_WRITABLE) and self.mapping._readonly:
            raise BufferError("mapping is read-only (mode 'r')")
        _fill_buffer(self.mapping, buffer, self)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __reduce__(self):
        raise TypeError("cannot pickle or copy an array export (it counts one use of a "
                        "mapping); copy the array instead")

    def __dealloc__(self):
        if self.mapping is not None:
            try:
                self.mapping._release()
            except BaseException:
                PyErr_WriteUnraisable(self.mapping)

    @property
    def mapping(self):
        """The Mapping this array export belongs to."""
        return self.mapping


def map_file(file, int access, uint64_t offset, uint64_t length, int flags, dtype, shape,
             order, mode, filename, type cls=Mapping):
    """Map ``[offset, offset + length)`` of ``file`` and return a ``cls`` (a Mapping).

    ``file`` is ``bytes`` (an encoded path), an ``int`` (an OS handle: fd or HANDLE) or None
    (an empty mapping: no OS call). ``length`` may be ``TO_END``; ``shape`` None then becomes
    1-D over the mapped length when it is a multiple of the itemsize, and stays None (for the
    caller to refuse) when it is not.
    """
    cdef Mapping m = cls.__new__(cls)
    cdef mm_error err
    cdef int status
    cdef const char *path
    cdef mm_handle handle
    if file is None:
        m.view.data = &_empty_byte
        m.view.length = 0
    else:
        _lock_registry()
        try:
            if isinstance(file, bytes):
                if flags & MM_CREATE:
                    _refuse_if_mapped(file, filename)  # MM_CREATE truncates an existing file
                path = file
                with nogil:
                    status = mm_map_path(path, access, offset, length, flags, &m.view, &err)
            else:
                handle = file
                with nogil:
                    status = mm_map_handle(handle, access, offset, length, flags, &m.view,
                                           &err)
            if status != MM_OK:
                _raise(&err, filename, offset, length)
            key = (m.view.file_id[0], m.view.file_id[1])
            _live_files[key] = _live_files.get(key, 0) + 1
            m._file_key = key
        finally:
            PyThread_release_lock(_registry_lock)
    if shape is None and m.view.length % dtype.itemsize == 0:
        shape = (m.view.length // dtype.itemsize,)   # 1-D over what was mapped
    m._closed = False
    m._readonly = access == MM_READ
    m._dtype = dtype
    m._shape = shape
    m._order = order
    m._mode = mode
    m._filename = filename
    m._offset = offset
    return m


cdef inline void _unregister(Mapping m):
    key = m._file_key
    if key is None:
        return
    m._file_key = None
    n = _live_files.get(key, 0) - 1
    if n > 0:
        _live_files[key] = n
    else:
        _live_files.pop(key, None)


def live_views(st_dev, st_ino):
    """Number of live mapped views of the file with this identity in this process."""
    return _live_files.get((st_dev, st_ino), 0)


cdef int _lock_registry() except -1:
    # Uncontended: take it with the GIL held. Contended: wait without the GIL, since the
    # holder may need the GIL to finish (register, raise) before it releases the lock.
    cdef int got = PyThread_acquire_lock(_registry_lock, NOWAIT_LOCK)
    if not got:
        with nogil:
            PyThread_acquire_lock(_registry_lock, WAIT_LOCK)
    return 0


cdef int _refuse_if_mapped(path, name) except -1:
    """Raise if ``path`` names a file this process maps. Call with the registry lock held."""
    if not _live_files:
        return 0
    try:
        st = _os.stat(path)
    except OSError:
        return 0  # missing: nothing to truncate; other errors surface from the open itself
    n = _live_files.get((st.st_dev, st.st_ino), 0)
    if n:
        raise _errors.truncation_refused(name, n)
    return 0


def truncate_guarded(path, name, truncate, *args):
    """Call ``truncate(*args)``, which truncates the file at ``path``, unless this process maps
    that file (ValueError). Atomic with respect to every mapping made by this module."""
    _lock_registry()
    try:
        _refuse_if_mapped(path, name)
        return truncate(*args)
    finally:
        PyThread_release_lock(_registry_lock)


@cython.auto_pickle(False)
cdef class _PopulateAhead:
    """Populate a byte range of a Mapping from a background thread, a window ahead of a
    consumer. ``run()`` loops in C without the GIL (call it from a thread); the consumer calls
    ``advance(pos)`` as it goes and ``cancel()`` when it stops early."""

    def __cinit__(self, Mapping mapping not None, uint64_t start, uint64_t end, uint64_t step,
                  uint64_t window):
        self.mapping = mapping
        self.start = start
        self.end = end
        self.step = step
        self.window = window
        self.consumer = start
        self.stop = 0

    def __reduce__(self):
        raise TypeError("cannot pickle or copy a populate-ahead loop")

    def advance(self, uint64_t position):
        self.consumer = position

    def cancel(self):
        self.stop = 1

    def run(self):
        """Populate until done or cancelled; raises the C layer's error, ValueError if closed."""
        cdef mm_error err
        cdef int status
        self.mapping._acquire()      # the region stays mapped while the loop runs
        try:
            with nogil:
                status = mm_populate_ahead(&self.mapping.view, self.start, self.end, self.step,
                                           self.window, &self.consumer, &self.stop, &err)
            if status != MM_OK:
                _raise(&err, self.mapping._filename, self.start, self.end - self.start)
        finally:
            self.mapping._release()
