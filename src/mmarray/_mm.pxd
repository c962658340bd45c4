# The C contract (csrc/mm.h): its externs alone, as h5py's defs.pxd and uvloop's includes
# keep them, apart from the engine's extension types (_engine.pxd).
from libc.stdint cimport int64_t, intptr_t, uint32_t, uint64_t


cdef extern from "mm.h" nogil:
    ctypedef struct mm_view:
        char *data
        uint64_t length
        int access
        uint64_t file_id[2]

    ctypedef struct mm_fault:
        uint64_t token
        uint32_t slot
        uint64_t offset
        uint64_t thread
        uint64_t native_thread

    ctypedef struct mm_error:
        int status
        int64_t code
        uint64_t file_size

    ctypedef intptr_t mm_handle

    enum:
        # mm_access
        MM_READ
        MM_WRITE
        MM_COPY
        # flags
        MM_CREATE
        MM_GROW
        MM_POPULATE
        MM_TRUNCATE
        # mm_status
        MM_OK
        MM_E_ARG
        MM_E_OPEN
        MM_E_STAT
        MM_E_RANGE
        MM_E_GROW
        MM_E_MAP
        MM_E_FLUSH
        MM_E_UNMAP
        MM_E_ADVISE
        MM_E_QUERY
        MM_E_EMPTY
        MM_E_FAULT
        # mm_advice
        MM_ADV_NORMAL
        MM_ADV_SEQUENTIAL
        MM_ADV_RANDOM
        MM_ADV_WILLNEED
        MM_ADV_DONTNEED
        MM_ADV_HUGEPAGE
        MM_ADV_NOHUGEPAGE
        MM_ADV_POPULATE_READ
        MM_ADV_POPULATE_WRITE

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
    # mm.h declares consumer and stop `const volatile`, progress `volatile`: another thread
    # writes (reads) them while the loop runs, and volatile keeps the C compiler re-reading
    # (storing) them.
    int mm_populate_ahead(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                          uint64_t window, const volatile uint64_t *consumer,
                          const volatile int *stop, volatile uint64_t *progress,
                          uint64_t idle_limit_us, mm_error *err)
    void mm_pause(unsigned microseconds)
    int mm_unmap(mm_view *view, mm_error *err)
    int mm_path_identity(const char *path, uint64_t id[3], mm_error *err)
    int mm_open_read(const char *path, int access, void *buf, uint64_t n, uint64_t *got,
                     mm_handle *handle, mm_error *err)
    void mm_close_handle(mm_handle handle)
    int mm_remap(mm_view *view, mm_handle handle, uint64_t offset, uint64_t length, int flags,
                 mm_error *err)

    # The fault guard (POSIX; stubs on Windows).
    int mm_guard_install(mm_error *err)
    int mm_guard_uninstall(mm_error *err)
    int mm_guard_wake_fd()
    int mm_guard_new_pipe(mm_error *err)
    int mm_guard_keep_front(mm_error *err)
    int mm_guard_add(mm_view *view, uint64_t token, void *owner, mm_error *err)
    void *mm_guard_owner(const mm_fault *fault)
    void mm_guard_remove(mm_view *view)
    uint64_t mm_guard_faults(const mm_view *view)
    int mm_guard_pop(mm_fault *fault)
    uint64_t mm_guard_take_lost()
    uint64_t mm_guard_recorded()
    uint64_t mm_guard_taken()
