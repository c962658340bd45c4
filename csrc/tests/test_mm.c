/*
 * test_mm.c -- plain C tests of the mapping layer, through mm.h only.
 *
 * The same file builds against mm_posix.c (cc) and mm_win32.c (mingw, run under wine or on
 * Windows); run.sh beside it does both. Platform differences live in the small helpers at
 * the top (file-scope #ifdef), never in the tests.
 *
 * Usage: test_mm [DIR]   -- scratch files go to a fresh directory under DIR
 *                           (default $TMPDIR or /tmp; GetTempPath on Windows).
 * Prints one line per test, then "N passed, M failed"; exits 1 if any failed.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mm.h"
#include "../mm_internal.h" /* the shared rules, tested directly (no OS call in it) */

/* ------------------------------------------------------------------------------------- */
/* Platform helpers                                                                       */
/* ------------------------------------------------------------------------------------- */
#ifdef _WIN32
#include <windows.h>
#include <winioctl.h>

#define T_ENOENT ERROR_FILE_NOT_FOUND
#define T_EISDIR 336 /* ERROR_DIRECTORY_NOT_SUPPORTED, as mm.h specifies */
#define T_ENODEV 50  /* ERROR_NOT_SUPPORTED */
#define T_SEP "\\"
#define T_WRITE_VIEW_KEEPS_HANDLE 1 /* mm.h: a MM_WRITE view's flush handle */
#define T_RESET_UNDER_A_VIEW_FAILS 1 /* mm.h, MM_TRUNCATE: ERROR_USER_MAPPED_FILE */

static wchar_t *t_wide(const char *path) {
    int n = MultiByteToWideChar(CP_UTF8, 0, path, -1, NULL, 0);
    wchar_t *w = (wchar_t *)malloc((size_t)n * sizeof *w);
    if (w == NULL || MultiByteToWideChar(CP_UTF8, 0, path, -1, w, n) != n) {
        fprintf(stderr, "t_wide failed\n");
        exit(2);
    }
    return w;
}

static FILE *t_fopen(const char *path, const char *mode) {
    wchar_t *w = t_wide(path), wmode[8];
    FILE *f;
    size_t i;
    for (i = 0; mode[i] != 0 && i < 7; i++)
        wmode[i] = (wchar_t)mode[i];
    wmode[i] = 0;
    f = _wfopen(w, wmode);
    free(w);
    return f;
}

/* Windows has no /proc (under wine a path like /proc/self/mem would reach wine's own memory
 * through the Z: drive): the pseudo-file test is skipped there. */
static const char *t_proc_mem_path(void) { return NULL; }

/* Windows has no FIFO in the file system: the FIFO test is skipped there. */
static int t_make_fifo(const char *path) {
    (void)path;
    return -1;
}

static int t_remove(const char *path) {
    wchar_t *w = t_wide(path);
    int ok = DeleteFileW(w) != 0;
    free(w);
    return ok ? 0 : -1;
}

/* Rename, replacing an existing target ("MoveFileExW function (winbase.h)"). */
static int t_rename(const char *from, const char *to) {
    wchar_t *wf = t_wide(from), *wt = t_wide(to);
    int ok = MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING) != 0;
    free(wf);
    free(wt);
    return ok ? 0 : -1;
}

static int t_rmdir(const char *path) {
    wchar_t *w = t_wide(path);
    int ok = RemoveDirectoryW(w) != 0;
    free(w);
    return ok ? 0 : -1;
}

static int t_mkdir(const char *path) {
    wchar_t *w = t_wide(path);
    int ok = CreateDirectoryW(w, NULL) != 0;
    free(w);
    return ok ? 0 : -1;
}

static int64_t t_file_size(const char *path) {
    WIN32_FILE_ATTRIBUTE_DATA data;
    wchar_t *w = t_wide(path);
    int ok = GetFileAttributesExW(w, GetFileExInfoStandard, &data) != 0;
    free(w);
    if (!ok || (data.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY))
        return -1;
    return (int64_t)(((uint64_t)data.nFileSizeHigh << 32) | data.nFileSizeLow);
}

static const char *t_default_tmp(void) {
    static char buf[MAX_PATH + 1];
    DWORD n = GetTempPathA(sizeof buf, buf);
    if (n == 0 || n > sizeof buf - 1)
        return ".";
    if (n > 1 && buf[n - 1] == '\\')
        buf[n - 1] = 0;
    return buf;
}

static unsigned long t_pid(void) { return (unsigned long)GetCurrentProcessId(); }

static mm_handle t_open_rw(const char *path) {
    wchar_t *w = t_wide(path);
    HANDLE h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE,
                           FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                           OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    free(w);
    return h == INVALID_HANDLE_VALUE ? (mm_handle)-1 : (mm_handle)h;
}

static mm_handle t_open_wo(const char *path) {
    wchar_t *w = t_wide(path);
    HANDLE h = CreateFileW(w, GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                           NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    free(w);
    return h == INVALID_HANDLE_VALUE ? (mm_handle)-1 : (mm_handle)h;
}

static int t_close(mm_handle h) { return CloseHandle((HANDLE)h) ? 0 : -1; }

static int t_seek(mm_handle h, int64_t pos) {
    LARGE_INTEGER li;
    li.QuadPart = pos;
    return SetFilePointerEx((HANDLE)h, li, NULL, FILE_BEGIN) ? 0 : -1;
}

static int64_t t_tell(mm_handle h) {
    LARGE_INTEGER zero, pos;
    zero.QuadPart = 0;
    if (!SetFilePointerEx((HANDLE)h, zero, &pos, FILE_CURRENT))
        return -1;
    return pos.QuadPart;
}

/* Make `path` a sparse file of `size` bytes (FSCTL_SET_SPARSE where supported, so NTFS does
 * not zero-fill gigabytes on first write). */
static int t_make_sparse(const char *path, uint64_t size) {
    wchar_t *w = t_wide(path);
    DWORD ret = 0;
    LARGE_INTEGER li;
    HANDLE h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE,
                           NULL, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
    int ok;
    free(w);
    if (h == INVALID_HANDLE_VALUE)
        return -1;
    (void)DeviceIoControl(h, FSCTL_SET_SPARSE, NULL, 0, NULL, 0, &ret, NULL);
    li.QuadPart = (LONGLONG)size;
    ok = SetFilePointerEx(h, li, NULL, FILE_BEGIN) && SetEndOfFile(h);
    CloseHandle(h);
    return ok ? 0 : -1;
}

static int t_pio(const char *path, uint64_t off, void *buf, size_t n, int write) {
    mm_handle h = t_open_rw(path);
    DWORD done = 0;
    int ok;
    if (h == (mm_handle)-1)
        return -1;
    ok = t_seek(h, (int64_t)off) == 0 &&
         (write ? WriteFile((HANDLE)h, buf, (DWORD)n, &done, NULL)
                : ReadFile((HANDLE)h, buf, (DWORD)n, &done, NULL)) &&
         done == n;
    t_close(h);
    return ok ? 0 : -1;
}

/* A number that changes when this process gains an open handle: the handle count; where
 * GetProcessHandleCount is a stub answering 0 (wine 8), the highest of T_PROBES fresh
 * handles instead: handles reuse the lowest free slots (so under wine), so a handle leaked
 * into one of those slots pushes the highest probe up. */
#define T_PROBES 64
static long t_handle_state(void) {
    DWORD n = 0;
    HANDLE probe[T_PROBES];
    ULONG_PTR top = 0;
    int i, made = 0;
    if (GetProcessHandleCount(GetCurrentProcess(), &n) && n > 0)
        return (long)n;
    for (i = 0; i < T_PROBES; i++) {
        probe[i] = CreateEventW(NULL, TRUE, FALSE, NULL);
        if (probe[i] == NULL)
            break;
        made++;
        if ((ULONG_PTR)probe[i] > top)
            top = (ULONG_PTR)probe[i];
    }
    for (i = 0; i < made; i++)
        CloseHandle(probe[i]);
    return made == T_PROBES ? (long)top : -1;
}

/* The fault guard (mm.h) is POSIX only. */
#define T_HAS_GUARD 0
static int t_shrink(const char *path, uint64_t size) { (void)path; (void)size; return -1; }
#define T_KILLED_BY_SIGBUS (-2)
static int t_child_dies_of_sigbus(int how) { (void)how; return -1; }
static uint64_t t_thread_id(void) { return 0; }
static int t_wake_bytes(int fd) { (void)fd; return -1; }
static int t_forked_child_starts_an_empty_queue(volatile const char *page_data) {
    (void)page_data;
    return -1;
}

static int t_is_wine(void) {
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

#else /* POSIX */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define T_ENOENT ENOENT
#define T_EISDIR EISDIR
#define T_ENODEV ENODEV
#define T_SEP "/"
#define T_WRITE_VIEW_KEEPS_HANDLE 0
#define T_RESET_UNDER_A_VIEW_FAILS 0

static FILE *t_fopen(const char *path, const char *mode) { return fopen(path, mode); }
static int t_remove(const char *path) { return unlink(path); }
static int t_make_fifo(const char *path) { return mkfifo(path, 0600); }
static int t_rmdir(const char *path) { return rmdir(path); }
static int t_rename(const char *from, const char *to) { return rename(from, to); }
static int t_mkdir(const char *path) { return mkdir(path, 0700); }

static int64_t t_file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return -1;
    return (int64_t)st.st_size;
}

static const char *t_proc_mem_path(void) {
    return t_file_size("/proc/self/mem") < 0 ? NULL : "/proc/self/mem";
}

static const char *t_default_tmp(void) {
    const char *t = getenv("TMPDIR");
    return t != NULL && t[0] != 0 ? t : "/tmp";
}

static unsigned long t_pid(void) { return (unsigned long)getpid(); }

static mm_handle t_open_rw(const char *path) { return (mm_handle)open(path, O_RDWR); }
static mm_handle t_open_wo(const char *path) { return (mm_handle)open(path, O_WRONLY); }
static int t_close(mm_handle h) { return close((int)h); }
static int t_seek(mm_handle h, int64_t pos) {
    return lseek((int)h, (off_t)pos, SEEK_SET) == (off_t)pos ? 0 : -1;
}
static int64_t t_tell(mm_handle h) { return (int64_t)lseek((int)h, 0, SEEK_CUR); }

static int t_make_sparse(const char *path, uint64_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    int rc;
    if (fd < 0)
        return -1;
    rc = ftruncate(fd, (off_t)size);
    close(fd);
    return rc;
}

static int t_pio(const char *path, uint64_t off, void *buf, size_t n, int write) {
    int fd = open(path, O_RDWR);
    ssize_t done;
    if (fd < 0)
        return -1;
    done = write ? pwrite(fd, buf, n, (off_t)off) : pread(fd, buf, n, (off_t)off);
    close(fd);
    return done == (ssize_t)n ? 0 : -1;
}

/* A number that changes when this process gains an open descriptor: how many are open
 * (/proc/self/fd on Linux, /dev/fd elsewhere); -1 when neither can be listed. The listing's
 * own descriptor is counted every time alike. */
static long t_handle_state(void) {
    const char *dirs[2] = {"/proc/self/fd", "/dev/fd"};
    int i;
    for (i = 0; i < 2; i++) {
        DIR *d = opendir(dirs[i]);
        struct dirent *e;
        long n = 0;
        if (d == NULL)
            continue;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
        return n;
    }
    return -1;
}

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#define T_HAS_GUARD 1
static int t_shrink(const char *path, uint64_t size) { return truncate(path, (off_t)size); }
static uint64_t t_thread_id(void) { return (uint64_t)(uintptr_t)pthread_self(); }

/* Bytes waiting in a pipe (non-blocking reads until empty), or -1. */
static int t_wake_bytes(int fd) {
    char buf[64];
    int n = 0, flags = fcntl(fd, F_GETFL);
    ssize_t got;
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return -1;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        n += (int)got;
    fcntl(fd, F_SETFL, flags);
    return n;
}

static int t_exit_code_of_handler = 0;
static void t_own_handler(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)info; (void)ctx;
    _exit(t_exit_code_of_handler);
}

/* A handler of a program's own that fixes a fault by mapping a zero page where it happened
 * (t_fixes counts the faults it fixed, t_kills the signals sent with kill), or, with
 * t_fix == 0, returns without fixing anything. */
static volatile sig_atomic_t t_fixes = 0, t_kills = 0, t_fix = 1;
static void t_fixing_handler(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)ctx;
    if (info->si_code <= 0) {
        t_kills++;
        return;
    }
    if (t_fix) {
        uintptr_t page = (uintptr_t)info->si_addr & ~(uintptr_t)4095;
        if (mmap((void *)page, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                 0) != MAP_FAILED)
            t_fixes++;
    }
}

/* Fork a child that installs the guard and then gets a SIGBUS that is not the guard's:
 * how 0: raise(SIGBUS) with the default disposition before the guard; how 1: the same with
 * a handler of its own installed before the guard (exits 7); how 2: a fault in a mapping the
 * guard does not know (a shared mapping of a file truncated under it); how 3: such faults at
 * two addresses and a kill(2) in between, with a handler of its own that fixes faults
 * (exits 9 when it fixed both and saw the kill); how 4: such a fault with a handler of its
 * own that returns without fixing it (must die of SIGBUS, not re-fault for ever); how 5: a
 * kill(2) with SIG_IGN, then such a fault (dies of SIGBUS). Returns the child's
 * exit status, T_KILLED_BY_SIGBUS, or -1. */
#define T_KILLED_BY_SIGBUS (-2)
static int t_child_dies_of_sigbus(int how) {
    int status = 0;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        mm_error e;
        if (how == 1) {
            struct sigaction act;
            memset(&act, 0, sizeof act);
            act.sa_sigaction = t_own_handler;
            act.sa_flags = SA_SIGINFO;
            sigemptyset(&act.sa_mask);
            t_exit_code_of_handler = 7;
            sigaction(SIGBUS, &act, NULL);
        }
        if (how == 3 || how == 4) {
            struct sigaction act;
            memset(&act, 0, sizeof act);
            act.sa_sigaction = t_fixing_handler;
            act.sa_flags = SA_SIGINFO;
            sigemptyset(&act.sa_mask);
            t_fix = how == 3;
            sigaction(SIGBUS, &act, NULL);
        }
        if (how == 5)
            signal(SIGBUS, SIG_IGN);
        if (mm_guard_install(&e) != MM_OK)
            _exit(3);
        if (how >= 3) {
            char path[] = "/tmp/mmtest-unguarded-XXXXXX";
            int fd = mkstemp(path);
            volatile char *p;
            if (fd < 0 || ftruncate(fd, 65536) != 0)
                _exit(4);
            p = (volatile char *)mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, 0);
            unlink(path);
            if (p == (volatile char *)MAP_FAILED || ftruncate(fd, 0) != 0)
                _exit(5);
            if (how == 5)
                kill(getpid(), SIGBUS); /* ignored, as it was */
            (void)p[8192];
            if (how == 3) {
                kill(getpid(), SIGBUS); /* to the handler, and the guard stays */
                (void)p[3 * 8192];
                {
                    struct sigaction now; /* the guard is still the one in front */
                    sigaction(SIGBUS, NULL, &now);
                    _exit(t_fixes == 2 && t_kills == 1 &&
                          now.sa_sigaction != t_fixing_handler ? 9 : 10);
                }
            }
            _exit(6);
        }
        if (how == 2) {
            char path[] = "/tmp/mmtest-unguarded-XXXXXX";
            int fd = mkstemp(path);
            volatile char *p;
            if (fd < 0 || ftruncate(fd, 65536) != 0)
                _exit(4);
            p = (volatile char *)mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, 0);
            unlink(path);
            if (p == (volatile char *)MAP_FAILED || ftruncate(fd, 0) != 0)
                _exit(5);
            (void)p[8192]; /* past the end of the file now: SIGBUS, not the guard's */
            _exit(6);
        }
        raise(SIGBUS);
        _exit(8);
    }
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    if (WIFSIGNALED(status))
        return WTERMSIG(status) == SIGBUS ? T_KILLED_BY_SIGBUS : -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Fork with a fault record queued and not taken: in the child (no call of its own: the
 * pthread_atfork handler of mm_guard_install runs inside fork()) the queue starts empty, and
 * a fault at page_data, the same thread's next in the view, is queued as a new run. Returns
 * the child's exit status: 0, or the number of the check that failed. */
static int t_forked_child_starts_an_empty_queue(volatile const char *page_data) {
    int status = 0;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        mm_fault f;
        if (mm_guard_taken() != mm_guard_recorded())
            _exit(1);
        if (page_data[0] != 0) /* past the end of the file: the guard's zero page */
            _exit(2);
        if (mm_guard_pop(&f) != 1 || mm_guard_pop(&f) != 0)
            _exit(3);
        _exit(0);
    }
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int t_is_wine(void) { return 0; }
#endif

/* ------------------------------------------------------------------------------------- */
/* Checks                                                                                 */
/* ------------------------------------------------------------------------------------- */
static int t_failed; /* the running test failed */

/* On failure: print file:line, mark the test failed and leave the test function. */
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            t_failed = 1;                                                                  \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define CHECK_U64(a, b)                                                                    \
    do {                                                                                   \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                                   \
        if (a_ != b_) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%" PRIu64 " != %" PRIu64 ")\n", \
                    __FILE__, __LINE__, #a, #b, a_, b_);                                   \
            t_failed = 1;                                                                  \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* A call's status must be `want`, and err.status must agree with the return value. */
#define CHECK_ST(call, want, errp)                                                         \
    do {                                                                                   \
        int st_ = (call);                                                                  \
        if (st_ != (want) || (errp)->status != st_) {                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s -> status %d (err.status %d, code %"   \
                    PRId64 "), want %d\n", __FILE__, __LINE__, #call, st_,                 \
                    (errp)->status, (errp)->code, (int)(want));                            \
            t_failed = 1;                                                                  \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define CHECK_OK(call, errp) CHECK_ST(call, MM_OK, errp)

static char t_dir[1024];

static const char *t_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s" T_SEP "%s", t_dir, name);
    return buf;
}

/* Byte i of the test pattern: varies with every bit of the offset up to 40. */
static unsigned char t_pat(uint64_t i) {
    return (unsigned char)(((i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24) ^ (i >> 32)) * 37u + 11u) &
                           0xFFu);
}

static int t_write_pattern(const char *path, uint64_t size) {
    FILE *f = t_fopen(path, "wb");
    uint64_t i;
    if (f == NULL)
        return -1;
    for (i = 0; i < size; i++)
        if (fputc(t_pat(i), f) == EOF) {
            fclose(f);
            return -1;
        }
    return fclose(f) == 0 ? 0 : -1;
}

/* Read `n` bytes at `off` with stdio (the file is small: fseek's long is enough). */
static int t_read_at(const char *path, long off, unsigned char *buf, size_t n) {
    FILE *f = t_fopen(path, "rb");
    size_t got;
    if (f == NULL)
        return -1;
    if (fseek(f, off, SEEK_SET) != 0) {
        fclose(f);
        return -1;
    }
    got = fread(buf, 1, n, f);
    fclose(f);
    return got == n ? 0 : -1;
}

/* 1 when data[0..n) equals the pattern from file offset `off`. */
static int t_matches(const char *data, uint64_t off, uint64_t n) {
    uint64_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)data[i] != t_pat(off + i)) {
            fprintf(stderr, "  mismatch at +%" PRIu64 " (file offset %" PRIu64 ")\n", i,
                    off + i);
            return 0;
        }
    return 1;
}

/* 1 when the file from `off` holds the pattern for n bytes. */
static int t_file_matches(const char *path, long off, size_t n) {
    unsigned char *buf = (unsigned char *)malloc(n);
    int ok;
    size_t i;
    if (buf == NULL || t_read_at(path, off, buf, n) != 0) {
        free(buf);
        return 0;
    }
    ok = 1;
    for (i = 0; i < n && ok; i++)
        ok = buf[i] == t_pat((uint64_t)off + i);
    free(buf);
    return ok;
}

static int t_view_zeroed(const mm_view *v) {
    return v->data == NULL && v->length == 0 && v->access == 0 && v->base == NULL &&
           v->base_length == 0 && v->flush_handle == NULL;
}

static void t_poison(mm_view *v) { memset(v, 0xA5, sizeof *v); }

/* Pages spanned by [start, start + len) of a view mapped at file offset `offset`. */
static uint64_t t_pages_spanned(uint64_t offset, uint64_t start, uint64_t len) {
    uint64_t page = mm_page_size();
    uint64_t delta = offset % mm_alignment();
    uint64_t lo = mm_align_down(delta + start, page);
    uint64_t hi = mm_align_down(delta + start + len + page - 1, page);
    return (hi - lo) / page;
}

/* ------------------------------------------------------------------------------------- */
/* Tests                                                                                  */
/* ------------------------------------------------------------------------------------- */
static void test_align_down(void) {
    CHECK_U64(mm_align_down(0, 4096), 0);
    CHECK_U64(mm_align_down(1, 4096), 0);
    CHECK_U64(mm_align_down(4095, 4096), 0);
    CHECK_U64(mm_align_down(4096, 4096), 4096);
    CHECK_U64(mm_align_down(4097, 4096), 4096);
    CHECK_U64(mm_align_down(65537, 65536), 65536);
    CHECK_U64(mm_align_down(65537, 4096), 65536);
    CHECK_U64(mm_align_down(UINT64_C(0x100010001), 65536), UINT64_C(0x100010000));
    CHECK_U64(mm_align_down(UINT64_MAX, 65536), UINT64_MAX - 65535);
    CHECK_U64(mm_align_down(12345, 1), 12345);
    CHECK_U64(mm_align_down(12345, 1000), 12000); /* not only powers of two */
}

/* mm_internal.h, mm_plan_map: what both files do with a sized file, in one order; a view
 * that does not fit in size_t is MM_E_MAP before the file is grown or reset. size_max is a
 * parameter so that a 64-bit host can check the 32-bit case. */
static void test_plan_view_must_fit_size_t(void) {
    const uint64_t four_g = UINT64_C(1) << 32, u32 = UINT32_MAX;
    mm_plan p;
    /* MM_TO_END over a 5 GiB file: fits in 64 bits, not in 32 */
    CHECK_U64(mm_plan_map(5 * four_g, 1, MM_TO_END, 0, 4096, UINT64_MAX, &p), MM_OK);
    CHECK_U64(p.length, 5 * four_g - 1);
    CHECK_U64(p.end, 5 * four_g);
    CHECK_U64(p.delta, 1);
    CHECK(!p.grow && !p.reset);
    CHECK_U64(mm_plan_map(5 * four_g, 1, MM_TO_END, 0, 4096, u32, &p), MM_E_MAP);
    /* the limit counts the alignment delta: 2^32 - 1 bytes fit from an aligned offset only */
    CHECK_U64(mm_plan_map(5 * four_g, 65536, u32, 0, 65536, u32, &p), MM_OK);
    CHECK_U64(mm_plan_map(5 * four_g, 65537, u32, 0, 65536, u32, &p), MM_E_MAP);
    CHECK_U64(mm_plan_map(5 * four_g, 65537, u32 - 1, 0, 65536, u32, &p), MM_OK);
    /* refused before growing or resetting: the plan asks for neither */
    CHECK_U64(mm_plan_map(0, 0, four_g, MM_GROW, 4096, u32, &p), MM_E_MAP);
    CHECK_U64(mm_plan_map(0, 0, four_g, MM_TRUNCATE, 4096, u32, &p), MM_E_MAP);
    /* order: empty, then range, then size */
    CHECK_U64(mm_plan_map(10, 10, MM_TO_END, 0, 4096, u32, &p), MM_E_EMPTY);
    CHECK_U64(mm_plan_map(0, 0, four_g, 0, 4096, u32, &p), MM_E_RANGE);
    /* what is to be done */
    CHECK_U64(mm_plan_map(100, 50, 100, MM_GROW, 4096, u32, &p), MM_OK);
    CHECK(p.grow && !p.reset);
    CHECK_U64(p.end, 150);
    CHECK_U64(mm_plan_map(100, 50, 10, MM_GROW, 4096, u32, &p), MM_OK);
    CHECK(!p.grow && !p.reset);
    CHECK_U64(mm_plan_map(100, 50, 10, MM_TRUNCATE | MM_GROW, 4096, u32, &p), MM_OK);
    CHECK(!p.grow && p.reset);
    CHECK_U64(mm_plan_map(100, 200, 0, 0, 4096, u32, &p), MM_E_RANGE); /* length 0 too */
}

/* mm_internal.h, mm_view_range: the one page-range rule of flush, advise and resident. A
 * made-up view over a plain buffer: base, delta 100, 10000 bytes. */
static void test_view_range(void) {
    static char buffer[16384];
    uint64_t first = 1, last = 1;
    mm_view v;
    memset(&v, 0, sizeof v);
    v.base = buffer;
    v.base_length = 100 + 10000;
    v.data = buffer + 100; /* 100 < base_length */
    v.length = 10000;
    CHECK(mm_view_range(&v, 0, 10000, 4096, &first, &last) == 0);
    CHECK_U64(first, 0);
    CHECK_U64(last, 10100); /* the end, not rounded: never past base_length */
    CHECK_U64(mm_pages_between(first, last, 4096), 3);
    CHECK(mm_view_range(&v, 4000, 1, 4096, &first, &last) == 0);
    CHECK_U64(first, 4096);
    CHECK_U64(last, 4101);
    CHECK_U64(mm_pages_between(first, last, 4096), 1);
    CHECK(mm_view_range(&v, 3995, 2, 4096, &first, &last) == 0); /* across a page boundary */
    CHECK_U64(first, 0);
    CHECK_U64(mm_pages_between(first, last, 4096), 2);
    CHECK(mm_view_range(&v, 10000, 0, 4096, &first, &last) == 0); /* empty, at the end */
    CHECK_U64(first, last);
    CHECK_U64(mm_pages_between(first, last, 4096), 0);
    CHECK(mm_view_range(&v, 10000, 1, 4096, &first, &last) != 0);
    CHECK(mm_view_range(&v, 1, 10000, 4096, &first, &last) != 0);
    CHECK(mm_view_range(&v, 1, UINT64_MAX, 4096, &first, &last) != 0);
    CHECK(mm_view_range(&v, 10001, 0, 4096, &first, &last) != 0);
    CHECK(mm_view_range(NULL, 0, 0, 4096, &first, &last) != 0);
    v.data = NULL;
    CHECK(mm_view_range(&v, 0, 0, 4096, &first, &last) != 0);
}

static int t_loads;
static uint32_t t_load_granularity(void) {
    t_loads++;
    return 65536;
}

/* mm_internal.h, mm_cached: both files read the page size and the allocation granularity from
 * the OS once (sysconf(3), GetSystemInfo) and answer later calls from the cache. */
static void test_sizes_are_cached(void) {
    static volatile uint32_t slot;
    uint64_t p = mm_page_size(), a = mm_alignment();
    int i;
    t_loads = 0;
    CHECK_U64(mm_cached(&slot, t_load_granularity), 65536);
    CHECK_U64(mm_cached(&slot, t_load_granularity), 65536);
    CHECK_U64(slot, 65536);
    CHECK(t_loads == 1);
    for (i = 0; i < 1000; i++) {
        CHECK_U64(mm_page_size(), p);
        CHECK_U64(mm_alignment(), a);
    }
}

static void test_alignment_values(void) {
    uint64_t a = mm_alignment(), p = mm_page_size();
    CHECK(p >= 4096);
    CHECK((p & (p - 1)) == 0);
    CHECK(a >= p);
    CHECK(a % p == 0);
    CHECK((a & (a - 1)) == 0);
#ifdef _WIN32
    CHECK_U64(a, 65536); /* the allocation granularity */
#else
    CHECK_U64(a, p);
#endif
}

static void test_read_roundtrip(void) {
    char path[1100];
    uint64_t size = 3 * mm_alignment() + 12345;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "read.bin");
    CHECK(t_write_pattern(path, size) == 0);
    t_poison(&v);
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), &e);
    CHECK_U64(v.length, size);
    CHECK_U64(e.file_size, size);
    CHECK(v.access == MM_READ);
    CHECK(v.flush_handle == NULL);
    CHECK(t_matches(v.data, 0, size));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_view_zeroed(&v));
    /* an explicit length inside the file */
    CHECK_OK(mm_map_path(path, MM_READ, 100, 5000, 0, &v, &e), &e);
    CHECK_U64(v.length, 5000);
    CHECK(t_matches(v.data, 100, 5000));
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* exactly to the last byte */
    CHECK_OK(mm_map_path(path, MM_READ, size - 1, 1, 0, &v, &e), &e);
    CHECK(t_matches(v.data, size - 1, 1));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_unaligned_offsets(void) {
    static const uint64_t offsets[] = {1, 4095, 4096, 4097, 65535, 65536, 65537, 131073};
    char path[1100];
    uint64_t size = 200000;
    size_t i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "unaligned.bin");
    CHECK(t_write_pattern(path, size) == 0);
    for (i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        uint64_t off = offsets[i];
        CHECK_OK(mm_map_path(path, MM_READ, off, 1000, 0, &v, &e), &e);
        CHECK_U64(v.length, 1000);
        CHECK(t_matches(v.data, off, 1000));
        CHECK_OK(mm_unmap(&v, &e), &e);
        CHECK_OK(mm_map_path(path, MM_READ, off, MM_TO_END, 0, &v, &e), &e);
        CHECK_U64(v.length, size - off);
        CHECK(t_matches(v.data, off, size - off));
        CHECK_OK(mm_unmap(&v, &e), &e);
        CHECK_OK(mm_map_path(path, MM_COPY, off, 3000, 0, &v, &e), &e);
        CHECK(t_matches(v.data, off, 3000));
        CHECK_OK(mm_unmap(&v, &e), &e);
    }
    CHECK(t_remove(path) == 0);
}

static void test_write_roundtrip(void) {
    char path[1100];
    unsigned char back[10000];
    uint64_t size = 100000, off = 4097, len = 10000, i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "write.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, off, len, 0, &v, &e), &e);
    CHECK(v.access == MM_WRITE);
    CHECK(t_matches(v.data, off, len));
    for (i = 0; i < len; i++)
        v.data[i] = (char)(unsigned char)(255 - t_pat(off + i));
    CHECK_OK(mm_flush(&v, 0, len, 1, &e), &e);
    /* visible to stdio while the view is live... */
    CHECK(t_read_at(path, (long)off, back, (size_t)len) == 0);
    for (i = 0; i < len; i++)
        CHECK(back[i] == (unsigned char)(255 - t_pat(off + i)));
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* ...and after unmapping; the bytes around the view are untouched */
    memset(back, 0, sizeof back);
    CHECK(t_read_at(path, (long)off, back, (size_t)len) == 0);
    for (i = 0; i < len; i++)
        CHECK(back[i] == (unsigned char)(255 - t_pat(off + i)));
    CHECK(t_file_matches(path, 0, (size_t)off));
    CHECK(t_file_matches(path, (long)(off + len), (size_t)(size - off - len)));
    CHECK_U64(t_file_size(path), size);
    CHECK(t_remove(path) == 0);
}

static void test_copy_private(void) {
    char path[1100];
    uint64_t size = 3 * mm_alignment(), i;
    mm_view v, r;
    mm_error e;
    t_path(path, sizeof path, "copy.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_COPY, 1, MM_TO_END, 0, &v, &e), &e);
    CHECK(v.access == MM_COPY);
    CHECK(v.flush_handle == NULL);
    for (i = 0; i < v.length; i++)
        v.data[i] = 0x5A;
    for (i = 0; i < v.length; i++)
        CHECK(v.data[i] == 0x5A);
    /* flush of a private view is a no-op */
    CHECK_OK(mm_flush(&v, 0, v.length, 1, &e), &e);
    CHECK(t_file_matches(path, 0, (size_t)size));
    /* a second, shared view still sees the file */
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &r, &e), &e);
    CHECK(t_matches(r.data, 0, size));
    CHECK_OK(mm_unmap(&r, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_file_matches(path, 0, (size_t)size));
    CHECK_U64(t_file_size(path), size);
    CHECK(t_remove(path) == 0);
}

static void test_empty(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "empty.bin");
    CHECK(t_write_pattern(path, 0) == 0);
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), MM_E_EMPTY, &e);
    CHECK(t_view_zeroed(&v));
    CHECK_U64(e.file_size, 0);
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, MM_TO_END, MM_GROW, &v, &e), MM_E_EMPTY, &e);
    CHECK(t_remove(path) == 0);
    /* to-end from the end of a non-empty file is nothing too */
    CHECK(t_write_pattern(path, 5000) == 0);
    CHECK_ST(mm_map_path(path, MM_READ, 5000, MM_TO_END, 0, &v, &e), MM_E_EMPTY, &e);
    CHECK_U64(e.file_size, 5000);
    CHECK(t_remove(path) == 0);
}

/* mm.h: length 0 maps nothing, but the file is opened, checked and grown as for data. */
static void test_zero_length_checks_the_file(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "zero-length.bin");
    CHECK(t_write_pattern(path, 5000) == 0);
    t_poison(&v);
    CHECK_OK(mm_map_path(path, MM_READ, 100, 0, 0, &v, &e), &e);
    CHECK(v.data == NULL && v.length == 0);
    CHECK(v.file_id[0] != 0 || v.file_id[1] != 0);
    CHECK_U64(e.file_size, 5000);
    CHECK_OK(mm_unmap(&v, &e), &e); /* a no-op */
    /* an offset past the end is a range error without MM_GROW ... */
    CHECK_ST(mm_map_path(path, MM_READ, 6000, 0, 0, &v, &e), MM_E_RANGE, &e);
    CHECK(t_view_zeroed(&v));
    CHECK_U64(t_file_size(path), 5000);
    /* ... and grows the file to the offset with it */
    CHECK_OK(mm_map_path(path, MM_WRITE, 7000, 0, MM_GROW, &v, &e), &e);
    CHECK(v.data == NULL);
    CHECK_U64(t_file_size(path), 7000);
    CHECK(t_file_matches(path, 0, 5000));
    /* MM_CREATE with length 0 resets an existing file to `offset` zero bytes */
    CHECK_OK(mm_map_path(path, MM_WRITE, 300, 0, MM_CREATE, &v, &e), &e);
    CHECK(v.data == NULL);
    CHECK_U64(t_file_size(path), 300);
    {
        unsigned char back[300];
        size_t i;
        CHECK(t_read_at(path, 0, back, 300) == 0);
        for (i = 0; i < 300; i++)
            CHECK(back[i] == 0);
    }
    CHECK(t_remove(path) == 0);
    /* and creates a missing one */
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, 0, MM_CREATE, &v, &e), &e);
    CHECK_U64(t_file_size(path), 0);
    /* a directory is refused at length 0 too */
    CHECK_ST(mm_map_path(t_dir, MM_READ, 0, 0, 0, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    CHECK(t_remove(path) == 0);
}

/* mm.h, MM_TRUNCATE / MM_CREATE on an existing file: a reset that cannot get its space
 * fails with the file as it was (size and content). */
static void test_failed_reset_keeps_the_file(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    int st;
    t_path(path, sizeof path, "reset-fail.bin");
    CHECK(t_write_pattern(path, 20000) == 0);
    t_poison(&v);
    /* 2^62 bytes: no disk has them (EFBIG, ENOSPC or the Windows equivalent) */
    st = mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 62, MM_CREATE | MM_GROW, &v, &e);
    CHECK(st == MM_E_GROW);
    CHECK(e.code != 0);
    CHECK(t_view_zeroed(&v));
    CHECK_U64(t_file_size(path), 20000);
    CHECK(t_file_matches(path, 0, 20000));
    {
        mm_handle h = t_open_rw(path);
        CHECK(h != (mm_handle)-1);
        st = mm_map_handle(h, MM_WRITE, 10, UINT64_C(1) << 62, MM_TRUNCATE, &v, &e);
        CHECK(st == MM_E_GROW);
        CHECK(t_close(h) == 0);
    }
    CHECK_U64(t_file_size(path), 20000);
    CHECK(t_file_matches(path, 0, 20000));
    /* a failed grow leaves the old size too */
    st = mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 62, MM_GROW, &v, &e);
    CHECK(st == MM_E_GROW);
    CHECK_U64(t_file_size(path), 20000);
    CHECK(t_file_matches(path, 0, 20000));
    /* resetting with no size to reset to is a bad argument, before any OS call */
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, MM_TO_END, MM_CREATE, &v, &e), MM_E_ARG, &e);
    CHECK_U64(t_file_size(path), 20000);
    CHECK(t_remove(path) == 0);
}

/* mm.h: on failure the file has the size it had before the call, also when the mapping
 * itself fails after the file was grown: a write-only handle can be grown but not mapped
 * for reading (mmap(2) EACCES; CreateFileMappingW needs GENERIC_READ). */
static void test_failed_map_after_grow_keeps_the_size(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    mm_handle h;
    t_path(path, sizeof path, "grow-then-fail.bin");
    CHECK(t_write_pattern(path, 5000) == 0);
    h = t_open_wo(path);
    CHECK(h != (mm_handle)-1);
    t_poison(&v);
    CHECK_ST(mm_map_handle(h, MM_READ, 0, 3 * mm_alignment(), MM_GROW, &v, &e), MM_E_MAP, &e);
    CHECK(e.code != 0);
    CHECK(t_view_zeroed(&v));
    CHECK(t_close(h) == 0);
    CHECK_U64(t_file_size(path), 5000);
    CHECK(t_file_matches(path, 0, 5000));
    CHECK(t_remove(path) == 0);
}

/* mm.h, MM_TRUNCATE: resetting a file this process maps is allowed on POSIX and refused by
 * Windows; refused, the file keeps its content, and its size unless the reset had grown it
 * and the system refuses to shrink a mapped file back (mm.h). */
static void test_reset_under_a_live_view(void) {
    static const uint64_t lengths[] = {100, 400000};
    char path[1100];
    size_t i;
    mm_view r, w;
    mm_error e;
    t_path(path, sizeof path, "reset-mapped.bin");
    for (i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        CHECK(t_write_pattern(path, 300000) == 0);
        CHECK_OK(mm_map_path(path, MM_READ, 0, 50, 0, &r, &e), &e);
        if (T_RESET_UNDER_A_VIEW_FAILS) {
            CHECK_ST(mm_map_path(path, MM_WRITE, 0, lengths[i], MM_CREATE, &w, &e), MM_E_GROW,
                     &e);
            CHECK(e.code != 0);
            CHECK(t_file_matches(path, 0, 300000));
            CHECK(t_matches(r.data, 0, 50));
            /* a reset that grew the file first shrinks it back where the system lets it
             * (wine 8 never does while the file is mapped): old size, or grown by zeros */
            if (lengths[i] <= 300000)
                CHECK_U64(t_file_size(path), 300000);
            else
                CHECK(t_file_size(path) == 300000 || t_file_size(path) == (int64_t)lengths[i]);
        } else {
            CHECK_OK(mm_map_path(path, MM_WRITE, 0, lengths[i], MM_CREATE, &w, &e), &e);
            CHECK_U64(t_file_size(path), lengths[i]);
            CHECK(r.data[0] == 0 && r.data[49] == 0); /* the live view sees the reset */
            CHECK_OK(mm_unmap(&w, &e), &e);
        }
        CHECK_OK(mm_unmap(&r, &e), &e);
        CHECK(t_remove(path) == 0);
    }
}

/* MM_TRUNCATE through a handle: the old content becomes zeros of the new size. */
static void test_truncate_through_a_handle(void) {
    char path[1100];
    uint64_t i;
    mm_view v;
    mm_error e;
    mm_handle h;
    t_path(path, sizeof path, "reset-handle.bin");
    CHECK(t_write_pattern(path, 50000) == 0);
    h = t_open_rw(path);
    CHECK(h != (mm_handle)-1);
    CHECK_OK(mm_map_handle(h, MM_WRITE, 100, 1000, MM_TRUNCATE, &v, &e), &e);
    CHECK_U64(e.file_size, 1100);
    for (i = 0; i < 1000; i++)
        CHECK(v.data[i] == 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_U64(t_file_size(path), 1100);
    /* growing past the old size zero-fills too */
    CHECK_OK(mm_map_handle(h, MM_WRITE, 0, 70000, MM_TRUNCATE, &v, &e), &e);
    for (i = 0; i < 70000; i++)
        CHECK(v.data[i] == 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_close(h) == 0);
    CHECK_U64(t_file_size(path), 70000);
    CHECK(t_remove(path) == 0);
}

/* mm_posix.c: a kernel-interface file (/proc/self/mem) is never grown or reset: glibc's
 * posix_fallocate emulation would write zero bytes into this process's memory. */
static void test_pseudo_file_is_never_grown(void) {
    const char *mem = t_proc_mem_path();
    mm_view v;
    mm_error e;
    if (mem == NULL) {
        fprintf(stderr, "  (no /proc/self/mem here: check skipped)\n");
        return;
    }
    CHECK_ST(mm_map_path(mem, MM_WRITE, 1 << 20, 4096, MM_GROW, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_ENODEV);
    CHECK_ST(mm_map_path(mem, MM_WRITE, 0, 4096, MM_CREATE, &v, &e), MM_E_STAT, &e);
    CHECK(t_view_zeroed(&v));
}

/* mm.h, MM_E_STAT: a FIFO is refused at once, never waited on (O_NONBLOCK). */
static void test_fifo_is_refused_without_blocking(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "a-fifo");
    if (t_make_fifo(path) != 0) {
        fprintf(stderr, "  (no FIFOs here: check skipped)\n");
        return;
    }
    CHECK_ST(mm_map_path(path, MM_READ, 0, 10, 0, &v, &e), MM_E_STAT, &e);
    CHECK(e.code != 0);
    CHECK(t_view_zeroed(&v));
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, 0, MM_GROW, &v, &e), MM_E_STAT, &e);
    CHECK(t_remove(path) == 0);
}

static void test_range_error(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "range.bin");
    CHECK(t_write_pattern(path, 1000) == 0);
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_READ, 0, 1001, 0, &v, &e), MM_E_RANGE, &e);
    CHECK(t_view_zeroed(&v));
    CHECK_U64(e.file_size, 1000);
    CHECK_U64(e.code, 0);
    CHECK_ST(mm_map_path(path, MM_WRITE, 999, 2, 0, &v, &e), MM_E_RANGE, &e);
    CHECK_U64(e.file_size, 1000);
    CHECK_ST(mm_map_path(path, MM_COPY, 5000, 1, 0, &v, &e), MM_E_RANGE, &e);
    CHECK_U64(e.file_size, 1000);
    CHECK_U64(t_file_size(path), 1000); /* nothing grew */
    CHECK(t_file_matches(path, 0, 1000));
    CHECK(t_remove(path) == 0);
}

static void test_grow(void) {
    char path[1100];
    uint64_t off = 70001, len = 5000, i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "grow.bin");
    CHECK(t_write_pattern(path, 1000) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, off, len, MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, off + len);
    CHECK_U64(t_file_size(path), off + len);
    for (i = 0; i < len; i++)
        CHECK(v.data[i] == 0);
    memcpy(v.data, "grown", 5);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_file_matches(path, 0, 1000));
    {
        unsigned char back[5];
        CHECK(t_read_at(path, (long)off, back, 5) == 0);
        CHECK(memcmp(back, "grown", 5) == 0);
    }
    /* MM_GROW with a range already inside the file changes nothing */
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, 1000, MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, off + len);
    CHECK(t_matches(v.data, 0, 1000));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_U64(t_file_size(path), off + len);
    CHECK(t_remove(path) == 0);
}

/* mm.h, mm_map_handle: "The handle must be open for writing when access is MM_WRITE or
 * MM_GROW is given" -- so MM_GROW is valid with a read-only or copy view (numpy's 'r'/'c'
 * never ask for it, a caller that wants a zero-filled tail may). */
static void test_grow_read_only(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "grow-ro.bin");
    CHECK(t_write_pattern(path, 1000) == 0);
    CHECK_OK(mm_map_path(path, MM_READ, 100000, 100, MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, 100100);
    CHECK_U64(t_file_size(path), 100100);
    CHECK(v.data[99] == 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_OK(mm_map_path(path, MM_COPY, 0, 200000, MM_GROW, &v, &e), &e);
    CHECK_U64(t_file_size(path), 200000);
    CHECK(t_matches(v.data, 0, 1000));
    v.data[0] ^= 1; /* private */
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_file_matches(path, 0, 1000));
    CHECK(t_remove(path) == 0);
}

static void test_create(void) {
    char path[1100];
    uint64_t len = 3 * mm_page_size() + 7, i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "create.bin");
    t_remove(path);
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, len, MM_CREATE | MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, len);
    CHECK_U64(t_file_size(path), len);
    for (i = 0; i < len; i++)
        CHECK(v.data[i] == 0);
    v.data[len - 1] = 'z';
    CHECK_OK(mm_unmap(&v, &e), &e);
    {
        unsigned char back;
        CHECK(t_read_at(path, (long)(len - 1), &back, 1) == 0);
        CHECK(back == 'z');
    }
    /* create on an existing file truncates it */
    CHECK(t_write_pattern(path, 50000) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 10, 100, MM_CREATE | MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, 110);
    CHECK_U64(t_file_size(path), 110);
    for (i = 0; i < 100; i++)
        CHECK(v.data[i] == 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_create_failure_cleanup(void) {
    char path[1100], missing[1100];
    mm_view v;
    mm_error e;
    /* a path in a missing directory: fails to open, leaves nothing */
    t_path(missing, sizeof missing, "no-such-dir" T_SEP "x.bin");
    t_poison(&v);
    CHECK_ST(mm_map_path(missing, MM_WRITE, 0, 4096, MM_CREATE | MM_GROW, &v, &e), MM_E_OPEN,
             &e);
    CHECK(e.code != 0);
    CHECK(t_view_zeroed(&v));
    CHECK(t_file_size(missing) < 0);
    /* creating with no size is refused before anything is created */
    t_path(path, sizeof path, "create-fail.bin");
    t_remove(path);
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, MM_TO_END, MM_CREATE, &v, &e), MM_E_ARG, &e);
    CHECK(t_view_zeroed(&v));
    CHECK(t_file_size(path) < 0);
    /* an impossible size (2^63 bytes) fails without leaving a file behind */
    CHECK(mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 63, MM_CREATE | MM_GROW, &v, &e) !=
          MM_OK);
    CHECK(e.status != MM_OK);
    CHECK(t_view_zeroed(&v));
    CHECK(t_file_size(path) < 0);
    /* a file that existed before the call is neither removed nor changed by a failure */
    CHECK(t_write_pattern(path, 3000) == 0);
    CHECK(mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 63, MM_CREATE | MM_GROW, &v, &e) !=
          MM_OK);
    CHECK_U64(t_file_size(path), 3000);
    CHECK(t_file_matches(path, 0, 3000));
    CHECK(t_remove(path) == 0);
}

static void test_missing_file(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "does-not-exist.bin");
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), MM_E_OPEN, &e);
    CHECK_U64(e.code, T_ENOENT);
    CHECK(t_view_zeroed(&v));
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, 10, MM_GROW, &v, &e), MM_E_OPEN, &e);
    CHECK_U64(e.code, T_ENOENT);
    CHECK(t_file_size(path) < 0); /* MM_GROW does not create */
}

/* mm.h, mm_map_path: a missing file is MM_E_OPEN whatever the offset, length and flags that
 * pass the argument checks (length 0 and MM_TO_END included); an empty path too. */
static void test_missing_file_any_length(void) {
    static const uint64_t lengths[] = {0, 1, 10, 1u << 20, MM_TO_END};
    static const int flags[] = {0, MM_GROW, MM_POPULATE, MM_TRUNCATE, MM_GROW | MM_TRUNCATE};
    static const int access[] = {MM_READ, MM_WRITE, MM_COPY};
    char path[1100];
    size_t l, f, a;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "missing-any.bin");
    for (l = 0; l < sizeof lengths / sizeof lengths[0]; l++)
        for (f = 0; f < sizeof flags / sizeof flags[0]; f++)
            for (a = 0; a < sizeof access / sizeof access[0]; a++) {
                if ((flags[f] & MM_TRUNCATE) && lengths[l] == MM_TO_END)
                    continue; /* MM_E_ARG: test_arg_errors_come_first */
                t_poison(&v);
                CHECK_ST(mm_map_path(path, access[a], 4097, lengths[l], flags[f], &v, &e),
                         MM_E_OPEN, &e);
                CHECK_U64(e.code, T_ENOENT);
                CHECK_U64(e.file_size, 0);
                CHECK(t_view_zeroed(&v));
            }
    CHECK(t_file_size(path) < 0);
    CHECK_ST(mm_map_path("", MM_READ, 0, 10, 0, &v, &e), MM_E_OPEN, &e);
    CHECK(e.code != 0);
    CHECK_ST(mm_map_path("", MM_READ, 0, 0, 0, &v, &e), MM_E_OPEN, &e);
}

/* mm.h: every MM_E_ARG of mm_map_* is found before any OS call, so it wins over what the
 * file would have said (missing, a directory, too small) and nothing is created. Offsets
 * and ends past INT64_MAX name no byte of any file on either system. */
static void test_arg_errors_come_first(void) {
    char path[1100], missing[1100];
    const uint64_t big = UINT64_C(1) << 63;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "args-first.bin");
    t_path(missing, sizeof missing, "args-first-missing.bin");
    CHECK(t_write_pattern(path, 1000) == 0);
    /* an end past INT64_MAX: refused before the file is created, opened or grown */
    CHECK_ST(mm_map_path(missing, MM_WRITE, big - 1, 1, MM_CREATE, &v, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK(t_file_size(missing) < 0);
    CHECK_ST(mm_map_path(missing, MM_READ, big, 0, 0, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(missing, MM_READ, big, MM_TO_END, 0, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(path, MM_READ, big, MM_TO_END, 0, &v, &e), MM_E_ARG, &e);
    CHECK_U64(e.file_size, 0); /* the file was not sized */
    CHECK_ST(mm_map_path(path, MM_WRITE, 1, big - 1, MM_GROW, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(path, MM_READ, big - 2, 2, 0, &v, &e), MM_E_ARG, &e);
    CHECK_U64(t_file_size(path), 1000);
    /* the largest end that passes reaches the file: too small for it */
    CHECK_ST(mm_map_path(path, MM_READ, big - 2, 1, 0, &v, &e), MM_E_RANGE, &e);
    /* bad access, flags or MM_TO_END with a reset beat a missing file and a directory */
    CHECK_ST(mm_map_path(missing, 7, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(missing, MM_READ, 0, 10, 1 << 10, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(missing, MM_WRITE, 0, MM_TO_END, MM_TRUNCATE, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(t_dir, 7, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(t_dir, MM_READ, big, 1, 0, &v, &e), MM_E_ARG, &e);
    CHECK(t_file_size(missing) < 0);
    /* handles: -1 is no handle on either system (a descriptor < 0; INVALID_HANDLE_VALUE) */
    CHECK_ST(mm_map_handle((mm_handle)-1, MM_READ, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    {
        mm_handle h = t_open_rw(path);
        CHECK(h != (mm_handle)-1);
        CHECK_ST(mm_map_handle(h, MM_READ, big, MM_TO_END, 0, &v, &e), MM_E_ARG, &e);
        CHECK_ST(mm_map_handle(h, MM_WRITE, 0, big, MM_GROW, &v, &e), MM_E_ARG, &e);
        CHECK_ST(mm_map_handle(h, MM_WRITE, 0, MM_TO_END, MM_TRUNCATE, &v, &e), MM_E_ARG, &e);
        CHECK(t_close(h) == 0);
    }
    CHECK_U64(t_file_size(path), 1000);
    CHECK(t_file_matches(path, 0, 1000));
    CHECK(t_remove(path) == 0);
}

/* mm.h: err may be NULL in every function (the status is still returned); a NULL view,
 * path, resident, total, consumer or stop is MM_E_ARG. */
static void test_null_err_and_pointers(void) {
    char path[1100];
    uint64_t resident = 0, total = 0, consumer = 0;
    int stop = 0;
    mm_view v, h;
    mm_error e;
    mm_handle fd;
    t_path(path, sizeof path, "null-err.bin");
    CHECK(t_write_pattern(path, 3 * mm_alignment()) == 0);
    /* err == NULL: the same statuses, nothing written through it */
    CHECK(mm_map_path(path, 7, 0, 10, 0, &v, NULL) == MM_E_ARG);
    CHECK(mm_map_path(path, MM_READ, 0, 1u << 30, 0, &v, NULL) == MM_E_RANGE);
    CHECK(mm_map_path(t_dir, MM_READ, 0, 10, 0, &v, NULL) == MM_E_STAT);
    CHECK(mm_map_path(path, MM_WRITE, 1, MM_TO_END, 0, &v, NULL) == MM_OK);
    CHECK(t_matches(v.data, 1, 100));
    CHECK(mm_flush(&v, 0, v.length, 1, NULL) == MM_OK);
    CHECK(mm_flush(&v, 0, v.length + 1, 1, NULL) == MM_E_ARG);
    CHECK(mm_advise(&v, 0, v.length, MM_ADV_WILLNEED, NULL) == MM_OK);
    CHECK(mm_advise(&v, 0, v.length, 99, NULL) == MM_E_ARG);
    CHECK(mm_resident(&v, 0, v.length, &resident, &total, NULL) == MM_OK);
    CHECK(resident <= total);
    CHECK(mm_resident(&v, 1, v.length, &resident, &total, NULL) == MM_E_ARG);
    CHECK(mm_populate_ahead(&v, 0, v.length, 4096, v.length, &consumer, &stop, NULL, 0, NULL) ==
          MM_OK);
    CHECK(mm_populate_ahead(&v, 0, v.length, 0, 1, &consumer, &stop, NULL, 0, NULL) == MM_E_ARG);
    fd = t_open_rw(path);
    CHECK(fd != (mm_handle)-1);
    CHECK(mm_map_handle(fd, MM_READ, 0, 100, 0, &h, NULL) == MM_OK);
    CHECK(mm_unmap(&h, NULL) == MM_OK);
    CHECK(mm_map_handle(fd, MM_READ, 0, 100, MM_CREATE, &h, NULL) == MM_E_ARG);
    CHECK(t_close(fd) == 0);
    /* NULL pointers: MM_E_ARG, code 0, through err as well */
    e.status = -1;
    CHECK_ST(mm_map_path(path, MM_READ, 0, 10, 0, NULL, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    t_poison(&h);
    CHECK_ST(mm_map_path(NULL, MM_READ, 0, 10, 0, &h, &e), MM_E_ARG, &e);
    CHECK(t_view_zeroed(&h));
    CHECK_ST(mm_map_handle((mm_handle)-1, MM_READ, 0, 10, 0, NULL, &e), MM_E_ARG, &e);
    CHECK_ST(mm_flush(NULL, 0, 0, 1, &e), MM_E_ARG, &e);
    CHECK_ST(mm_advise(NULL, 0, 0, MM_ADV_NORMAL, &e), MM_E_ARG, &e);
    CHECK_ST(mm_resident(NULL, 0, 0, &resident, &total, &e), MM_E_ARG, &e);
    CHECK_ST(mm_resident(&v, 0, 1, NULL, &total, &e), MM_E_ARG, &e);
    CHECK_ST(mm_resident(&v, 0, 1, &resident, NULL, &e), MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(NULL, 0, 0, 1, 1, &consumer, &stop, NULL, 0, &e), MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(&v, 0, 1, 1, 1, NULL, &stop, NULL, 0, &e), MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(&v, 0, 1, 1, 1, &consumer, NULL, NULL, 0, &e), MM_E_ARG, &e);
    CHECK_ST(mm_unmap(NULL, &e), MM_E_ARG, &e);
    CHECK(mm_unmap(NULL, NULL) == MM_E_ARG);
    /* a view with nothing mapped (zeroed, or made with length 0) has no range to act on */
    memset(&h, 0, sizeof h);
    CHECK_ST(mm_flush(&h, 0, 0, 1, &e), MM_E_ARG, &e);
    CHECK_ST(mm_advise(&h, 0, 0, MM_ADV_NORMAL, &e), MM_E_ARG, &e);
    CHECK_ST(mm_resident(&h, 0, 0, &resident, &total, &e), MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(&h, 0, 0, 1, 1, &consumer, &stop, NULL, 0, &e), MM_E_ARG, &e);
    CHECK(mm_unmap(&v, NULL) == MM_OK);
    CHECK(t_view_zeroed(&v));
    CHECK(t_remove(path) == 0);
}

static void test_directory(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "a-dir");
    CHECK(t_mkdir(path) == 0);
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    CHECK(t_view_zeroed(&v));
    /* mm.h, MM_E_STAT: a directory is MM_E_STAT whatever the access and flags, also where
     * the open itself refuses it (open(2) O_RDWR: EISDIR; CreateFileW: access denied) */
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, 10, 0, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    CHECK_ST(mm_map_path(path, MM_READ, 0, 10, MM_GROW, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    CHECK_ST(mm_map_path(path, MM_COPY, 0, 0, 0, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, 10, MM_CREATE | MM_GROW, &v, &e), MM_E_STAT, &e);
    CHECK_U64(e.code, T_EISDIR);
    CHECK(t_view_zeroed(&v));
    CHECK(t_rmdir(path) == 0); /* still a directory, still empty */
}

static void test_bad_args(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "args.bin");
    CHECK(t_write_pattern(path, 10000) == 0);
    t_poison(&v);
    CHECK_ST(mm_map_path(path, 3, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    CHECK(t_view_zeroed(&v));
    CHECK_ST(mm_map_path(path, -1, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(path, MM_READ, 0, 10, 64, &v, &e), MM_E_ARG, &e);
    /* offset + length overflows 64 bits */
    t_poison(&v);
    CHECK_ST(mm_map_path(path, MM_READ, 10, UINT64_MAX - 5, 0, &v, &e), MM_E_ARG, &e);
    CHECK(t_view_zeroed(&v));
    {
        mm_handle h = t_open_rw(path);
        CHECK(h != (mm_handle)-1);
        t_poison(&v);
        CHECK_ST(mm_map_handle(h, MM_WRITE, 0, 10, MM_CREATE, &v, &e), MM_E_ARG, &e);
        CHECK(t_view_zeroed(&v));
        CHECK(t_close(h) == 0);
    }
    CHECK_U64(t_file_size(path), 10000);
    CHECK(t_remove(path) == 0);
}

/* mm.h: "MM_E_ARG = 1, a bad argument (no OS call made); code = 0". */
static void test_arg_error_code_zero(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "argcode.bin");
    CHECK(t_write_pattern(path, 100) == 0);
    CHECK_ST(mm_map_path(path, 3, 0, 10, 0, &v, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK_ST(mm_map_path(path, MM_READ, 0, 10, 64, &v, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK_ST(mm_map_path(path, MM_READ, 10, UINT64_MAX - 5, 0, &v, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK_OK(mm_map_path(path, MM_READ, 0, 100, 0, &v, &e), &e);
    CHECK_ST(mm_flush(&v, 0, 101, 1, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK_ST(mm_advise(&v, 0, 100, 99, &e), MM_E_ARG, &e);
    CHECK_U64(e.code, 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_high_offset(void) {
    char path[1100];
    const uint64_t four_g = UINT64_C(1) << 32;
    uint64_t size = four_g + 256 * 1024, i;
    uint64_t ro = four_g + 65537, rw = four_g + 4097;
    char marker[64], back[100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "sparse.bin");
    CHECK(t_make_sparse(path, size) == 0);
    CHECK_U64(t_file_size(path), size);
    for (i = 0; i < sizeof marker; i++)
        marker[i] = (char)t_pat(ro + i);
    CHECK(t_pio(path, ro, marker, sizeof marker, 1) == 0);
    /* read-only, unaligned, above 4 GiB */
    CHECK_OK(mm_map_path(path, MM_READ, ro, sizeof marker, 0, &v, &e), &e);
    CHECK_U64(e.file_size, size);
    CHECK(t_matches(v.data, ro, sizeof marker));
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* to the end from above 4 GiB */
    CHECK_OK(mm_map_path(path, MM_READ, ro, MM_TO_END, 0, &v, &e), &e);
    CHECK_U64(v.length, size - ro);
    CHECK(t_matches(v.data, ro, sizeof marker));
    CHECK(v.data[v.length - 1] == 0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* writable above 4 GiB: lands at the right file offset */
    CHECK_OK(mm_map_path(path, MM_WRITE, rw, 100, 0, &v, &e), &e);
    for (i = 0; i < 100; i++)
        v.data[i] = (char)(i + 1);
    CHECK_OK(mm_flush(&v, 0, 100, 1, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_pio(path, rw, back, 100, 0) == 0);
    for (i = 0; i < 100; i++)
        CHECK(back[i] == (char)(i + 1));
    /* past the end of the big file: the size reported is 64-bit */
    CHECK_ST(mm_map_path(path, MM_READ, size - 10, 11, 0, &v, &e), MM_E_RANGE, &e);
    CHECK_U64(e.file_size, size);
    CHECK(t_remove(path) == 0);
}

static void test_flush(void) {
    char path[1100];
    uint64_t size = 5 * mm_page_size() + 123, i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "flush.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 4097, MM_TO_END, 0, &v, &e), &e);
    for (i = 0; i < v.length; i++)
        v.data[i] = (char)(unsigned char)(i * 3);
    CHECK_OK(mm_flush(&v, 0, v.length, 1, &e), &e);        /* whole, durable */
    CHECK_OK(mm_flush(&v, 1234, 5000, 1, &e), &e);         /* ranged, unaligned */
    CHECK_OK(mm_flush(&v, 0, v.length, 0, &e), &e);        /* whole, async */
    CHECK_OK(mm_flush(&v, 4095, 2, 0, &e), &e);            /* ranged async across a page */
    CHECK_OK(mm_flush(&v, v.length - 1, 1, 1, &e), &e);    /* the last byte */
    {
        unsigned char back[256];
        CHECK(t_read_at(path, 4097, back, sizeof back) == 0);
        for (i = 0; i < sizeof back; i++)
            CHECK(back[i] == (unsigned char)(i * 3));
    }
    /* ranges outside the view */
    CHECK_ST(mm_flush(&v, v.length, 1, 1, &e), MM_E_ARG, &e);
    CHECK_ST(mm_flush(&v, 0, v.length + 1, 1, &e), MM_E_ARG, &e);
    CHECK_ST(mm_flush(&v, 1, UINT64_MAX, 1, &e), MM_E_ARG, &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* read-only view: a no-op */
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), &e);
    CHECK_OK(mm_flush(&v, 0, v.length, 1, &e), &e);
    CHECK_OK(mm_flush(&v, 10, 10, 0, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

/* mm.h, mm_flush: a durable flush reaches the file the view maps, whatever its path names
 * now (msync(2) needs no path; Windows keeps a duplicate of the file handle for
 * FlushFileBuffers instead of reopening the path, which reached another file or none). */
static void test_flush_after_the_file_is_replaced(void) {
    char path[1100], moved[1100], other[1100];
    uint64_t size = 3 * mm_alignment() + 100, i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "replaced.bin");
    t_path(moved, sizeof moved, "replaced-moved.bin");
    t_path(other, sizeof other, "replaced-other.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 4097, 1000, 0, &v, &e), &e);
    for (i = 0; i < 1000; i++)
        v.data[i] = 'w';
    /* renamed away: nothing at the path */
    CHECK(t_rename(path, moved) == 0);
    CHECK_OK(mm_flush(&v, 0, 1000, 1, &e), &e);
    /* another file renamed over the path: flushed views never touch it */
    CHECK(t_write_pattern(other, 5000) == 0);
    CHECK(t_rename(other, path) == 0);
    for (i = 0; i < 1000; i++)
        v.data[i] = 'x';
    CHECK_OK(mm_flush(&v, 0, 1000, 1, &e), &e);
    CHECK_OK(mm_flush(&v, 10, 1, 0, &e), &e);
    CHECK_U64(t_file_size(path), 5000);
    CHECK(t_file_matches(path, 0, 5000));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_U64(t_file_size(path), 5000);
    CHECK(t_file_matches(path, 0, 5000));
    {
        unsigned char back[1000];
        CHECK(t_read_at(moved, 4097, back, sizeof back) == 0);
        for (i = 0; i < sizeof back; i++)
            CHECK(back[i] == 'x');
    }
    CHECK(t_file_matches(moved, 0, 4097));
    CHECK_U64(t_file_size(moved), size);
    /* a view made from a handle flushes durably after its caller closed the handle */
    {
        mm_handle h = t_open_rw(moved);
        CHECK(h != (mm_handle)-1);
        CHECK_OK(mm_map_handle(h, MM_WRITE, 1, 100, 0, &v, &e), &e);
        CHECK(t_close(h) == 0);
        memset(v.data, 'h', 100);
        CHECK_OK(mm_flush(&v, 0, 100, 1, &e), &e);
        CHECK_OK(mm_unmap(&v, &e), &e);
    }
    {
        unsigned char back[100];
        CHECK(t_read_at(moved, 1, back, sizeof back) == 0);
        for (i = 0; i < sizeof back; i++)
            CHECK(back[i] == 'h');
    }
    CHECK(t_remove(moved) == 0);
    CHECK(t_remove(path) == 0);
}

static void test_handle_mapping(void) {
    char path[1100];
    uint64_t size = 100000, i;
    mm_handle h;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "handle.bin");
    CHECK(t_write_pattern(path, size) == 0);
    h = t_open_rw(path);
    CHECK(h != (mm_handle)-1);
    CHECK(t_seek(h, 77) == 0);
    CHECK_OK(mm_map_handle(h, MM_READ, 65537, MM_TO_END, 0, &v, &e), &e);
    CHECK_U64(v.length, size - 65537);
    CHECK(t_matches(v.data, 65537, v.length));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_OK(mm_map_handle(h, MM_WRITE, 4097, 1000, 0, &v, &e), &e);
    CHECK((v.flush_handle != NULL) == T_WRITE_VIEW_KEEPS_HANDLE);
    for (i = 0; i < 1000; i++)
        v.data[i] = 'h';
    CHECK_OK(mm_flush(&v, 0, 1000, 1, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* growing through a handle keeps the caller's file position */
    CHECK_OK(mm_map_handle(h, MM_WRITE, size, 4096, MM_GROW, &v, &e), &e);
    CHECK_U64(e.file_size, size + 4096);
    CHECK_U64(t_tell(h), 77);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_ST(mm_map_handle(h, MM_READ, size + 4096, 1, 0, &v, &e), MM_E_RANGE, &e);
    CHECK_U64(e.file_size, size + 4096);
    CHECK(t_close(h) == 0); /* the handle was left open and valid */
    CHECK_U64(t_file_size(path), size + 4096);
    {
        unsigned char back[1000];
        CHECK(t_read_at(path, 4097, back, sizeof back) == 0);
        for (i = 0; i < sizeof back; i++)
            CHECK(back[i] == 'h');
    }
    CHECK(t_remove(path) == 0);
}

static void test_advise(void) {
    char path[1100];
    uint64_t size = 16 * mm_page_size() + 5;
    int adv;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "advise.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 4097, MM_TO_END, 0, &v, &e), &e);
    for (adv = MM_ADV_NORMAL; adv <= MM_ADV_POPULATE_WRITE; adv++) {
        CHECK_OK(mm_advise(&v, 0, v.length, adv, &e), &e);
        CHECK_OK(mm_advise(&v, 1000, 3 * mm_page_size(), adv, &e), &e);
        CHECK_OK(mm_advise(&v, v.length - 1, 1, adv, &e), &e);
    }
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_NORMAL, &e), &e);
    CHECK(t_matches(v.data, 4097, v.length)); /* advice never changes the data */
    CHECK_ST(mm_advise(&v, 0, v.length, 99, &e), MM_E_ARG, &e);
    CHECK_ST(mm_advise(&v, 0, v.length, -1, &e), MM_E_ARG, &e);
    CHECK_ST(mm_advise(&v, v.length, 1, MM_ADV_WILLNEED, &e), MM_E_ARG, &e);
    CHECK_ST(mm_advise(&v, 0, v.length + 1, MM_ADV_WILLNEED, &e), MM_E_ARG, &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* read-only view: the read-side advice */
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), &e);
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_SEQUENTIAL, &e), &e);
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_WILLNEED, &e), &e);
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_POPULATE_READ, &e), &e);
    CHECK(t_matches(v.data, 0, v.length));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_file_matches(path, 0, 4097));
    CHECK(t_remove(path) == 0);
}

/* mm.h, mm_advise: advice never changes the bytes a view shows. MM_ADV_DONTNEED on a
 * copy-on-write view keeps its private writes on both systems (madvise(2) MADV_DONTNEED
 * would drop them on POSIX; VirtualUnlock keeps them on Windows). */
static void test_dontneed_keeps_private_writes(void) {
    char path[1100];
    uint64_t size = 4 * mm_alignment(), i;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "dontneed-copy.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_COPY, 0, MM_TO_END, 0, &v, &e), &e);
    for (i = 0; i < v.length; i++)
        v.data[i] = 'p';
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_DONTNEED, &e), &e);
    CHECK_OK(mm_advise(&v, 100, 3 * mm_page_size(), MM_ADV_DONTNEED, &e), &e);
    for (i = 0; i < v.length; i++)
        CHECK(v.data[i] == 'p');
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_file_matches(path, 0, (size_t)size));
    /* a shared view: the writes are the file's, DONTNEED keeps them too */
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, MM_TO_END, 0, &v, &e), &e);
    for (i = 0; i < v.length; i++)
        v.data[i] = 's';
    CHECK_OK(mm_advise(&v, 0, v.length, MM_ADV_DONTNEED, &e), &e);
    for (i = 0; i < v.length; i++)
        CHECK(v.data[i] == 's');
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_populate_ahead(void) {
    char path[1100];
    uint64_t page = mm_page_size(), len = 40 * page + 123, resident = 0, total = 0;
    uint64_t consumer;
    volatile uint64_t progress;
    int stop = 0;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "ahead.bin");
    CHECK(t_write_pattern(path, len) == 0);
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), &e);
    /* consumer at the start, window covering the range: populated in steps, then it returns */
    consumer = 0;
    CHECK_OK(mm_populate_ahead(&v, 0, len, 3 * page, len, &consumer, &stop, NULL, 0, &e), &e);
    /* consumer already at the end: nothing left to populate for it, returns at once */
    consumer = len;
    CHECK_OK(mm_populate_ahead(&v, 0, len, page, page, &consumer, &stop, NULL, 0, &e), &e);
    CHECK_OK(mm_resident(&v, 0, len, &resident, &total, &e), &e);
#ifndef _WIN32 /* Windows prefetch does not add pages to the working set until touched */
    CHECK_U64(resident, total);
#endif
    CHECK(resident <= total);
    /* a set stop flag returns at once, even with the consumer far behind */
    stop = 1;
    consumer = 0;
    CHECK_OK(mm_populate_ahead(&v, 0, len, page, page, &consumer, &stop, NULL, 0, &e), &e);
    stop = 0;
    /* bad ranges and a zero step are MM_E_ARG */
    CHECK_ST(mm_populate_ahead(&v, 0, len + 1, page, page, &consumer, &stop, NULL, 0, &e),
             MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(&v, 10, 5, page, page, &consumer, &stop, NULL, 0, &e),
             MM_E_ARG, &e);
    CHECK_ST(mm_populate_ahead(&v, 0, len, 0, page, &consumer, &stop, NULL, 0, &e),
             MM_E_ARG, &e);
    /* a zero window could never move ahead of the consumer: refused, not waited on */
    CHECK_ST(mm_populate_ahead(&v, 0, len, page, 0, &consumer, &stop, NULL, 0, &e),
             MM_E_ARG, &e);
    /* progress: end once it returns, whether it finished, was stopped or was refused */
    progress = 0;
    consumer = 0;
    CHECK_OK(mm_populate_ahead(&v, 0, len, page, len, &consumer, &stop, &progress, 0, &e), &e);
    CHECK_U64(progress, len);
    progress = 0;
    stop = 1;
    CHECK_OK(mm_populate_ahead(&v, page, len, page, len, &consumer, &stop, &progress, 0, &e), &e);
    CHECK_U64(progress, len);
    stop = 0;
    progress = 0;
    CHECK_ST(mm_populate_ahead(&v, 0, len, 0, page, &consumer, &stop, &progress, 0, &e),
             MM_E_ARG, &e);
    CHECK_U64(progress, len);
    /* a consumer that never moves: the idle limit (20 ms) ends the wait */
    consumer = 0;
    CHECK_OK(mm_populate_ahead(&v, 0, len, page, page, &consumer, &stop, NULL, 20000, &e), &e);
    mm_pause(10); /* returns */
    mm_pause(0);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_guard_turns_a_fault_into_a_zero_page(void) {
    char path[1100];
    uint64_t page = mm_page_size(), len = 8 * page;
    volatile const char *data;
    uint64_t consumer = 0;
    int stop = 0;
    mm_view v, w;
    mm_error e;
    mm_fault f;
    uint64_t before;
    if (!T_HAS_GUARD) {
        CHECK_ST(mm_guard_install(&e), MM_E_ARG, &e);
        CHECK(mm_guard_wake_fd() == -1);
        CHECK_U64(mm_guard_recorded(), 0);
        CHECK_U64(mm_guard_taken(), 0);
        return;
    }
    t_path(path, sizeof path, "guard.bin");
    CHECK(t_write_pattern(path, len) == 0);
    CHECK_OK(mm_guard_install(&e), &e);
    CHECK_OK(mm_guard_install(&e), &e); /* idempotent */
    CHECK(mm_guard_wake_fd() >= 0);
    while (mm_guard_pop(&f)) /* faults of earlier tests, if any */
        ;
    t_wake_bytes(mm_guard_wake_fd());
    CHECK_OK(mm_map_path(path, MM_READ, 100, len - 100, 0, &v, &e), &e);
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, len, 0, &w, &e), &e);
    CHECK_OK(mm_guard_add(&v, 42, &v, &e), &e);
    CHECK_OK(mm_guard_add(&w, 43, NULL, &e), &e);
    CHECK_U64(mm_guard_faults(&v), 0);
    before = mm_guard_recorded();
    CHECK(t_shrink(path, 2 * page) == 0); /* pages 2.. of the file are gone */
    data = v.data;
    CHECK(data[10] == (char)t_pat(110)); /* still in the file */
    CHECK(data[3 * page] == 0);                   /* past its end: the guard's zero page */
    CHECK(data[3 * page + 1] == 0);               /* the same page: no second fault */
    CHECK_U64(mm_guard_faults(&v), 1);
    CHECK_U64(mm_guard_faults(&w), 0);
    w.data[5 * page] = 9; /* a write past the end: a writable zero page takes it */
    CHECK(w.data[5 * page] == 9);
    CHECK_U64(mm_guard_faults(&w), 1);
    CHECK(mm_guard_pop(&f) == 1);
    CHECK_U64(f.token, 42);
    CHECK(mm_guard_owner(&f) == (void *)&v);
    CHECK_U64(f.offset, 3 * page);
    CHECK_U64(f.thread, t_thread_id());
    CHECK(mm_guard_pop(&f) == 1);
    CHECK_U64(f.token, 43);
    CHECK_U64(f.offset, 5 * page);
    CHECK_U64(mm_guard_recorded(), before + 2);
    CHECK_U64(mm_guard_taken(), before + 2); /* both taken */
    CHECK(mm_guard_pop(&f) == 0);
    CHECK(t_wake_bytes(mm_guard_wake_fd()) == 2);
    /* its record taken, the thread's next fault in the view is a new run: queued again */
    CHECK(data[4 * page] == 0);
    CHECK(data[5 * page] == 0); /* the same run: counted, not queued */
    CHECK_U64(mm_guard_faults(&v), 3);
    CHECK(mm_guard_pop(&f) == 1);
    CHECK_U64(f.token, 42);
    CHECK_U64(f.offset, 4 * page);
    CHECK(mm_guard_pop(&f) == 0);
    CHECK(t_wake_bytes(mm_guard_wake_fd()) == 1);
    /* a forked child forgets the queue and the runs: its next fault is queued again */
    CHECK(data[6 * page] == 0);                    /* queued, not taken */
    CHECK(mm_guard_recorded() == mm_guard_taken() + 1);
    CHECK(t_forked_child_starts_an_empty_queue(data + 7 * page) == 0);
    CHECK(mm_guard_recorded() == mm_guard_taken() + 1); /* the parent's record stays */
    /* the wake bytes of the fault at page 6 and of the child's, through the inherited pipe */
    CHECK(t_wake_bytes(mm_guard_wake_fd()) == 2);
    mm_guard_after_fork();
    CHECK_U64(mm_guard_taken(), mm_guard_recorded());
    CHECK(mm_guard_pop(&f) == 0);                  /* forgotten */
    CHECK(data[7 * page] == 0);                    /* the same thread and view: a new run */
    CHECK(mm_guard_pop(&f) == 1);
    CHECK_U64(f.offset, 7 * page);
    CHECK(t_wake_bytes(mm_guard_wake_fd()) == 1);
    /* a populating loop over a faulted view stops and says so */
    consumer = 0;
    CHECK_ST(mm_populate_ahead(&v, 0, len - 100, page, len, &consumer, &stop, NULL, 0, &e),
             MM_E_FAULT, &e);
    f.token = 42;
    f.slot = v.guard_slot - 1;
    CHECK(mm_guard_owner(&f) == (void *)&v);
    CHECK_OK(mm_guard_keep_front(&e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e); /* unguards first */
    CHECK_U64(mm_guard_faults(&v), 0);
    CHECK(mm_guard_owner(&f) == NULL); /* unguarded: no owner any more */
    CHECK_OK(mm_unmap(&w, &e), &e);
    CHECK_OK(mm_guard_uninstall(&e), &e);
    CHECK(t_remove(path) == 0);
}

/* mm.h, mm_guard_take_lost: faults past a full queue are dropped, and counted. */
static void test_guard_counts_the_records_it_drops(void) {
    char path[1100];
    uint64_t page = mm_page_size(), n = MM_GUARD_QUEUE + 76, i, popped = 0;
    volatile const char *data;
    mm_view v;
    mm_error e;
    mm_fault f;
    if (!T_HAS_GUARD) {
        CHECK_U64(mm_guard_take_lost(), 0);
        return;
    }
    t_path(path, sizeof path, "guard-lost.bin");
    CHECK(t_write_pattern(path, (n + 2) * page) == 0);
    CHECK_OK(mm_guard_install(&e), &e);
    while (mm_guard_pop(&f)) /* faults of earlier tests, if any */
        ;
    (void)mm_guard_take_lost();
    t_wake_bytes(mm_guard_wake_fd());
    CHECK_OK(mm_map_path(path, MM_READ, 0, (n + 2) * page, 0, &v, &e), &e);
    CHECK(t_shrink(path, page) == 0);
    data = v.data;
    for (i = 1; i <= n; i++) { /* guarded anew each time: each fault is a record */
        mm_guard_remove(&v);
        CHECK_OK(mm_guard_add(&v, i, NULL, &e), &e);
        CHECK(data[i * page] == 0);
    }
    while (mm_guard_pop(&f))
        popped++;
    CHECK_U64(popped, MM_GUARD_QUEUE);
    CHECK_U64(mm_guard_take_lost(), n - MM_GUARD_QUEUE);
    CHECK_U64(mm_guard_take_lost(), 0); /* reset by the call */
    t_wake_bytes(mm_guard_wake_fd());
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

static void test_guard_leaves_other_sigbus_fatal(void) {
    if (!T_HAS_GUARD)
        return;
    /* raise(SIGBUS): the default action, not the guard */
    CHECK(t_child_dies_of_sigbus(0) == T_KILLED_BY_SIGBUS);
    /* the handler that was there first gets it */
    CHECK(t_child_dies_of_sigbus(1) == 7);
    /* a fault in a mapping the guard does not know */
    CHECK(t_child_dies_of_sigbus(2) == T_KILLED_BY_SIGBUS);
    /* a handler that fixes faults keeps working, a kill goes to it without removing the
     * guard; one that cannot fix the fault ends in the default action, not a loop */
    CHECK(t_child_dies_of_sigbus(3) == 9);
    CHECK(t_child_dies_of_sigbus(4) == T_KILLED_BY_SIGBUS);
    CHECK(t_child_dies_of_sigbus(5) == T_KILLED_BY_SIGBUS);
}

static void test_guard_stale_copy_of_a_view_frees_nothing(void) {
    static char fake[64];
    char path[1100];
    uint64_t page = mm_page_size();
    mm_view v, stale, x, other;
    mm_error e;
    mm_fault f;
    if (!T_HAS_GUARD)
        return;
    t_path(path, sizeof path, "stale.bin");
    CHECK(t_write_pattern(path, 4 * page) == 0);
    CHECK_OK(mm_guard_install(&e), &e);
    CHECK_OK(mm_map_path(path, MM_READ, 0, 4 * page, 0, &v, &e), &e);
    CHECK_OK(mm_guard_add(&v, 7, NULL, &e), &e);
    stale = v;                       /* a copy naming the same slot */
    mm_guard_remove(&v);             /* the slot is free: the next add takes it */
    CHECK_OK(mm_map_path(path, MM_READ, 0, 4 * page, 0, &x, &e), &e);
    CHECK_OK(mm_guard_add(&x, 8, &x, &e), &e);
    CHECK_U64(x.guard_slot, stale.guard_slot);
    mm_guard_remove(&stale);         /* names another base: x stays guarded */
    f.token = 8;
    f.slot = x.guard_slot - 1;
    CHECK(mm_guard_owner(&f) == (void *)&x);
    /* and its slot is not given to another view (a fake one: guarded, never touched) */
    memset(&other, 0, sizeof other);
    other.base = other.data = (char *)fake;
    other.base_length = other.length = sizeof fake;
    other.access = MM_READ;
    CHECK_OK(mm_guard_add(&other, 9, NULL, &e), &e);
    CHECK(other.guard_slot != 0 && other.guard_slot != x.guard_slot);
    mm_guard_remove(&other);
    CHECK(mm_guard_owner(&f) == (void *)&x);
    CHECK_OK(mm_unmap(&stale, &e), &e);
    CHECK_OK(mm_unmap(&x, &e), &e);
    CHECK(mm_guard_owner(&f) == NULL);
    CHECK(t_remove(path) == 0);
}

static void test_path_identity_tells_a_recreated_file(void) {
    char path[1100];
    uint64_t first[3], again[3], missing[3];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "identity.bin");
    CHECK(t_write_pattern(path, 100) == 0);
    CHECK_OK(mm_map_path(path, MM_READ, 0, 100, 0, &v, &e), &e);
    CHECK_OK(mm_path_identity(path, first, &e), &e);
    CHECK_U64(first[0], v.file_id[0]); /* the same file as the view's */
    CHECK_U64(first[1], v.file_id[1]);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_OK(mm_path_identity(path, again, &e), &e);
    CHECK(memcmp(first, again, sizeof first) == 0);
    mm_pause(20000); /* birth times of two files made within one clock tick would be equal */
    CHECK(t_remove(path) == 0);
    CHECK(t_write_pattern(path, 100) == 0); /* may get the freed inode number back */
    CHECK_OK(mm_path_identity(path, again, &e), &e);
    CHECK_U64(again[0], first[0]);
    if (first[2] != 0 && again[2] != 0) /* where the filesystem keeps birth times */
        CHECK(again[1] != first[1] || again[2] != first[2]);
    CHECK(t_remove(path) == 0);
    CHECK_ST(mm_path_identity(path, missing, &e), MM_E_OPEN, &e);
    CHECK(e.code == T_ENOENT);
    CHECK_ST(mm_path_identity(NULL, missing, &e), MM_E_ARG, &e);
}

static void test_open_read_reads_the_start_then_maps_by_handle(void) {
    char path[1100];
    unsigned char buf[256];
    uint64_t got, i;
    mm_handle h;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "open-read.bin");
    CHECK(t_write_pattern(path, 100) == 0);
    CHECK_OK(mm_open_read(path, MM_READ, buf, 64, &got, &h, &e), &e);
    CHECK_U64(got, 64);
    for (i = 0; i < got; i++)
        CHECK(buf[i] == t_pat(i));
    CHECK_OK(mm_map_handle(h, MM_READ, 10, 90, 0, &v, &e), &e);
    mm_close_handle(h); /* the view does not need it */
    CHECK((unsigned char)v.data[0] == t_pat(10));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_OK(mm_open_read(path, MM_WRITE, buf, sizeof buf, &got, &h, &e), &e);
    CHECK_U64(got, 100); /* fewer at the end of the file */
    mm_close_handle(h);
    CHECK(t_remove(path) == 0);
    CHECK_ST(mm_open_read(path, MM_READ, buf, 64, &got, &h, &e), MM_E_OPEN, &e);
    CHECK(e.code == T_ENOENT);
    CHECK_ST(mm_open_read(NULL, MM_READ, buf, 64, &got, &h, &e), MM_E_ARG, &e);
    CHECK_ST(mm_open_read(path, 7, buf, 64, &got, &h, &e), MM_E_ARG, &e);
}

static void test_remap_grows_and_shrinks_a_view_of_the_same_file(void) {
    char path[1100], other[1100];
    uint64_t page = mm_page_size();
    mm_view v, o;
    mm_error e;
    mm_handle h, wrong;
    t_path(path, sizeof path, "remap.bin");
    t_path(other, sizeof other, "remap-other.bin");
    CHECK(t_write_pattern(path, 2 * page) == 0);
    CHECK(t_write_pattern(other, 2 * page) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 100, page, 0, &v, &e), &e);
    v.data[0] = 42;
    h = t_open_rw(path);
    wrong = t_open_rw(other);
    /* longer than the file: refused without MM_GROW, the view unchanged */
    CHECK_ST(mm_remap(&v, h, 100, 5 * page, 0, &e), MM_E_RANGE, &e);
    CHECK(v.data[0] == 42 && v.length == page);
    /* another file's handle: refused before anything grows */
    CHECK_ST(mm_remap(&v, wrong, 100, 5 * page, MM_GROW, &e), MM_E_STAT, &e);
    CHECK(t_file_size(other) == (int64_t)(2 * page));
    /* grown: the file too, the data kept, the new end writable */
    CHECK_OK(mm_remap(&v, h, 100, 5 * page, MM_GROW, &e), &e);
    CHECK_U64(v.length, 5 * page);
    CHECK(v.data[0] == 42);
    CHECK(t_file_size(path) == (int64_t)(100 + 5 * page));
    v.data[5 * page - 1] = 7; /* the last byte of the new length: inside the view */
    /* shrunk: the file keeps its size */
    CHECK_OK(mm_remap(&v, h, 100, 10, 0, &e), &e);
    CHECK_U64(v.length, 10);
    CHECK(v.data[0] == 42);
    CHECK(t_file_size(path) == (int64_t)(100 + 5 * page));
    CHECK_ST(mm_remap(&v, h, 100, 0, 0, &e), MM_E_ARG, &e);
    CHECK_OK(mm_map_path(path, MM_READ, 0, 10, 0, &o, &e), &e);
    CHECK_ST(mm_remap(&o, h, 0, 20, 0, &e), MM_E_ARG, &e); /* read-only views do not resize */
    CHECK_OK(mm_unmap(&o, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_close(h) == 0 && t_close(wrong) == 0);
    CHECK(t_remove(path) == 0 && t_remove(other) == 0);
}

static void test_guard_add_refuses_an_empty_view(void) {
    mm_view v;
    mm_error e;
    memset(&v, 0, sizeof v);
    if (!T_HAS_GUARD)
        return;
    CHECK_ST(mm_guard_add(&v, 1, NULL, &e), MM_E_ARG, &e);
    CHECK_ST(mm_guard_add(NULL, 1, NULL, &e), MM_E_ARG, &e);
    CHECK(mm_guard_owner(NULL) == NULL);
    mm_guard_remove(&v); /* unguarded: a no-op */
    mm_guard_remove(NULL);
    CHECK_U64(mm_guard_faults(NULL), 0);
}

/* The table of guarded views fills to the last slot, and a slot freed below the others is
 * found again (by the next add), then the search goes on past the taken ones: the views
 * are fake (address space reserved PROT_NONE, never touched), the guard only records them. */
static void test_guard_slots_fill_and_freed_ones_are_found(void) {
#if T_HAS_GUARD
    uint64_t page = mm_page_size(), i, added = 0;
    uint32_t low, high;
    mm_view *views, extra;
    mm_error e;
    char *space;
    views = calloc(MM_GUARD_SLOTS, sizeof *views);
    CHECK(views != NULL);
    space = mmap(NULL, (size_t)(MM_GUARD_SLOTS + 1) * page, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(space != MAP_FAILED);
    if (views == NULL || space == MAP_FAILED)
        return;
    for (i = 0; i <= MM_GUARD_SLOTS; i++) {
        mm_view *v = i < MM_GUARD_SLOTS ? &views[i] : &extra;
        memset(v, 0, sizeof *v);
        v->base = v->data = space + i * page; /* page i of the reservation: no two overlap */
        v->base_length = v->length = page;
        v->access = MM_READ;
    }
    /* Every free slot is taken (a test before this one may hold none: all unmapped). */
    for (i = 0; i < MM_GUARD_SLOTS; i++) {
        if (mm_guard_add(&views[i], 1000 + i, NULL, &e) != MM_OK)
            break;
        added++;
    }
    CHECK_U64(added, MM_GUARD_SLOTS);
    CHECK_ST(mm_guard_add(&extra, 1, NULL, &e), MM_E_ARG, &e); /* full: not guarded */
    CHECK_U64(extra.guard_slot, 0);
    /* Two freed, one low, one high: the next two adds take exactly those, low first. */
    low = views[5].guard_slot;
    high = views[MM_GUARD_SLOTS - 3].guard_slot;
    mm_guard_remove(&views[5]);
    mm_guard_remove(&views[MM_GUARD_SLOTS - 3]);
    CHECK_OK(mm_guard_add(&extra, 1, NULL, &e), &e);
    CHECK_U64(extra.guard_slot, low);
    CHECK_OK(mm_guard_add(&views[5], 2, NULL, &e), &e);
    CHECK_U64(views[5].guard_slot, high);
    CHECK_ST(mm_guard_add(&views[MM_GUARD_SLOTS - 3], 3, NULL, &e), MM_E_ARG, &e);
    mm_guard_remove(&extra);
    for (i = 0; i < MM_GUARD_SLOTS; i++)
        mm_guard_remove(&views[i]);
    /* All free again: the lowest slot is found first. */
    CHECK_OK(mm_guard_add(&extra, 4, NULL, &e), &e);
    CHECK_U64(extra.guard_slot, 1);
    mm_guard_remove(&extra);
    CHECK(munmap(space, (size_t)(MM_GUARD_SLOTS + 1) * page) == 0);
    free(views);
#endif
}

static void test_resident(void) {
    char path[1100];
    uint64_t page = mm_page_size(), off = 4097, len = 64 * page, i;
    uint64_t resident = 99, total = 99;
    volatile unsigned sum = 0;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "resident.bin");
    CHECK(t_write_pattern(path, off + len) == 0);
    CHECK_OK(mm_map_path(path, MM_READ, off, len, 0, &v, &e), &e);
    for (i = 0; i < len; i += page / 2) /* touch every page */
        sum += (unsigned char)v.data[i];
    sum += (unsigned char)v.data[len - 1];
    CHECK_OK(mm_resident(&v, 0, len, &resident, &total, &e), &e);
    CHECK_U64(total, t_pages_spanned(off, 0, len));
    CHECK_U64(resident, total);
    CHECK_OK(mm_resident(&v, page + 5, 1, &resident, &total, &e), &e);
    CHECK_U64(total, 1);
    CHECK_U64(resident, 1);
    CHECK_OK(mm_resident(&v, page - 1, 2, &resident, &total, &e), &e);
    CHECK_U64(total, t_pages_spanned(off, page - 1, 2));
    CHECK_U64(resident, total);
    CHECK_ST(mm_resident(&v, len, 1, &resident, &total, &e), MM_E_ARG, &e);
    CHECK_ST(mm_resident(&v, 0, len + 1, &resident, &total, &e), MM_E_ARG, &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    /* a view that was never touched: 0 <= resident <= total */
    CHECK_OK(mm_map_path(path, MM_READ, 0, MM_TO_END, 0, &v, &e), &e);
    CHECK_OK(mm_resident(&v, 0, v.length, &resident, &total, &e), &e);
    CHECK_U64(total, t_pages_spanned(0, 0, off + len));
    CHECK(resident <= total);
    CHECK_OK(mm_unmap(&v, &e), &e);
    (void)sum;
    CHECK(t_remove(path) == 0);
}

static void test_populate(void) {
    char path[1100];
    uint64_t size = 32 * mm_page_size() + 11;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "populate.bin");
    CHECK(t_write_pattern(path, size) == 0);
    CHECK_OK(mm_map_path(path, MM_READ, 3, MM_TO_END, MM_POPULATE, &v, &e), &e);
    CHECK(t_matches(v.data, 3, v.length));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, size + 100, MM_POPULATE | MM_GROW, &v, &e), &e);
    CHECK(t_matches(v.data, 0, size));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_U64(t_file_size(path), size + 100);
    CHECK(t_remove(path) == 0);
}

static void test_unmap_twice(void) {
    char path[1100];
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "unmap.bin");
    CHECK(t_write_pattern(path, 5000) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 1, 100, 0, &v, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_view_zeroed(&v));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_view_zeroed(&v));
    memset(&v, 0, sizeof v);
    CHECK_OK(mm_unmap(&v, &e), &e); /* a zeroed struct is "no view" */
    CHECK(t_remove(path) == 0);
}

static void test_no_descriptor_held(void) {
    char path[1100], missing[1100];
    long before, during, after;
    mm_view r, w, c, x;
    mm_error e;
    t_path(path, sizeof path, "fds.bin");
    t_path(missing, sizeof missing, "fds-missing.bin");
    CHECK(t_write_pattern(path, 100000) == 0);
    before = t_handle_state();
    if (before < 0) {
        fprintf(stderr, "  (cannot observe open descriptors here: check skipped)\n");
        CHECK(t_remove(path) == 0);
        return;
    }
    CHECK_OK(mm_map_path(path, MM_READ, 1, MM_TO_END, 0, &r, &e), &e);
    CHECK_OK(mm_map_path(path, MM_COPY, 65537, 1000, 0, &c, &e), &e);
    after = t_handle_state();
    CHECK_U64(after, before);
    /* mm.h: on Windows a MM_WRITE view keeps one handle, for FlushFileBuffers */
    CHECK_OK(mm_map_path(path, MM_WRITE, 4097, 1000, 0, &w, &e), &e);
    CHECK((w.flush_handle != NULL) == T_WRITE_VIEW_KEEPS_HANDLE);
    during = t_handle_state();
    CHECK(T_WRITE_VIEW_KEEPS_HANDLE ? during != before : during == before);
    /* failures close what they opened (a MM_WRITE map that fails to grow: its flush handle) */
    CHECK_ST(mm_map_path(missing, MM_READ, 0, 10, 0, &x, &e), MM_E_OPEN, &e);
    CHECK_ST(mm_map_path(path, MM_READ, 0, 100001, 0, &x, &e), MM_E_RANGE, &e);
    CHECK_ST(mm_map_path(path, MM_READ, 100000, MM_TO_END, 0, &x, &e), MM_E_EMPTY, &e);
    CHECK_ST(mm_map_path(missing, MM_WRITE, 0, MM_TO_END, MM_CREATE, &x, &e), MM_E_ARG, &e);
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 62, MM_CREATE, &x, &e), MM_E_GROW,
             &e);
    CHECK_ST(mm_map_path(t_dir, MM_READ, 0, 10, 0, &x, &e), MM_E_STAT, &e);
    CHECK_ST(mm_map_path(path, MM_WRITE, 0, UINT64_C(1) << 62, MM_GROW, &x, &e), MM_E_GROW, &e);
    after = t_handle_state();
    CHECK_U64(after, during);
    CHECK_OK(mm_flush(&r, 0, r.length, 1, &e), &e);
    CHECK_OK(mm_flush(&w, 0, w.length, 1, &e), &e);
    CHECK_OK(mm_unmap(&r, &e), &e);
    CHECK_OK(mm_unmap(&w, &e), &e);
    CHECK_OK(mm_unmap(&c, &e), &e);
    after = t_handle_state();
    CHECK_U64(after, before);
    CHECK(t_file_size(missing) < 0);
    CHECK(t_remove(path) == 0);
}

static void test_utf8_path(void) {
    char path[1100];
    uint64_t i;
    mm_view v;
    mm_error e;
    /* "café-€.bin" in UTF-8 */
    t_path(path, sizeof path, "caf\xc3\xa9-\xe2\x82\xac.bin");
    t_remove(path);
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, 4000, MM_CREATE | MM_GROW, &v, &e), &e);
    for (i = 0; i < 4000; i++)
        v.data[i] = (char)t_pat(i);
    CHECK_OK(mm_flush(&v, 0, 4000, 1, &e), &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK_U64(t_file_size(path), 4000);
    CHECK(t_file_matches(path, 0, 4000));
    CHECK_OK(mm_map_path(path, MM_READ, 1, MM_TO_END, 0, &v, &e), &e);
    CHECK(t_matches(v.data, 1, 3999));
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

/* Empty ranges (length 0, start <= view length) are accepted as no-ops; they span no page. */
static void test_zero_length_ranges(void) {
    char path[1100];
    uint64_t resident = 99, total = 99;
    int adv;
    mm_view v;
    mm_error e;
    t_path(path, sizeof path, "zero.bin");
    CHECK(t_write_pattern(path, 3 * mm_page_size()) == 0);
    CHECK_OK(mm_map_path(path, MM_WRITE, 0, MM_TO_END, 0, &v, &e), &e);
    CHECK_OK(mm_flush(&v, 0, 0, 1, &e), &e);
    CHECK_OK(mm_flush(&v, 1, 0, 0, &e), &e);
    CHECK_OK(mm_flush(&v, v.length, 0, 1, &e), &e);
    for (adv = MM_ADV_NORMAL; adv <= MM_ADV_POPULATE_WRITE; adv++)
        CHECK_OK(mm_advise(&v, 7, 0, adv, &e), &e);
    CHECK_OK(mm_resident(&v, 0, 0, &resident, &total, &e), &e);
    CHECK_U64(total, 0);
    CHECK_U64(resident, 0);
    resident = total = 99;
    CHECK_OK(mm_resident(&v, 1, 0, &resident, &total, &e), &e);
    CHECK_U64(total, 0);
    CHECK_U64(resident, 0);
    CHECK_ST(mm_flush(&v, v.length + 1, 0, 1, &e), MM_E_ARG, &e);
    CHECK_OK(mm_unmap(&v, &e), &e);
    CHECK(t_remove(path) == 0);
}

/* ------------------------------------------------------------------------------------- */
typedef struct t_case {
    const char *name;
    void (*fn)(void);
} t_case;

#define T_CASE(f) {#f, f}

static const t_case t_cases[] = {
    T_CASE(test_align_down),
    T_CASE(test_guard_turns_a_fault_into_a_zero_page),
    T_CASE(test_guard_leaves_other_sigbus_fatal),
    T_CASE(test_guard_counts_the_records_it_drops),
    T_CASE(test_guard_add_refuses_an_empty_view),
    T_CASE(test_guard_slots_fill_and_freed_ones_are_found),
    T_CASE(test_path_identity_tells_a_recreated_file),
    T_CASE(test_open_read_reads_the_start_then_maps_by_handle),
    T_CASE(test_remap_grows_and_shrinks_a_view_of_the_same_file),
    T_CASE(test_guard_stale_copy_of_a_view_frees_nothing),
    T_CASE(test_alignment_values),
    T_CASE(test_sizes_are_cached),
    T_CASE(test_plan_view_must_fit_size_t),
    T_CASE(test_view_range),
    T_CASE(test_read_roundtrip),
    T_CASE(test_unaligned_offsets),
    T_CASE(test_write_roundtrip),
    T_CASE(test_copy_private),
    T_CASE(test_empty),
    T_CASE(test_zero_length_checks_the_file),
    T_CASE(test_failed_reset_keeps_the_file),
    T_CASE(test_truncate_through_a_handle),
    T_CASE(test_reset_under_a_live_view),
    T_CASE(test_failed_map_after_grow_keeps_the_size),
    T_CASE(test_fifo_is_refused_without_blocking),
    T_CASE(test_pseudo_file_is_never_grown),
    T_CASE(test_range_error),
    T_CASE(test_grow),
    T_CASE(test_grow_read_only),
    T_CASE(test_create),
    T_CASE(test_create_failure_cleanup),
    T_CASE(test_missing_file),
    T_CASE(test_missing_file_any_length),
    T_CASE(test_arg_errors_come_first),
    T_CASE(test_null_err_and_pointers),
    T_CASE(test_directory),
    T_CASE(test_bad_args),
    T_CASE(test_arg_error_code_zero),
    T_CASE(test_high_offset),
    T_CASE(test_flush),
    T_CASE(test_flush_after_the_file_is_replaced),
    T_CASE(test_handle_mapping),
    T_CASE(test_advise),
    T_CASE(test_resident),
    T_CASE(test_populate),
    T_CASE(test_unmap_twice),
    T_CASE(test_no_descriptor_held),
    T_CASE(test_utf8_path),
    T_CASE(test_zero_length_ranges),
    T_CASE(test_populate_ahead),
    T_CASE(test_dontneed_keeps_private_writes),
};

int main(int argc, char **argv) {
    const char *base = argc > 1 ? argv[1] : t_default_tmp();
    size_t i, n = sizeof t_cases / sizeof t_cases[0];
    int passed = 0, failed = 0, attempt;

    for (attempt = 0; attempt < 100; attempt++) {
        snprintf(t_dir, sizeof t_dir, "%s" T_SEP "mmtest-%lu-%d", base, t_pid(), attempt);
        if (t_mkdir(t_dir) == 0)
            break;
    }
    if (attempt == 100) {
        fprintf(stderr, "cannot create a scratch directory under %s\n", base);
        return 2;
    }
    printf("scratch: %s; alignment %" PRIu64 ", page %" PRIu64 "%s\n", t_dir, mm_alignment(),
           mm_page_size(), t_is_wine() ? "; under wine" : "");

    for (i = 0; i < n; i++) {
        t_failed = 0;
        t_cases[i].fn();
        printf("%s %s\n", t_failed ? "FAIL" : "ok  ", t_cases[i].name);
        fflush(stdout);
        if (t_failed)
            failed++;
        else
            passed++;
    }
    if (failed == 0)
        t_rmdir(t_dir); /* every test removed its files */
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
