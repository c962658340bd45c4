/*
 * mm.h -- the mapping layer's contract.
 *
 * Plain C99, no Python.h. Two files implement every function declared here with the same
 * behaviour: mm_posix.c (mmap/munmap/msync/madvise/mincore) and mm_win32.c
 * (CreateFileMapping/MapViewOfFile/FlushViewOfFile/UnmapViewOfFile). The build picks one
 * file; no function body contains a platform #ifdef. Where the systems themselves differ
 * (OS error codes, what mm_resident counts, resetting a file that is mapped, the one handle
 * a Windows MM_WRITE view keeps) this header says so where it applies.
 *
 * Rules every implementation follows:
 *  - Callers never see alignment. A request for [offset, offset + length) is mapped from
 *    offset aligned down to mm_alignment(); the view remembers the delta and `data` points at
 *    the requested byte. Unmap uses the aligned base.
 *  - All offsets and lengths are 64-bit.
 *  - A live view holds no file descriptor, file handle or mapping handle: they are closed
 *    as soon as the view exists. One exception, on Windows: a MM_WRITE view keeps a duplicate
 *    of the file handle (view->flush_handle) because "FlushFileBuffers function (fileapi.h)"
 *    needs a handle for a durable flush, and reopening the file by path could reach another
 *    file (renamed over it) or none. The duplicate names the file object the view keeps open
 *    anyway ("UnmapViewOfFile function (memoryapi.h)"), so it changes no sharing or delete
 *    rule; mm_unmap closes it. POSIX needs none: msync(2) works on the mapping.
 *  - Errors are a status code (mm_status) plus the OS error code saved at the failing call
 *    (errno on POSIX, GetLastError() on Windows) in an mm_error the caller owns. Nothing is
 *    printed, nothing global is written.
 *  - `err` may be NULL in every function: the status is still returned, the details are
 *    dropped. Every other pointer parameter (view, path, resident, total, consumer, stop) must
 *    not be NULL: a NULL one is MM_E_ARG.
 *  - The rules both files share (argument checks and their order, what a map does to the
 *    file it has sized, page ranges, cached sizes) are written once, in the private header
 *    mm_internal.h.
 *  - Byte ranges passed to flush/advise/resident are relative to `data` and must lie inside
 *    [0, length); the layer aligns them to pages itself. A view with nothing mapped (zeroed,
 *    or made with length 0) has no range: MM_E_ARG.
 */
#ifndef MM_H
#define MM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Access, as numpy.memmap's modes: 'r' -> MM_READ, 'r+'/'w+' -> MM_WRITE, 'c' -> MM_COPY. */
typedef enum mm_access {
    MM_READ = 0,  /* read-only shared view */
    MM_WRITE = 1, /* read-write shared view: writes reach the file */
    MM_COPY = 2   /* copy-on-write private view: writes never reach the file */
} mm_access;

/* Flags for mm_map_path / mm_map_handle. */
enum {
    MM_CREATE = 1,   /* path only: create the file, or reset an existing one as MM_TRUNCATE
                        does (mode 'w+'). A file this call created is removed again if the
                        call fails. Not with MM_TO_END (MM_E_ARG: no size to create). */
    MM_GROW = 2,     /* extend a shorter file to offset + length, allocating real blocks
                        (allowed with any access: the file is opened writable to grow it).
                        If growing fails the file keeps its old size. */
    MM_POPULATE = 4, /* prefault the view (MAP_POPULATE / PrefetchVirtualMemory); a
                        copy-on-write view is prefaulted for reading only, so it copies
                        nothing into private memory */
    MM_TRUNCATE = 8  /* make the file offset + length bytes of zeros (its old content goes),
                        reserving the space before the old content is touched: if the disk
                        cannot hold the new size the call fails and the file keeps its size
                        and content. Needs a writable file; not with MM_TO_END (MM_E_ARG). */
};

/* Pass as `length` to map from `offset` to the end of the file. */
#define MM_TO_END UINT64_MAX

typedef enum mm_status {
    MM_OK = 0,
    MM_E_ARG = 1,    /* a bad argument (found before any OS call); code = 0 */
    MM_E_OPEN = 2,   /* open / CreateFileW failed */
    MM_E_STAT = 3,   /* fstat / GetFileSizeEx failed, or the path is not a regular file:
                        code = EISDIR / ERROR_DIRECTORY_NOT_SUPPORTED for a directory
                        (whatever the access and flags, also when open refuses it),
                        ENODEV / ERROR_NOT_SUPPORTED for a FIFO, socket, device or a file
                        whose filesystem cannot size it (procfs). Opening never blocks: a
                        FIFO is refused, not waited on (O_NONBLOCK). */
    MM_E_RANGE = 4,  /* offset + length lies past the end of the file and MM_GROW was not
                        given; mm_error.file_size holds the size found; code = 0 */
    MM_E_GROW = 5,   /* growing or allocating the file failed (ENOSPC, EFBIG, ...) */
    MM_E_MAP = 6,    /* mmap / CreateFileMapping / MapViewOfFile failed, or the view is larger
                        than size_t can hold (32-bit hosts only): code = EOVERFLOW (mmap(2)'s
                        code for it) / ERROR_ARITHMETIC_OVERFLOW, found after the file is
                        sized and before it is grown, reset or mapped */
    MM_E_FLUSH = 7,  /* msync / FlushViewOfFile / FlushFileBuffers failed */
    MM_E_UNMAP = 8,  /* munmap / UnmapViewOfFile failed */
    MM_E_ADVISE = 9, /* madvise / PrefetchVirtualMemory failed */
    MM_E_QUERY = 10, /* mincore / QueryWorkingSetEx failed */
    MM_E_EMPTY = 11, /* MM_TO_END requested and the file is empty past offset: nothing to map */
    MM_E_FAULT = 12  /* a page of the view could not be read or written (the fault guard
                        caught a SIGBUS in it: the file shrank below it, an I/O error, a
                        full disk under a hole); code = 0 */
} mm_status;

typedef struct mm_error {
    int status;         /* an mm_status */
    int64_t code;       /* errno (POSIX) or GetLastError() (Windows) of the failing call, or 0 */
    uint64_t file_size; /* size of the file as found by the call, when it got that far */
} mm_error;

/* One mapped view. Fields above the line are public; below it they belong to the
 * implementation. A zeroed struct is "no view". */
typedef struct mm_view {
    char *data;          /* first requested byte: base + delta */
    uint64_t length;     /* requested length in bytes */
    int access;          /* an mm_access */
    uint64_t file_id[2]; /* identity of the mapped file, as os.stat gives it: st_dev and st_ino
                            (Windows: volume serial number and file index) */
    /* ---- private ---- */
    void *base;          /* what the OS returned, aligned to mm_alignment() */
    uint64_t base_length;/* delta + length: what was mapped from base */
    void *flush_handle;  /* Windows, MM_WRITE views with bytes: an owned duplicate of the file
                            handle, for FlushFileBuffers. Otherwise (and on POSIX) NULL. */
    uint32_t guard_slot; /* 1 + the fault guard's slot guarding this view, 0 for none */
} mm_view;

/* Advice for mm_advise. */
typedef enum mm_advice {
    MM_ADV_NORMAL = 0,
    MM_ADV_SEQUENTIAL = 1,
    MM_ADV_RANDOM = 2,
    MM_ADV_WILLNEED = 3,
    MM_ADV_DONTNEED = 4,
    MM_ADV_HUGEPAGE = 5,
    MM_ADV_NOHUGEPAGE = 6,
    MM_ADV_POPULATE_READ = 7,  /* fault the range in now, for reading */
    MM_ADV_POPULATE_WRITE = 8  /* fault the range in now, writable */
} mm_advice;

/* Handle type: a file descriptor on POSIX, a HANDLE on Windows (as intptr_t). */
typedef intptr_t mm_handle;

/* The granularity a mapping's file offset must be aligned to: the page size on POSIX,
 * the allocation granularity (64 KiB) on Windows. */
uint64_t mm_alignment(void);

/* The size of a page (what flush/advise/resident round ranges to).
 * Both values are read from the OS by the first call (sysconf(3); GetSystemInfo) and cached:
 * threads racing on that first call store the same value. */
uint64_t mm_page_size(void);

/* The pure alignment arithmetic, shared by both implementations and tested directly. */
static inline uint64_t mm_align_down(uint64_t value, uint64_t alignment) {
    return value - value % alignment;
}

/* Open the file at `path` (UTF-8; on POSIX the bytes are passed to open() as they are; on
 * Windows a path that is not valid UTF-8 is MM_E_OPEN, ERROR_NO_UNICODE_TRANSLATION),
 * size it, optionally create/grow it, map [offset, offset + length) and close the file.
 * `length == MM_TO_END` maps to the end of the file (MM_E_EMPTY if that is nothing).
 * `length == 0` maps nothing: the file is opened, checked, created, reset or grown to
 * `offset` as it would be for data, and the call returns MM_OK with view->data == NULL and
 * view->file_id set (mm_unmap of it is a no-op).
 * Arguments are checked before any OS call, in this order, each failing with MM_E_ARG: view
 * NULL; path NULL (mm_map_handle: an invalid handle, or MM_CREATE); access; unknown flags;
 * MM_TO_END with MM_CREATE or MM_TRUNCATE; offset, or offset + length, past INT64_MAX (no
 * file ends there: off_t and LARGE_INTEGER are signed 64-bit). Only then is the file opened:
 * a file that cannot be opened (missing: ENOENT / ERROR_FILE_NOT_FOUND) is MM_E_OPEN
 * whatever the offset, length and flags, and so is an empty path. Once the file is sized, and
 * before it is changed: MM_E_EMPTY, then MM_E_RANGE, then MM_E_MAP for a view too large for
 * size_t.
 * On success fills *view and err->file_size (the size after any growth) and returns MM_OK.
 * On failure *view is zeroed, the returned status is also in err->status, and the file has
 * the size and content it had before the call (a file the call created is removed). Two
 * exceptions: a reset (MM_TRUNCATE, or MM_CREATE of an existing file) whose mapping then
 * fails leaves the file reset; and on Windows, a reset refused because the file is mapped
 * (MM_E_GROW, ERROR_USER_MAPPED_FILE; POSIX allows it) after it grew the file keeps the
 * content but may leave the file grown by zeros (mm_win32.c). */
int mm_map_path(const char *path, int access, uint64_t offset, uint64_t length, int flags,
                mm_view *view, mm_error *err);

/* As mm_map_path for an open file the caller owns. The handle is not closed; MM_CREATE is
 * not allowed (MM_E_ARG), MM_TRUNCATE is. The handle must be open for writing when access
 * is MM_WRITE or MM_GROW or MM_TRUNCATE is given. */
int mm_map_handle(mm_handle handle, int access, uint64_t offset, uint64_t length, int flags,
                  mm_view *view, mm_error *err);

/* Write dirty pages of [start, start + length) of the view back to the file.
 * sync != 0: durable, returns after the data reached storage (msync(MS_SYNC);
 * FlushViewOfFile + FlushFileBuffers), for views made by path or by handle alike, and into
 * the file the view maps even if its path names another file (or none) by now.
 * sync == 0: schedule the write-back and return.
 * A no-op returning MM_OK for MM_READ and MM_COPY views. */
int mm_flush(const mm_view *view, uint64_t start, uint64_t length, int sync, mm_error *err);

/* Give the kernel advice about [start, start + length). Advice with no equivalent on a
 * platform is a documented no-op that returns MM_OK. Advice never changes the bytes a view
 * shows: MM_ADV_DONTNEED on a MM_COPY view keeps its private writes (POSIX: MADV_PAGEOUT,
 * not MADV_DONTNEED, which would drop them; Windows: VirtualUnlock). */
int mm_advise(const mm_view *view, uint64_t start, uint64_t length, int advice, mm_error *err);

/* Count the pages of [start, start + length) that are resident in memory.
 * Fills *resident and *total (pages). What counts differs with the system: POSIX, pages in
 * the page cache (mincore(2)); Windows, pages in this process's working set
 * (QueryWorkingSetEx), so a page prefetched but not yet touched does not count. */
int mm_resident(const mm_view *view, uint64_t start, uint64_t length, uint64_t *resident,
                uint64_t *total, mm_error *err);

/* Fault [start, end) of the view in (by reading it) in steps of `step` bytes, from the calling
 * thread, staying at most `window` bytes ahead of *consumer: a byte position that another
 * thread advances as it works through the view (what lies before it is skipped: the
 * consumer faults that in itself). Returns when done, when *stop becomes non-zero, when the
 * consumer has not moved for about `idle_limit_us` microseconds while the loop waits for it
 * (0: no limit), or on the first failing step: MM_E_FAULT once the fault guard has caught a
 * fault in the view (this loop's or another thread's). MM_E_ARG for step or window 0 or a range
 * outside the view. *consumer and *stop are written by another thread while this runs: a
 * stale read only delays this loop by one pause. `progress`, when not NULL, is where the loop
 * is: written before each read fault with the lowest byte it may still touch, and `end` when
 * it returns (whatever the status). The loop only moves forward, so bytes before *progress are
 * never faulted in by it again: another thread may release them (MADV_DONTNEED) without the
 * loop's fault in flight mapping them back (a fault waiting on a page lock completes after a
 * concurrent madvise(2) and maps the page again). A stale read of *progress is smaller, so
 * only more cautious. Portable: mm_scan.c. */
int mm_populate_ahead(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                      uint64_t window, const volatile uint64_t *consumer,
                      const volatile int *stop, volatile uint64_t *progress,
                      uint64_t idle_limit_us, mm_error *err);

/* Give up the CPU for about `microseconds` (nanosleep(2); Windows: Sleep, whose 1 ms
 * resolution makes anything shorter a Sleep(0)). */
void mm_pause(unsigned microseconds);

/* Change the length of a mapped view to `length` bytes from the same file offset (`offset`,
 * the offset it was mapped at), through `handle`, an open descriptor (Windows: HANDLE) of the
 * same file: its identity must equal view->file_id (MM_E_STAT with ESTALE /
 * ERROR_FILE_INVALID otherwise: never another file's data under an old view's name). A file
 * shorter than offset + length is grown with MM_GROW (allocated as mm_map_* does) or refused
 * (MM_E_RANGE); a shorter view leaves the file as it is. Linux moves the view with mremap(2)
 * (MREMAP_MAYMOVE: its pages stay mapped, the cost does not depend on the length); elsewhere,
 * and where mremap fails (a view split by the fault guard), a new view is mapped and the old
 * one unmapped. On success *view describes the new view (data may have moved); on failure
 * *view is unchanged and still mapped. The caller guarantees that nothing uses the view
 * meanwhile, and unguards it first (mm_guard_remove). MM_E_ARG for a view that maps nothing,
 * length 0, flags other than MM_GROW, or an end past INT64_MAX. */
int mm_remap(mm_view *view, mm_handle handle, uint64_t offset, uint64_t length, int flags,
             mm_error *err);

/* ---- The fault guard (POSIX; mm_guard.c) -------------------------------------------------
 * A page of a file mapping that cannot be read or written -- the file was truncated below it,
 * the storage returned an I/O error, a write hit a hole on a full disk -- makes the kernel
 * send SIGBUS to the thread that touched it ("mmap(2)": "SIGBUS  Attempted access to a page
 * of the buffer that lies beyond the end of the mapped file"). Its default action ends the
 * process. While the guard is installed, a SIGBUS with si_code BUS_ADRERR whose address lies
 * in a guarded view is handled instead: that page is replaced by a zero page (mmap(2) with
 * MAP_FIXED | MAP_ANONYMOUS, async-signal-safe), the fault is counted on the view and queued
 * (mm_guard_pop; a run of faults of one thread in one view is queued once, until
 * mm_guard_pop takes its record: the thread's next fault there is queued again), one byte is
 * written to the wake-up pipe (mm_guard_wake_fd), and the access resumes on zeros. When the
 * process has no mapping left for that page (vm.max_map_count), the whole view is replaced
 * by zeros instead. The same page cannot fault twice: it is anonymous memory now. Every
 * other SIGBUS goes, once, to the disposition installed before the guard, which is put back
 * first ("exactly as if the guard were not there": an SA_SIGINFO or plain handler is called;
 * SIG_DFL ends the process with SIGBUS, re-raised when it was sent by kill(); SIG_IGN ignores
 * one sent by kill() and ends the process on a fault, as the kernel would).
 * The handler runs on the alternate signal stack where the thread set one (SA_ONSTACK).
 * Windows: not available (install fails with MM_E_ARG, code ERROR_NOT_SUPPORTED); a view
 * that cannot be paged in there raises EXCEPTION_IN_PAGE_ERROR, which ends the process. */

/* One fault, as mm_guard_pop gives it. */
typedef struct mm_fault {
    uint64_t token;  /* the token the view was guarded with (mm_guard_add) */
    uint32_t slot;   /* where the view was guarded: for mm_guard_owner */
    uint64_t offset; /* byte of the view that faulted, relative to `data` (may be before it:
                        the page holding `data` starts at `base`) */
    uint64_t thread; /* pthread_self() of the thread that faulted (Python's threading.get_ident) */
    uint64_t native_thread; /* its kernel thread id (Linux gettid(2); Python's
                               threading.get_native_id), 0 where there is none: thread
                               idents are reused as soon as a thread ends, these much later */
} mm_fault;

/* Install the SIGBUS handler, or put it back in front if another handler was installed since
 * (remembering that one as the one to chain to). Idempotent. Callers serialize install and
 * uninstall (the engine: under the GIL). MM_E_ARG (code ENOSYS / ERROR_NOT_SUPPORTED) where
 * there is no guard; MM_E_ARG with errno if the wake-up pipe or sigaction(2) fails. */
int mm_guard_install(mm_error *err);

/* mm_guard_install at most every 100 ms (CLOCK_MONOTONIC_COARSE): cheap enough to call on
 * every map, so that a handler installed after the guard's (Python's faulthandler.enable())
 * is put behind it again at the next map after that. */
int mm_guard_keep_front(mm_error *err);

/* Put back the disposition the guard replaced, if the guard is in front. Views stay guarded
 * (a later install protects them again). */
int mm_guard_uninstall(mm_error *err);

/* The read end of the wake-up pipe (one byte per queued fault, dropped when the pipe is
 * full), or -1 before the first install and on Windows. */
int mm_guard_wake_fd(void);

/* In a forked child: replace the wake-up pipe (inherited, it is shared with the parent, whose
 * reader would take the child's bytes and the other way round). No-op before the first
 * install. */
int mm_guard_new_pipe(mm_error *err);

/* Guard [base, base + base_length) of a mapped view under `token`, with an opaque `owner`. Safe from any thread and
 * while faults are being handled. MM_E_ARG for a view that maps nothing, and when the table
 * of guarded views (MM_GUARD_SLOTS) is full: the view is then simply not guarded. */
#define MM_GUARD_SLOTS 131072
int mm_guard_add(mm_view *view, uint64_t token, void *owner, mm_error *err);

/* The `owner` the faulting view was guarded with, while that view is still guarded (NULL
 * once it is not). Callers serialize this with mm_guard_add and mm_guard_remove (the engine:
 * under the GIL), so an owner it returns is alive. */
void *mm_guard_owner(const mm_fault *fault);

/* Stop guarding the view (mm_unmap does it before unmapping). No-op for an unguarded view. */
void mm_guard_remove(mm_view *view);

/* Faults caught in the view since it was guarded (0 for an unguarded view). */
uint64_t mm_guard_faults(const mm_view *view);

/* Take the oldest queued fault: 1 and *fault filled, or 0 when the queue is empty. One
 * consumer at a time (the engine: under the GIL). The queue holds MM_GUARD_QUEUE faults;
 * older ones are dropped when it overflows (their views' counts still say so). */
#define MM_GUARD_QUEUE 1024
int mm_guard_pop(mm_fault *fault);

/* How many queued faults mm_guard_pop dropped (overwritten before they were taken) since the
 * last call; resets the count. Called by mm_guard_pop's consumer only. */
uint64_t mm_guard_take_lost(void);

/* How many faults were queued (mm_guard_recorded) and how many of them mm_guard_pop has
 * taken or dropped (mm_guard_taken), since the process started. A fault's handler counts it
 * as recorded before it writes its record, which mm_guard_pop takes in order: a record still
 * being written (its thread preempted in the handler) holds back the ones queued after it,
 * and mm_guard_pop returns 0 meanwhile. A consumer that needs every fault made before some
 * point (a thread's own faults, before it is told of them) reads mm_guard_recorded there and
 * pops until mm_guard_taken reaches that count. mm_guard_taken: mm_guard_pop's consumer
 * only. 0 on Windows. */
uint64_t mm_guard_recorded(void);
uint64_t mm_guard_taken(void);

/* In a forked child, first thing: forget the queue and every view's current run. The child
 * has only the thread that forked; a record the parent's other threads were writing at the
 * fork is never finished here, and would hold back the child's own records for good. Runs by
 * itself: the first mm_guard_install registers it as a pthread_atfork child handler (an
 * install that cannot fails, and the next one tries again). Child handlers registered before
 * it run before it: a fault in one of those is forgotten with the parent's records. Callable
 * directly (tests). A no-op on Windows. */
void mm_guard_after_fork(void);

/* The identity of the file at `path` now (following symbolic links): id[0], id[1] as a view's
 * file_id, and id[2] its birth time in the filesystem's units, 0 where it keeps none (Linux
 * statx(2) stx_btime in ns; Windows ftCreationTime, 100 ns units). An inode number is given
 * to a new file as soon as the old one is deleted; the birth time tells the two apart. Not
 * taken at map time, where it would cost every open a system call: a caller that needs it
 * asks by path and compares id[0], id[1] with the view's to know it is the same file.
 * MM_E_OPEN (ENOENT, ...) or MM_E_STAT with the OS error code on failure. */
int mm_path_identity(const char *path, uint64_t id[3], mm_error *err);

/* Open `path` to read its first bytes before mapping it by handle (a file whose header says
 * what to map: a .npy). Opened as mm_map_path opens it for `access` with no flags (read-only,
 * read-write for MM_WRITE; never created, never blocking on a FIFO); then up to `n` bytes
 * from the start of the file are read into `buf`, *got set to the number read (fewer only at
 * the end of a regular file). On MM_OK *handle is open: map with mm_map_handle, then close it
 * with mm_close_handle (the view does not need it). On failure nothing stays open: MM_E_OPEN
 * (or MM_E_STAT, EISDIR / ERROR_DIRECTORY_NOT_SUPPORTED for a directory) as mm_map_path
 * reports its open, MM_E_STAT with the OS error code for a failed read, MM_E_ARG for a NULL
 * pointer, a bad access or `n` above 2**30. */
int mm_open_read(const char *path, int access, void *buf, uint64_t n, uint64_t *got,
                 mm_handle *handle, mm_error *err);

/* Close a handle mm_open_read opened (errors ignored: it was only read). */
void mm_close_handle(mm_handle handle);

/* Unmap the view and release what it owns. The view is zeroed whatever the outcome, so a
 * second call is a no-op returning MM_OK; an OS error is reported, never ignored. */
int mm_unmap(mm_view *view, mm_error *err);

#ifdef __cplusplus
}
#endif

#endif /* MM_H */
