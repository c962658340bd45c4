# Declarations: the C contract (csrc/mm.h) and the engine's extension types.
cimport cython
from libc.stdint cimport int64_t, uint64_t, intptr_t


cdef extern from "mm.h" nogil:
    ctypedef struct mm_view:
        char *data
        uint64_t length
        int access
        uint64_t file_id[2]

    ctypedef struct mm_error:
        int status
        int64_t code
        uint64_t file_size

    ctypedef intptr_t mm_handle

    enum:
        MM_READ
        MM_WRITE
        MM_COPY
        MM_CREATE
        MM_GROW
        MM_POPULATE
        MM_TRUNCATE
        MM_OK
        MM_E_RANGE
        MM_E_EMPTY

    uint64_t MM_TO_END

    uint64_t mm_alignment()
    uint64_t mm_page_size()
    uint64_t mm_align_down(uint64_t value, uint64_t alignment)
    int mm_map_path(const char *path, int access, uint64_t offset, uint64_t length, int flags,
                    mm_view *view, mm_error *err)
    int mm_map_handle(mm_handle handle, int access, uint64_t offset, uint64_t length, int flags,
                      mm_view *view, mm_error *err)
    int mm_flush(const mm_view *view, uint64_t start, uint64_t length, int sync, mm_error *err)
    int mm_advise(const mm_view *view, uint64_t start, uint64_t length, int advice,
                  mm_error *err)
    int mm_resident(const mm_view *view, uint64_t start, uint64_t length, uint64_t *resident,
                    uint64_t *total, mm_error *err)
    int mm_populate_ahead(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                          uint64_t window, const uint64_t *consumer, const int *stop,
                          uint64_t idle_limit_us, mm_error *err)
    void mm_pause(unsigned microseconds)
    int mm_unmap(mm_view *view, mm_error *err)


@cython.auto_pickle(False)
cdef class Mapping:
    cdef mm_view view          # the mapped region; view.data is NULL once unmapped or if empty
    cdef Py_ssize_t _exports   # live buffer exports: arrays (through _ArrayExport) and memoryviews
    cdef bint _closed          # close() was called; unmap happens when _exports drops to 0
    cdef bint _readonly
    cdef bint _raw_exported    # handed out a raw buffer: unmap waits for __dealloc__
    cdef object _dtype
    cdef object _shape
    cdef object _order
    cdef object _mode
    cdef object _filename
    cdef uint64_t _offset
    # Identity of the mapped file while registered in _live_files. C fields, not an object:
    # the garbage collector's cycle clearing (tp_clear) empties object fields before
    # __dealloc__ runs, and the registration must still be undone then.
    cdef uint64_t _file_dev, _file_ino
    cdef bint _registered
    cdef object __weakref__

    cdef int _acquire(self) except -1
    cdef int _release(self) except -1
    cdef int _unmap_now(self) except -1


@cython.auto_pickle(False)
cdef class _ArrayExport:
    cdef Mapping mapping


@cython.auto_pickle(False)
cdef class _PopulateAhead:
    cdef Mapping mapping
    cdef uint64_t start, end, step, window
    cdef uint64_t consumer     # byte position the consumer has reached (written under the GIL)
    cdef int stop              # set to 1 to end the populating loop
