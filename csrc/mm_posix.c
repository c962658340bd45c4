/*
 * mm_posix.c -- the mapping layer on POSIX (Linux first; macOS/BSD compile, with fewer advice
 * values). Implements mm.h; see there for the contract.
 *
 * References: mmap(2), munmap(2), msync(2), madvise(2), mincore(2), posix_fallocate(3),
 * fallocate(2), ftruncate(2), statvfs(3), posix_fadvise(2), open(2), fstat(2) -- the Linux
 * man-pages.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_POPULATE, MADV_HUGEPAGE, MADV_POPULATE_* */
#endif
#ifndef _FILE_OFFSET_BITS
#define _FILE_OFFSET_BITS 64 /* off_t is 64-bit on 32-bit hosts too */
#endif

#include "mm.h"
#include "mm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h> /* makedev */
#include <sys/statvfs.h>
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
#ifndef MADV_PAGEOUT
#if defined(__linux__)
#define MADV_PAGEOUT 21 /* Linux 5.4, include/uapi/asm-generic/mman-common.h */
#else
#define MADV_PAGEOUT (-1)
#endif
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
#ifndef O_NONBLOCK
#define O_NONBLOCK 0
#endif

/* Linux filesystems whose "regular" files are kernel interfaces, not data: statfs(2) f_type
 * values from linux/magic.h. Growing one would write into it (glibc's posix_fallocate(3)
 * emulates a missing fallocate by writing a zero byte per block: into process memory, for
 * /proc/PID/mem), so they are refused before anything is written. */
#if defined(__linux__)
#include <sys/vfs.h>
static int mm_is_pseudo_fs(int fd) {
    static const unsigned long magics[] = {
        0x9fa0UL,     /* PROC_SUPER_MAGIC */
        0x62656572UL, /* SYSFS_MAGIC */
        0x64626720UL, /* DEBUGFS_MAGIC */
        0x74726163UL, /* TRACEFS_MAGIC */
        0x73636673UL, /* SECURITYFS_MAGIC */
        0x27e0ebUL,   /* CGROUP_SUPER_MAGIC */
        0x63677270UL, /* CGROUP2_SUPER_MAGIC */
        0x62656570UL, /* CONFIGFS_MAGIC */
        0xcafe4a11UL, /* BPF_FS_MAGIC */
        0xde5e81e4UL, /* EFIVARFS_MAGIC */
        0x50495045UL, /* PIPEFS_MAGIC */
        0x534f434bUL, /* SOCKFS_MAGIC */
    };
    struct statfs fs;
    size_t i;
    if (fstatfs(fd, &fs) != 0)
        return 0; /* unknown: the write itself will report what is wrong */
    for (i = 0; i < sizeof(magics) / sizeof(magics[0]); i++)
        if ((unsigned long)fs.f_type == magics[i])
            return 1;
    return 0;
}
#else
static int mm_is_pseudo_fs(int fd) {
    (void)fd;
    return 0;
}
#endif

/* fallocate(2) is Linux's; elsewhere its modes report EOPNOTSUPP and the callers fall back
 * (statvfs to check for space, ftruncate then posix_fallocate to reset). */
#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE) && defined(FALLOC_FL_ZERO_RANGE)
static int mm_fallocate_keep_size(int fd, uint64_t length) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)length) == 0 ? 0 : errno;
}
static int mm_fallocate_zero(int fd, uint64_t length) {
    return fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, (off_t)length) == 0 ? 0 : errno;
}
#else
static int mm_fallocate_keep_size(int fd, uint64_t length) {
    (void)fd;
    (void)length;
    return EOPNOTSUPP;
}
static int mm_fallocate_zero(int fd, uint64_t length) {
    (void)fd;
    (void)length;
    return EOPNOTSUPP;
}
#endif

/* off_t must hold every offset up to INT64_MAX (MM_MAX_FILE_END): _FILE_OFFSET_BITS=64. */
typedef char mm_off_t_is_64_bit[sizeof(off_t) >= 8 ? 1 : -1];

static volatile uint32_t mm_page_size_slot; /* 0 until the first call (mm_cached) */

static uint32_t mm_load_page_size(void) {
    long size = sysconf(_SC_PAGESIZE); /* sysconf(3); -1 is an error */
    return size > 0 ? (uint32_t)size : 4096;
}

uint64_t mm_page_size(void) { return mm_cached(&mm_page_size_slot, mm_load_page_size); }

/* mmap(2): "offset must be a multiple of the page size as returned by sysconf(_SC_PAGE_SIZE)". */
uint64_t mm_alignment(void) { return mm_page_size(); }

/* posix_fallocate(3) and fallocate(2): these errors mean "this filesystem cannot
 * preallocate", not "no space". */
static int mm_cannot_preallocate(int rc) {
    return rc == EOPNOTSUPP || rc == EINVAL || rc == ENOSYS;
}

/* Put the file back to `size` bytes after a failed grow or reservation. ftruncate(2) to the
 * same size also frees blocks allocated past the end (ext4 and tmpfs truncate everything
 * beyond the new size, fallocate(2) FALLOC_FL_KEEP_SIZE blocks included). Best effort: the
 * caller reports the first error. */
static void mm_restore_size(int fd, uint64_t size) {
    int saved = errno;
    (void)ftruncate(fd, (off_t)size);
    errno = saved;
}

/* Grow the file to `size` bytes with real blocks, so that a full disk fails here with ENOSPC
 * rather than as SIGBUS on first write through the mapping. posix_fallocate(3) returns the
 * error number instead of setting errno; EOPNOTSUPP/EINVAL mean the filesystem cannot
 * preallocate, and ftruncate(2) (a sparse extension) is the fallback. A failure leaves the
 * file at old_size: posix_fallocate may have extended it part of the way (ext4 raises the
 * size as it allocates). ESPIPE/ENODEV (procfs and other files that only look regular) are
 * reported as MM_E_STAT/ENODEV: not a file that can be mapped. */
static int mm_grow(int fd, uint64_t old_size, uint64_t size, mm_error *err) {
    struct stat st;
    int rc;
    if ((uint64_t)(off_t)size != size || (off_t)size < 0)
        return mm_fail(err, MM_E_GROW, EFBIG);
    do {
        rc = posix_fallocate(fd, (off_t)old_size, (off_t)(size - old_size));
    } while (rc == EINTR);
    if (rc == 0)
        return MM_OK;
    if (mm_cannot_preallocate(rc)) {
        if (ftruncate(fd, (off_t)size) == 0)
            return MM_OK;
        rc = errno; /* ftruncate(2) only grows here: nothing to undo */
    } else if ((rc == ENOSPC || rc == EDQUOT) && fstat(fd, &st) == 0 &&
               (uint64_t)st.st_size > old_size) {
        /* Out of space part of the way: only these errors leave a partial extension
         * (EFBIG, EINVAL and the like fail before allocating). Undone, though a grow of the
         * same file by another thread in between would be undone with it: see the README's
         * safety notes. */
        mm_restore_size(fd, old_size);
    }
    if (rc == ESPIPE || rc == ENODEV)
        return mm_fail(err, MM_E_STAT, ENODEV);
    return mm_fail(err, MM_E_GROW, rc);
}

/* Whether the filesystem lacks room for `needed` more bytes, where fallocate(2) cannot
 * tell: statvfs(3) f_bavail blocks of f_frsize bytes. Unknown counts as room. */
static int mm_lacks_space(int fd, uint64_t needed) {
    struct statvfs vfs;
    if (fstatvfs(fd, &vfs) != 0 || vfs.f_frsize == 0)
        return 0;
    return (uint64_t)vfs.f_bavail < needed / (uint64_t)vfs.f_frsize;
}

/* MM_TRUNCATE: make the file `end` bytes of zeros with real blocks, reserving the space
 * before the old content is touched, so that a full disk fails with the file as it was.
 *  1. fallocate(2) FALLOC_FL_KEEP_SIZE over [0, end) allocates what the new file needs on
 *     top of the old blocks without changing the size; ENOSPC here changes nothing (the
 *     blocks it reserved past the end are freed by mm_restore_size). The check is as strict
 *     as truncating first, except for an old file with holes below `end` and data past it.
 *     Where the filesystem cannot reserve, statvfs(3) checks for room instead.
 *  2. FALLOC_FL_ZERO_RANGE zeroes the old content in place, keeping the reserved blocks;
 *     ftruncate(2) then sets the size (shrinking frees the rest, growing covers reserved
 *     blocks, which read as zeros). Where ZERO_RANGE is missing (tmpfs), the content is
 *     dropped with ftruncate(fd, 0) and `end` bytes are allocated afresh: the space was just
 *     shown to be there, unless another process takes it in between. */
static int mm_reset(int fd, uint64_t old_size, uint64_t end, uint64_t old_blocks_bytes,
                    mm_error *err) {
    int rc;
    if ((uint64_t)(off_t)end != end || (off_t)end < 0)
        return mm_fail(err, MM_E_GROW, EFBIG);
    if (end > 0) {
        do {
            rc = mm_fallocate_keep_size(fd, end);
        } while (rc == EINTR);
        if (rc != 0 && !mm_cannot_preallocate(rc)) {
            mm_restore_size(fd, old_size);
            return mm_fail(err, rc == ESPIPE || rc == ENODEV ? MM_E_STAT : MM_E_GROW,
                           rc == ESPIPE ? ENODEV : rc);
        }
        if (rc != 0 && end > old_blocks_bytes && mm_lacks_space(fd, end - old_blocks_bytes))
            return mm_fail(err, MM_E_GROW, ENOSPC);
    }
    if (old_size > 0 && end > 0 &&
        mm_fallocate_zero(fd, old_size < end ? old_size : end) == 0) {
        if (ftruncate(fd, (off_t)end) != 0)
            return mm_fail(err, MM_E_GROW, errno);
        return MM_OK;
    }
    if (ftruncate(fd, 0) != 0)
        return mm_fail(err, MM_E_GROW, errno);
    return end > 0 ? mm_grow(fd, 0, end, err) : MM_OK;
}

/* Fault a copy-on-write view in for reading: MAP_POPULATE on a private writable mapping
 * write-faults every page (a private copy of the whole range), MADV_POPULATE_READ (Linux
 * 5.14, madvise(2)) maps the page-cache pages read-only until written. Best effort, as
 * MAP_POPULATE is: where the kernel lacks it nothing is prefaulted. Never by touching the
 * pages: the view is not registered yet, and a page past a concurrently shrunk end of file
 * would fault with SIGBUS where madvise reports EFAULT. */
static void mm_populate_for_reading(char *base, size_t length) {
    (void)madvise(base, length, MADV_POPULATE_READ);
}

int mm_path_identity(const char *path, uint64_t id[3], mm_error *err) {
    struct stat st;
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (path == NULL || id == NULL)
        return mm_fail(err, MM_E_ARG, 0);
#if defined(STATX_BTIME)
    {
        /* "statx(2)": stx_mask says which fields the filesystem filled; the birth time is
         * optional (tmpfs before Linux 6.x, NFS, ... keep none). */
        struct statx stx;
        if (statx(AT_FDCWD, path, 0, STATX_INO | STATX_BTIME, &stx) == 0) {
            id[0] = (uint64_t)makedev(stx.stx_dev_major, stx.stx_dev_minor); /* as st_dev */
            id[1] = (uint64_t)stx.stx_ino;
            id[2] = (stx.stx_mask & STATX_BTIME)
                        ? (uint64_t)stx.stx_btime.tv_sec * 1000000000u + stx.stx_btime.tv_nsec
                        : 0;
            return mm_ok(err);
        }
        if (errno != ENOSYS)
            return mm_fail(err, errno == ENOENT ? MM_E_OPEN : MM_E_STAT, errno);
    }
#endif
    if (stat(path, &st) != 0)
        return mm_fail(err, errno == ENOENT ? MM_E_OPEN : MM_E_STAT, errno);
    id[0] = (uint64_t)st.st_dev;
    id[1] = (uint64_t)st.st_ino;
    id[2] = 0;
    return mm_ok(err);
}

/* The shared tail of map_path and map_handle: size, range check, grow or reset, mmap. Does
 * not close fd; the callers do, right after, so that a live view holds no descriptor. */
static int mm_map_fd(int fd, int access, uint64_t offset, uint64_t length, int flags,
                     mm_view *view, mm_error *err) {
    struct stat st;
    uint64_t size, map_offset;
    mm_plan plan;
    int prot, mflags, status;
    void *base;

    if (fstat(fd, &st) != 0)
        return mm_fail(err, MM_E_STAT, errno);
    if (S_ISDIR(st.st_mode))
        return mm_fail(err, MM_E_STAT, EISDIR);
    if (!S_ISREG(st.st_mode))
        return mm_fail(err, MM_E_STAT, ENODEV); /* mmap(2): ENODEV, "does not support memory mapping" */
    size = (uint64_t)st.st_size;
    err->file_size = size;

    /* MM_E_MAP from the plan: the view does not fit in size_t (32-bit hosts), mmap(2)'s
     * EOVERFLOW; found before the file is changed. */
    status = mm_plan_map(size, offset, length, flags, mm_alignment(), (uint64_t)SIZE_MAX, &plan);
    if (status != MM_OK)
        return mm_fail(err, status, status == MM_E_MAP ? EOVERFLOW : 0);
    if ((plan.reset || plan.grow) && mm_is_pseudo_fs(fd))
        return mm_fail(err, MM_E_STAT, ENODEV); /* a kernel interface, not a data file */
    if (plan.reset) {
        /* st_blocks counts 512-byte units (stat(2)) */
        if (mm_reset(fd, size, plan.end, (uint64_t)st.st_blocks * 512u, err) != MM_OK)
            return err->status;
        err->file_size = plan.end;
    } else if (plan.grow) {
        if (mm_grow(fd, size, plan.end, err) != MM_OK)
            return err->status;
        err->file_size = plan.end;
    }
    view->access = access;
    view->file_id[0] = (uint64_t)st.st_dev;
    view->file_id[1] = (uint64_t)st.st_ino;
    if (plan.length == 0)
        return mm_ok(err); /* nothing to map: the file is checked, created or grown */

    map_offset = offset - plan.delta; /* <= INT64_MAX (mm_map_begin): a valid 64-bit off_t */
    prot = access == MM_READ ? PROT_READ : PROT_READ | PROT_WRITE;
    mflags = access == MM_COPY ? MAP_PRIVATE : MAP_SHARED;
    if ((flags & MM_POPULATE) && access != MM_COPY)
        mflags |= MAP_POPULATE;
    base = mmap(NULL, (size_t)(plan.delta + plan.length), prot, mflags, fd, (off_t)map_offset);
    if (base == MAP_FAILED) {
        int saved = errno;
        /* mm.h: a failed call leaves the old size (if the file is still the size this call
         * grew it to: another writer's growth since is not ours to take back) */
        if (plan.grow && fstat(fd, &st) == 0 && (uint64_t)st.st_size == plan.end)
            mm_restore_size(fd, size);
        errno = saved;
        memset(view, 0, sizeof(*view));
        return mm_fail(err, MM_E_MAP, errno);
    }
    if ((flags & MM_POPULATE) && access == MM_COPY)
        mm_populate_for_reading((char *)base, (size_t)(plan.delta + plan.length));

    view->base = base;
    view->base_length = plan.delta + plan.length;
    /* delta < alignment <= base_length, so base + delta is inside the mapping. */
    view->data = (char *)base + plan.delta;
    view->length = plan.length;
    view->flush_handle = NULL; /* msync(2) needs no descriptor */
    return mm_ok(err);
}

static void mm_close_keep_errno(int fd) {
    int saved = errno;
    close(fd); /* read-only use of fd is over; a close error cannot lose data here */
    errno = saved;
}

int mm_map_path(const char *path, int access, uint64_t offset, uint64_t length, int flags,
                mm_view *view, mm_error *err) {
    int fd, created = 0, oflags, status;
    mm_error spare;

    err = mm_err_or(err, &spare);
    if (mm_map_begin(view, access, offset, length, flags, path == NULL, err) != MM_OK)
        return err->status;
    /* Growing, creating or resetting writes to the file even for a read-only or private
     * view. open(2) O_NONBLOCK: a FIFO opens at once (and is refused by mm_map_fd) instead of
     * waiting for a writer; it changes nothing for a regular file's mapping. */
    oflags = (access == MM_WRITE || (flags & (MM_CREATE | MM_GROW | MM_TRUNCATE)) ? O_RDWR
                                                                                 : O_RDONLY)
             | O_CLOEXEC | O_NONBLOCK;
    if (flags & MM_CREATE) {
        /* O_EXCL first, to learn whether this call creates the file (and so must remove it
         * on failure); an existing file is reset by MM_TRUNCATE, which reserves the space
         * before it drops the old content (O_TRUNC would lose it on a full disk). */
        fd = open(path, oflags | O_CREAT | O_EXCL, 0666);
        if (fd >= 0)
            created = 1;
        else if (errno == EEXIST) {
            fd = open(path, oflags);
            flags |= MM_TRUNCATE;
        }
    } else {
        fd = open(path, oflags);
    }
    if (fd < 0) {
        /* open(2): a directory opened with O_RDWR fails with EISDIR already; it is reported as
         * fstat would find it (mm.h: MM_E_STAT, EISDIR), as mm_win32.c does for CreateFileW. */
        return mm_fail(err, errno == EISDIR ? MM_E_STAT : MM_E_OPEN, errno);
    }

    status = mm_map_fd(fd, access, offset, length, flags, view, err);
    mm_close_keep_errno(fd);
    if (status != MM_OK && created)
        unlink(path);
    return status;
}

int mm_open_read(const char *path, int access, void *buf, uint64_t n, uint64_t *got,
                 mm_handle *handle, mm_error *err) {
    mm_error spare;
    ssize_t r;
    int fd, code;
    err = mm_err_or(err, &spare);
    if (path == NULL || buf == NULL || got == NULL || handle == NULL ||
        (access != MM_READ && access != MM_WRITE && access != MM_COPY) || n > (1u << 30))
        return mm_fail(err, MM_E_ARG, 0);
    *got = 0;
    *handle = -1;
    fd = open(path, (access == MM_WRITE ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return mm_fail(err, errno == EISDIR ? MM_E_STAT : MM_E_OPEN, errno);
    do {
        r = pread(fd, buf, (size_t)n, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        code = errno;
        close(fd);
        return mm_fail(err, MM_E_STAT, code);
    }
    *got = (uint64_t)r;
    *handle = fd;
    return mm_ok(err);
}

void mm_close_handle(mm_handle handle) {
    if (handle >= 0 && handle <= INT32_MAX)
        mm_close_keep_errno((int)handle);
}

int mm_map_handle(mm_handle handle, int access, uint64_t offset, uint64_t length, int flags,
                  mm_view *view, mm_error *err) {
    mm_error spare;
    /* a descriptor is an int >= 0 (open(2)) */
    int bad_handle = handle < 0 || handle > INT32_MAX || (flags & MM_CREATE);

    err = mm_err_or(err, &spare);
    if (mm_map_begin(view, access, offset, length, flags, bad_handle, err) != MM_OK)
        return err->status;
    return mm_map_fd((int)handle, access, offset, length, flags, view, err);
}

int mm_remap(mm_view *view, mm_handle handle, uint64_t offset, uint64_t length, int flags,
             mm_error *err) {
    struct stat st;
    mm_error spare;
    mm_view fresh;
    uint64_t delta, end, old_size;
    int fd = (int)handle, status, grew = 0;
    err = mm_err_or(err, &spare);
    err->status = MM_OK;
    err->code = 0;
    err->file_size = 0;
    if (view == NULL || view->base == NULL || length == 0 || (flags & ~MM_GROW) != 0 ||
        handle < 0 || handle > INT32_MAX || offset > MM_MAX_FILE_END ||
        length > MM_MAX_FILE_END - offset || view->access != MM_WRITE)
        return mm_fail(err, MM_E_ARG, 0);
    if (fstat(fd, &st) != 0)
        return mm_fail(err, MM_E_STAT, errno);
    if ((uint64_t)st.st_dev != view->file_id[0] || (uint64_t)st.st_ino != view->file_id[1])
        return mm_fail(err, MM_E_STAT, ESTALE); /* not the file the view maps */
    err->file_size = (uint64_t)st.st_size;
    old_size = (uint64_t)st.st_size;
    end = offset + length;
    delta = (uint64_t)(view->data - (char *)view->base); /* data lies delta bytes into base */
    if (delta + length > (uint64_t)SIZE_MAX)
        return mm_fail(err, MM_E_MAP, EOVERFLOW); /* before the file is changed */
    if (end > (uint64_t)st.st_size) {
        if (!(flags & MM_GROW))
            return mm_fail(err, MM_E_RANGE, 0);
        if (mm_grow(fd, (uint64_t)st.st_size, end, err) != MM_OK)
            return err->status;
        grew = 1;
        err->file_size = end;
    }
#ifdef MREMAP_MAYMOVE
    {
        /* "mremap(2)": resizes the mapping, moving it if needed; the page tables move
         * with it. It fails with EFAULT for a range made of several mappings. */
        void *moved = mremap(view->base, (size_t)view->base_length, (size_t)(delta + length),
                             MREMAP_MAYMOVE);
        if (moved != MAP_FAILED) {
            view->base = moved;
            view->data = (char *)moved + delta; /* delta < the new base_length */
            view->base_length = delta + length;
            view->length = length;
            return mm_ok(err);
        }
    }
#endif
    status = mm_map_handle(handle, MM_WRITE, offset, length, 0, &fresh, err);
    if (status != MM_OK) {
        /* mm.h: a failed call leaves the old size; undone only if the file is still the size
         * this call grew it to (another writer's growth since is not ours to take back). */
        if (grew && fstat(fd, &st) == 0 && (uint64_t)st.st_size == end) {
            mm_restore_size(fd, old_size);
            err->file_size = old_size;
        }
        return status;
    }
    fresh.guard_slot = 0;
    mm_unmap(view, NULL); /* the old range: nothing uses it (the caller's guarantee) */
    *view = fresh;
    return mm_ok(err);
}

/* Turn [start, start + length) of the view into a page-aligned address range inside the
 * mapping (mm_view_range). Returns 0 and fills *addr and *len (0 for an empty range), or -1
 * for no view or a range outside it. */
static int mm_page_range(const mm_view *view, uint64_t start, uint64_t length, char **addr,
                         size_t *len) {
    uint64_t first, last;
    if (mm_view_range(view, start, length, mm_page_size(), &first, &last) != 0)
        return -1;
    /* first <= last <= base_length; base is page-aligned, so base + first is too. */
    *addr = (char *)view->base + first;
    *len = (size_t)(last - first);
    return 0;
}

int mm_flush(const mm_view *view, uint64_t start, uint64_t length, int sync, mm_error *err) {
    char *addr;
    size_t len;
    mm_error spare;
    err = mm_err_or(err, &spare);
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
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (advice < 0 || advice >= (int)(sizeof(table) / sizeof(table[0])))
        return mm_fail(err, MM_E_ARG, 0);
    if (mm_page_range(view, start, length, &addr, &len) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    native = table[advice];
    if (advice == MM_ADV_DONTNEED && view->access == MM_COPY)
        /* madvise(2): MADV_DONTNEED on a private mapping discards its modified pages, which
         * Windows keeps (VirtualUnlock) and mm.h forbids; MADV_PAGEOUT reclaims the range
         * with "the contents of the pages preserved" (Linux 5.4; EINVAL before: no-op). */
        native = MADV_PAGEOUT;
    if (len == 0 || native < 0) /* advice this system lacks: documented no-op */
        return mm_ok(err);
    if (advice == MM_ADV_POPULATE_WRITE && view->access == MM_READ)
        native = MADV_POPULATE_READ; /* a read-only view cannot be populated writable */
    if (madvise(addr, len, native) != 0) {
        /* MADV_POPULATE_* before Linux 5.14: EINVAL. Fall back to touching one byte per page,
         * which faults the same pages in (only for reads: a write would dirty them). */
        if (errno == EINVAL && native == MADV_PAGEOUT)
            return mm_ok(err); /* a kernel without it: documented no-op */
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
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (resident == NULL || total == NULL)
        return mm_fail(err, MM_E_ARG, 0);
    *resident = 0;
    *total = 0;
    if (mm_page_range(view, start, length, &addr, &len) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    pages = (size_t)mm_pages_between(0, len, page);
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
    void *base;
    size_t len;
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (view == NULL)
        return mm_fail(err, MM_E_ARG, 0);
    mm_guard_remove(view); /* before the range can be reused by another mapping */
    base = view->base;
    len = (size_t)view->base_length;
    memset(view, 0, sizeof(*view));
    if (base == NULL)
        return mm_ok(err);
    /* munmap(2) takes the aligned base and the length that was mapped from it. */
    if (munmap(base, len) != 0)
        return mm_fail(err, MM_E_UNMAP, errno);
    return mm_ok(err);
}
