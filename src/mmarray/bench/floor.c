/*
 * floor.c -- the C floor for the open/close benchmarks: the system calls any mapping library
 * must make, in a tight loop, with nothing else. Compiled by the harness into its temporary
 * directory (cc -O2 -shared -fPIC) and called through ctypes once per batch, so the ctypes
 * call costs nothing next to the loop. Each function returns elapsed nanoseconds, or -errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* n x (open + fstat + mmap the whole file read-only + close + munmap). */
int64_t floor_open_map(const char *path, int64_t n) {
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        struct stat st;
        void *p;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (fstat(fd, &st) != 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return -e;
        }
        close(fd);
        munmap(p, (size_t)st.st_size);
    }
    return now_ns() - t0;
}

/* n x (open + pread [at1, at1 + len1) + pread [at2, at2 + len2) if len2 > 0 + fstat + mmap
 * [data_off, data_off + data_len) aligned down to a page + close + munmap): the floor for
 * opening a .npy file (one read: the header) or an .npz member (two reads: the central
 * directory at the end of the archive, then the member's local and .npy headers). */
int64_t floor_open_reads_map(const char *path, int64_t n, int64_t at1, int64_t len1, int64_t at2,
                             int64_t len2, int64_t data_off, int64_t data_len) {
    static char buf[65536];
    long page = sysconf(_SC_PAGESIZE);
    int64_t delta = data_off % page;
    if (len1 > (int64_t)sizeof(buf))
        len1 = sizeof(buf);
    if (len2 > (int64_t)sizeof(buf))
        len2 = sizeof(buf);
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        struct stat st;
        void *p;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (pread(fd, buf, (size_t)len1, (off_t)at1) < 0 ||
            (len2 > 0 && pread(fd, buf, (size_t)len2, (off_t)at2) < 0) || fstat(fd, &st) != 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        p = mmap(NULL, (size_t)(data_len + delta), PROT_READ, MAP_SHARED, fd,
                 (off_t)(data_off - delta));
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return -e;
        }
        close(fd);
        munmap(p, (size_t)(data_len + delta));
    }
    return now_ns() - t0;
}

/* n passes over npaths files, each (open + pread [0, hlen) + fstat + mmap [data_off, st_size)
 * aligned down to a page + close + munmap): the floor for opening a dataset of many small
 * .npy files whose header is hlen bytes long (each file a different path: nothing about one
 * file helps with the next). */
int64_t floor_open_reads_map_many(const char *const *paths, int64_t npaths, int64_t n,
                                  int64_t hlen, int64_t data_off) {
    static char buf[65536];
    long page = sysconf(_SC_PAGESIZE);
    int64_t delta = data_off % page;
    if (hlen > (int64_t)sizeof(buf))
        hlen = sizeof(buf);
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = 0; k < npaths; k++) {
            struct stat st;
            void *p;
            size_t len;
            int fd = open(paths[k], O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return -errno;
            if (pread(fd, buf, (size_t)hlen, 0) < 0 || fstat(fd, &st) != 0) {
                int e = errno;
                close(fd);
                return -e;
            }
            if (st.st_size < data_off) {
                close(fd);
                return -EINVAL;
            }
            len = (size_t)(st.st_size - data_off + delta);
            p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)(data_off - delta));
            if (p == MAP_FAILED) {
                int e = errno;
                close(fd);
                return -e;
            }
            close(fd);
            munmap(p, len);
        }
    }
    return now_ns() - t0;
}
