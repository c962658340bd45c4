/*
 * mm_posix.c -- the mapping layer on POSIX (Linux first; macOS/BSD compile, with fewer advice
 * values). Implements mm.h; see there for the contract.
 *
 * References: mmap(2), munmap(2), msync(2), madvise(2), mincore(2), posix_fallocate(3),
 * posix_fadvise(2), open(2), fstat(2) -- the Linux man-pages.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_POPULATE, MADV_HUGEPAGE, MADV_POPULATE_* */
#endif
#ifndef _FILE_OFFSET_BITS
#define _FILE_OFFSET_BITS 64 /* off_t is 64-bit on 32-bit hosts too */
#endif

#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Values that older headers or other kernels lack: an advice the running kernel does not know
 * fails with EINVAL (madvise(2)), which mm_advise reports; a missing flag is 0 = no-op. */
#ifndef MAP_POPULATE
#define MAP_POPULATE 0
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE (-1)
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE (-1)
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14, include/uapi/asm-generic/mman-common.h */
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

static uint64_t mm_cached_page_size;

uint64_t mm_page_size(void) {
    if (mm_cached_page_size == 0) {
        long size = sysconf(_SC_PAGESIZE);
        mm_cached_page_size = size > 0 ? (uint64_t)size : 4096;
    }
    return mm_cached_page_size;
}

/* mmap(2): "offset must be a multiple of the page size as returned by sysconf(_SC_PAGE_SIZE)". */
uint64_t mm_alignment(void) { return mm_page_size(); }

static int mm_fail(mm_error *err, int status, int64_t code) {
    err->status = status;
    err->code = code;
    return status;
}

static int mm_ok(mm_error *err) {
    err->status = MM_OK;
    err->code = 0;
    return MM_OK;
}

/* Grow the file to `size` bytes with real blocks, so that a full disk fails here with ENOSPC
 * rather than as SIGBUS on first write through the mapping. posix_fallocate(3) returns the
 * error number instead of setting errno; EOPNOTSUPP/EINVAL mean the filesystem cannot
 * preallocate, and ftruncate(2) (a sparse extension) is the fallback. */
static int mm_grow(int fd, uint64_t old_size, uint64_t size, mm_error *err) {
    int rc;
    if ((uint64_t)(off_t)size != size || (off_t)size < 0)
        return mm_fail(err, MM_E_GROW, EFBIG);
    do {
        rc = posix_fallocate(fd, (off_t)old_size, (off_t)(size - old_size));
    } while (rc == EINTR);
    if (rc == 0)
        return MM_OK;
    if (rc != EOPNOTSUPP && rc != EINVAL && rc != ENOSYS)
        return mm_fail(err, MM_E_GROW, rc);
    if (ftruncate(fd, (off_t)size) != 0)
        return mm_fail(err, MM_E_GROW, errno);
    return MM_OK;
}

/* The shared tail of map_path and map_handle: size, range check, grow, mmap. Does not close
 * fd; the callers do, right after, so that a live view holds no descriptor. */
static int mm_map_fd(int fd, int access, uint64_t offset, uint64_t length, int flags,
                     mm_view *view, mm_error *err) {
    struct stat st;
    uint64_t size, end, delta, map_offset;
    int prot, mflags;
    void *base;

    if (fstat(fd, &st) != 0)
        return mm_fail(err, MM_E_STAT, errno);
    if (S_ISDIR(st.st_mode))
        return mm_fail(err, MM_E_STAT, EISDIR);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return mm_fail(err, MM_E_STAT, ENODEV); /* mmap(2): ENODEV, "does not support memory mapping" */
    size = (uint64_t)st.st_size;
    err->file_size = size;

    if (length == MM_TO_END) {
        if (offset >= size)
            return mm_fail(err, MM_E_EMPTY, 0);
        length = size - offset;
    }
    if (length == 0)
        return mm_fail(err, MM_E_EMPTY, 0);
    end = offset + length; /* no overflow: checked by the callers, or length = size - offset */
    if (end > size) {
        if (!(flags & MM_GROW))
            return mm_fail(err, MM_E_RANGE, 0);
        if (mm_grow(fd, size, end, err) != MM_OK)
            return err->status;
        err->file_size = end;
    }

    delta = offset % mm_alignment();
    map_offset = offset - delta;
    if (length > (uint64_t)SIZE_MAX - delta || (uint64_t)(off_t)map_offset != map_offset)
        return mm_fail(err, MM_E_MAP, EOVERFLOW); /* mmap(2): EOVERFLOW, on 32-bit hosts */

    prot = access == MM_READ ? PROT_READ : PROT_READ | PROT_WRITE;
    mflags = access == MM_COPY ? MAP_PRIVATE : MAP_SHARED;
    if (flags & MM_POPULATE)
        mflags |= MAP_POPULATE;
    base = mmap(NULL, (size_t)(delta + length), prot, mflags, fd, (off_t)map_offset);
    if (base == MAP_FAILED)
        return mm_fail(err, MM_E_MAP, errno);

    view->base = base;
    view->base_length = delta + length;
    /* delta < alignment <= base_length, so base + delta is inside the mapping. */
    view->data = (char *)base + delta;
    view->length = length;
    view->access = access;
    view->file_id[0] = (uint64_t)st.st_dev;
    view->file_id[1] = (uint64_t)st.st_ino;
    view->reopen = NULL;
    return mm_ok(err);
}

static int mm_check_args(int access, int flags, mm_view *view, mm_error *err) {
    memset(view, 0, sizeof(*view));
    err->status = MM_OK;
    err->code = 0;
    err->file_size = 0;
    if (access != MM_READ && access != MM_WRITE && access != MM_COPY)
        return mm_fail(err, MM_E_ARG, 0);
    if ((flags & ~(MM_CREATE | MM_GROW | MM_POPULATE)) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    return MM_OK;
}

static void mm_close_keep_errno(int fd) {
    int saved = errno;
    close(fd); /* read-only use of fd is over; a close error cannot lose data here */
    errno = saved;
}

int mm_map_path(const char *path, int access, uint64_t offset, uint64_t length, int flags,
                mm_view *view, mm_error *err) {
    int fd, created = 0, oflags, status;

    if (mm_check_args(access, flags, view, err) != MM_OK)
        return err->status;
    if (path == NULL || path[0] == '\0')
        return mm_fail(err, MM_E_OPEN, ENOENT);

    if (length != MM_TO_END && offset > UINT64_MAX - length)
        return mm_fail(err, MM_E_ARG, 0); /* offset + length overflows: refused before open */
    /* Growing or creating writes to the file even for a read-only or private view. */
    oflags = (access == MM_WRITE || (flags & (MM_CREATE | MM_GROW)) ? O_RDWR : O_RDONLY)
             | O_CLOEXEC;
    if (flags & MM_CREATE) {
        /* O_EXCL first, to learn whether this call creates the file (and so must remove it
         * on failure); an existing file is truncated as open(..., "w+") would. */
        fd = open(path, oflags | O_CREAT | O_EXCL, 0666);
        if (fd >= 0)
            created = 1;
        else if (errno == EEXIST)
            fd = open(path, oflags | O_TRUNC);
    } else {
        fd = open(path, oflags);
    }
    if (fd < 0) {
        /* open(2) on a directory with O_RDWR fails with EISDIR already. */
        return mm_fail(err, MM_E_OPEN, errno);
    }

    status = mm_map_fd(fd, access, offset, length, flags, view, err);
    mm_close_keep_errno(fd);
    if (status != MM_OK && created)
        unlink(path);
    return status;
}

int mm_map_handle(mm_handle handle, int access, uint64_t offset, uint64_t length, int flags,
                  mm_view *view, mm_error *err) {
    if (mm_check_args(access, flags, view, err) != MM_OK)
        return err->status;
    if (flags & MM_CREATE)
        return mm_fail(err, MM_E_ARG, 0);
    if (handle < 0 || handle > INT32_MAX)
        return mm_fail(err, MM_E_ARG, 0);
    if (length != MM_TO_END && offset > UINT64_MAX - length)
        return mm_fail(err, MM_E_ARG, 0);
    return mm_map_fd((int)handle, access, offset, length, flags, view, err);
}

/* Turn [start, start + length) of the view into a page-aligned address range inside the
 * mapping. Returns 0 and fills *addr and *len, or -1 for a range outside the view. */
static int mm_page_range(const mm_view *view, uint64_t start, uint64_t length, char **addr,
                         size_t *len) {
    uint64_t delta, first, last;
    if (view->base == NULL || start > view->length || length > view->length - start)
        return -1;
    if (length == 0) { /* an empty range touches no page */
        *addr = (char *)view->base;
        *len = 0;
        return 0;
    }
    delta = (uint64_t)(view->data - (char *)view->base);
    /* first is page-aligned and >= 0: base itself is page-aligned, so is base + first. */
    first = mm_align_down(delta + start, mm_page_size());
    /* last <= base_length: delta + start + length <= delta + view->length = base_length. */
    last = delta + start + length;
    *addr = (char *)view->base + first;
    *len = (size_t)(last - first);
    return 0;
}

int mm_flush(const mm_view *view, uint64_t start, uint64_t length, int sync, mm_error *err) {
    char *addr;
    size_t len;
    if (mm_page_range(view, start, length, &addr, &len) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    if (view->access != MM_WRITE || len == 0)
        return mm_ok(err);
    /* msync(2): MS_SYNC waits for the write-back; MS_ASYNC schedules it. */
    if (msync(addr, len, sync ? MS_SYNC : MS_ASYNC) != 0)
        return mm_fail(err, MM_E_FLUSH, errno);
    return mm_ok(err);
}

int mm_advise(const mm_view *view, uint64_t start, uint64_t length, int advice, mm_error *err) {
    static const int table[] = {
        MADV_NORMAL, MADV_SEQUENTIAL, MADV_RANDOM, MADV_WILLNEED, MADV_DONTNEED,
        MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_POPULATE_READ, MADV_POPULATE_WRITE};
    char *addr;
    size_t len;
    int native;
    if (advice < 0 || advice >= (int)(sizeof(table) / sizeof(table[0])))
        return mm_fail(err, MM_E_ARG, 0);
    if (mm_page_range(view, start, length, &addr, &len) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    native = table[advice];
    if (advice == MM_ADV_DONTNEED && view->access == MM_COPY) {
        /* madvise(2): MADV_DONTNEED on a private mapping discards its modified pages. Drop
         * only pages wholly inside the range, never a neighbour's private writes. */
        uint64_t delta = (uint64_t)(view->data - (char *)view->base), page = mm_page_size();
        uint64_t lo = delta + start + page - 1, hi = mm_align_down(delta + start + length, page);
        lo = mm_align_down(lo, page);
        if (hi <= lo)
            return mm_ok(err); /* no whole page inside the range */
        addr = (char *)view->base + lo; /* lo < hi <= base_length: inside the mapping */
        len = (size_t)(hi - lo);
    }
    if (len == 0 || native < 0) /* advice this system lacks: documented no-op */
        return mm_ok(err);
    if (advice == MM_ADV_POPULATE_WRITE && view->access == MM_READ)
        native = MADV_POPULATE_READ; /* a read-only view cannot be populated writable */
    if (madvise(addr, len, native) != 0) {
        /* MADV_POPULATE_* before Linux 5.14: EINVAL. Fall back to touching one byte per page,
         * which faults the same pages in (only for reads: a write would dirty them). */
        if (errno == EINVAL && (advice == MM_ADV_POPULATE_READ || advice == MM_ADV_POPULATE_WRITE)) {
            volatile char sink = 0;
            size_t i, page = (size_t)mm_page_size();
            for (i = 0; i < len; i += page)
                sink ^= addr[i]; /* i < len: inside [addr, addr + len) */
            (void)sink;
            return mm_ok(err);
        }
        return mm_fail(err, MM_E_ADVISE, errno);
    }
    return mm_ok(err);
}

int mm_resident(const mm_view *view, uint64_t start, uint64_t length, uint64_t *resident,
                uint64_t *total, mm_error *err) {
    unsigned char vec[4096];
    char *addr;
    size_t len, pages, done, chunk, i, page = (size_t)mm_page_size();
    uint64_t count = 0;
    *resident = 0;
    *total = 0;
    if (mm_page_range(view, start, length, &addr, &len) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    pages = (len + page - 1) / page;
    /* mincore(2) wants one vector byte per page; ask in chunks of sizeof(vec) pages. */
    for (done = 0; done < pages; done += chunk) {
        chunk = pages - done < sizeof(vec) ? pages - done : sizeof(vec);
        /* done < pages, so addr + done * page is inside [addr, addr + len). */
        if (mincore(addr + done * page, chunk * page, (void *)vec) != 0)
            return mm_fail(err, MM_E_QUERY, errno);
        for (i = 0; i < chunk; i++)
            count += vec[i] & 1;
    }
    *resident = count;
    *total = pages;
    return mm_ok(err);
}

void mm_pause(unsigned microseconds) {
    struct timespec pause;
    pause.tv_sec = microseconds / 1000000u;
    pause.tv_nsec = (long)(microseconds % 1000000u) * 1000L;
    nanosleep(&pause, NULL); /* nanosleep(2): an early return on a signal is harmless here */
}

int mm_unmap(mm_view *view, mm_error *err) {
    void *base = view->base;
    size_t len = (size_t)view->base_length;
    memset(view, 0, sizeof(*view));
    if (base == NULL)
        return mm_ok(err);
    /* munmap(2) takes the aligned base and the length that was mapped from it. */
    if (munmap(base, len) != 0)
        return mm_fail(err, MM_E_UNMAP, errno);
    return mm_ok(err);
}
