# Declarations of the engine's extension types (the C contract's externs are in _mm.pxd).
cimport cython
from libc.stdint cimport uint64_t


from mmarray._mm cimport mm_error, mm_view

cdef class _Retired


@cython.auto_pickle(False)
cdef class Region:
    cdef mm_view view          # the mapped region; view.data is NULL once unmapped or if empty
    cdef Py_ssize_t _exports   # live buffer exports: arrays (through _ArrayExport) and memoryviews
    cdef Py_ssize_t _busy      # of those, held by operations running without the GIL
    cdef Py_ssize_t _pins      # of those, held by _Pin objects: no resize or rebase meanwhile
    cdef bint _closed          # close() was called; unmap happens when _exports drops to 0
    cdef bint _readonly
    cdef bint _raw_exported    # handed out a raw buffer: unmap waits for __dealloc__
    cdef object _dtype
    # The shape, a tuple, or None before _set_shape gives it. The fast open leaves it None
    # with _length1 >= 0 for the shape (_length1,), made the first time it is asked for
    # (_shape_of): most arrays of a 1-D open never need the tuple.
    cdef object _shape
    cdef Py_ssize_t _length1
    cdef object _order
    cdef object _mode
    cdef object _filename
    cdef uint64_t _offset
    # Identity of the mapped file while registered in _live_files. C fields, not an object:
    # the garbage collector's cycle clearing (tp_clear) empties object fields before
    # __dealloc__ runs, and the registration must still be undone then.
    cdef uint64_t _file_dev, _file_ino
    cdef bint _registered
    # The fault guard's token for this view (0: not guarded), and the faults it caught, kept
    # once the view is gone.
    cdef uint64_t _guard_token
    cdef uint64_t _faults_at_unmap
    # Resizes (Mapping.resize): the view's generation, and the views of earlier generations
    # kept mapped for the arrays made on them (a list of _Retired, None until the first).
    cdef Py_ssize_t _generation
    cdef object _retired
    # The resize running on this region (Mapping.resize: _begin_resize to _end_resize): the
    # thread running it, how deeply it nests, and the fork generation it began in (a child
    # forked meanwhile has no such thread: the mark is stale there).
    cdef unsigned long _resizer
    cdef Py_ssize_t _resize_depth
    cdef Py_ssize_t _resize_fork
    # The populating loops (_PopulateAhead) running on it, a set (None before the first):
    # close() stops them, so that no background thread goes on faulting a closed mapping in.
    cdef object _loops
    cdef object __weakref__
    # Kept for the Python layer, which alone gives them a meaning (mmarray.Mapping: what says
    # where the data lies in the file, and the layout read for the first pickle); None until
    # it sets them. Here rather than in that class's __slots__: its instances then have this
    # type's layout, and their deallocation skips CPython's (set_region_dealloc). (Never an
    # array of the region: numpy arrays are not tracked by the garbage collector, so such a
    # cycle would never be freed.)
    cdef public object _format
    cdef public object _layout_read

    # Final: no class overrides them (a class statement cannot), so they are called directly,
    # not through the type's table of C methods, and the compiler may inline them.
    @cython.final
    cdef int _acquire(self) except -1
    @cython.final
    cdef bint _resized_elsewhere(self)
    @cython.final
    cdef int _refuse_while_resized(self) except -1
    @cython.final
    cdef int _release(self) except -1
    @cython.final
    cdef int _release_export(self, Py_ssize_t generation) except -1
    @cython.final
    cdef int _retire(self, mm_view view) except -1
    @cython.final
    cdef void _drop_placeholder(self, _Retired retired) noexcept
    @cython.final
    cdef void _undo_rebase(self, mm_view *fresh, _Retired retired) noexcept
    @cython.final
    cdef void _finish_rebase(self, mm_view *fresh, _Retired retired) noexcept
    @cython.final
    cdef bint _retired_holds(self, mm_view view)
    @cython.final
    cdef Py_ssize_t _acquire_busy(self) except -1
    @cython.final
    cdef int _release_busy(self, Py_ssize_t generation) except -1
    @cython.final
    cdef int _unmap_now(self) except -1
    @cython.final
    cdef uint64_t _fault_count(self)
    @cython.final
    cdef object _shape_of(self)
    @cython.final
    cdef int _give_shape(self, shape) except -1


@cython.auto_pickle(False)
# Not tracked by the collector (~90 instructions fewer per array made and freed): no cycle
# passes through an export. Arrays refer to one (numpy arrays are never tracked, so a cycle
# through them is never freed anyway), and buffers of it; the Region it refers to refers to
# none: the package keeps names, shapes, dtypes and ints in its object fields. (A program
# that stored an export in a Region's private _format would leak both.)
@cython.no_gc
cdef class _ArrayExport:
    cdef Region mapping
    cdef Py_ssize_t generation   # the mapping's view generation the array was made on
    cdef char *data              # that generation's view: what a buffer of this export serves
    cdef Py_ssize_t length


@cython.auto_pickle(False)
cdef class _Retired:
    cdef mm_view view            # an earlier view of a resized Region, still mapped
    cdef Py_ssize_t exports      # arrays still made on it
    cdef Py_ssize_t generation
    cdef uint64_t file_dev, file_ino
    cdef uint64_t guard_token    # the token its guard slot was taken with (0: unguarded)
    cdef uint64_t offset         # file offset of its first byte (a rebase moves the Region's)
    # A rebase's placeholder while its commit runs: what a forked child needs to finish
    # or undo the move (Region._rebase, _reset_after_fork).
    cdef mm_view pending         # the new view
    cdef uint64_t pending_offset
    cdef object pending_shape
    cdef object pending_name     # bytes: the path the commit puts the new file at, or None
    cdef unsigned long rebaser   # the thread running the rebase
    cdef int _unmap(self) except -1


@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class _Pin:
    cdef Region mapping        # None once released
    cdef unsigned long owner   # the thread that made it: a forked child drops other threads'
    cdef object __weakref__    # listed weakly in _live_pins: garbage releases it


@cython.auto_pickle(False)
cdef class _PopulateAhead:
    cdef Region mapping
    cdef uint64_t start, end, step, window
    cdef uint64_t consumer     # byte position the consumer has reached (written under the GIL)
    cdef int stop              # set to 1 to end the populating loop
    cdef uint64_t progress     # written by the loop: it never touches a byte below this again
