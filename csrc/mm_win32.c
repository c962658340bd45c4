/*
 * mm_win32.c -- the Windows implementation of mm.h.
 *
 * CreateFileW / GetFileSizeEx / SetEndOfFile / CreateFileMappingW / MapViewOfFile, then the
 * mapping handle and the file handle are closed at once: "CreateFileMappingW function
 * (memoryapi.h)" says mapped views of a file mapping object maintain internal references to
 * the object, and "UnmapViewOfFile function (memoryapi.h)" that the system holds the file
 * open until the last view is unmapped. The one handle a live view owns is the flush handle
 * of a MM_WRITE view (mm.h rule, and below).
 *
 * Choices this file documents (all behaviour not spelled out by mm.h):
 *  - A directory is reported as MM_E_STAT with code ERROR_DIRECTORY_NOT_SUPPORTED (336),
 *    the code mm.h names; Python maps it to IsADirectoryError. Another non-disk handle
 *    (pipe, console) is MM_E_STAT with ERROR_NOT_SUPPORTED (50).
 *  - Durable flush needs a file handle ("FlushFileBuffers function (fileapi.h)"). A MM_WRITE
 *    view (by path or by handle) keeps a duplicate of the handle it was mapped from in
 *    view->flush_handle ("DuplicateHandle function (handleapi.h)"), as Rust's memmap2 does;
 *    mm_flush(sync) flushes through it and mm_unmap closes it. It names the file object the
 *    view already holds open, so it changes no sharing or deletion rule; reopening the path
 *    instead would flush whatever file the path names by then, or fail if it names none.
 *  - PrefetchVirtualMemory (Windows 8+) and K32QueryWorkingSetEx (Windows 7+) are looked up
 *    in kernel32 with GetProcAddress on each call, so nothing extra is linked (no psapi.lib)
 *    and the module loads where they are missing. A missing PrefetchVirtualMemory makes
 *    WILLNEED / POPULATE_* a no-op returning MM_OK; a missing K32QueryWorkingSetEx makes
 *    mm_resident fail with MM_E_QUERY / ERROR_PROC_NOT_FOUND.
 *  - MM_POPULATE and MM_ADV_POPULATE_* prefetch only: "PrefetchVirtualMemory function
 *    (memoryapi.h)" says prefetched memory is not added to the working set, so mm_resident
 *    counts those pages once they are touched. A failing prefetch during mm_map_* is ignored
 *    (best effort, as MAP_POPULATE); mm_advise reports it as MM_E_ADVISE.
 *  - MM_ADV_DONTNEED removes the range from the working set (VirtualUnlock on unlocked
 *    pages). MM_ADV_NORMAL, SEQUENTIAL, RANDOM, HUGEPAGE and NOHUGEPAGE have no Windows
 *    equivalent for file views and are no-ops returning MM_OK.
 *  - mm_resident counts pages whose working-set Valid bit is set (QueryWorkingSetEx): pages
 *    mapped in this process, not pages merely cached by the system.
 *  - Windows refuses to truncate a file that has a live mapped view ("SetEndOfFile function
 *    (fileapi.h)"), so MM_TRUNCATE, or MM_CREATE of an existing file, on a file this process
 *    still maps fails with MM_E_GROW (ERROR_USER_MAPPED_FILE), the file as it was (mm.h).
 *    A reset that grew the file first (to prove the disk holds the new size) shrinks it back.
 *    Where that shrink is refused too (wine 8 refuses any shrink of a mapped file; the
 *    SetEndOfFile doc asks to unmap every view first) the file keeps its content but stays
 *    grown, zeros added: the one case where a failed call changes the file's size.
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <psapi.h>

#include <stdlib.h>
#include <string.h>

#include "mm.h"
#include "mm_internal.h"

/* Not in every SDK's winerror.h (mingw-w64 lacks it). */
#ifndef ERROR_DIRECTORY_NOT_SUPPORTED
#define ERROR_DIRECTORY_NOT_SUPPORTED 336L
#endif


/* Same layout as WIN32_MEMORY_RANGE_ENTRY, which older SDK targets do not declare
 * ("WIN32_MEMORY_RANGE_ENTRY structure (memoryapi.h)"). */
typedef struct mm_win_range_entry {
    void *VirtualAddress;
    SIZE_T NumberOfBytes;
} mm_win_range_entry;

typedef BOOL (WINAPI *mm_win_prefetch_fn)(HANDLE, ULONG_PTR, mm_win_range_entry *, ULONG);
typedef BOOL (WINAPI *mm_win_query_ws_fn)(HANDLE, PVOID, DWORD);

/* Indexed by mm_access: "CreateFileMappingW function (memoryapi.h)" protections and the
 * matching "MapViewOfFile function (memoryapi.h)" desired access. */
static const DWORD mm_win_protect[3] = {PAGE_READONLY, PAGE_READWRITE, PAGE_WRITECOPY};
static const DWORD mm_win_view_access[3] = {FILE_MAP_READ, FILE_MAP_WRITE, FILE_MAP_COPY};

/* Pages of the working-set query done per call (16 bytes each on the stack). */
#define MM_WIN_QUERY_CHUNK 256

static int mm_win_error(mm_error *err, int status, DWORD code) {
    return mm_fail(err, status, (int64_t)code);
}

static FARPROC mm_win_kernel32(const char *name) {
    HMODULE kernel32 = GetModuleHandleW(L"kernel32.dll");
    if (kernel32 == NULL)
        return NULL;
    return GetProcAddress(kernel32, name);
}

/* "GetSystemInfo function (sysinfoapi.h)", read once per value (mm_cached); both are
 * DWORDs ("SYSTEM_INFO structure (sysinfoapi.h)"). */
static volatile uint32_t mm_win_granularity_slot, mm_win_page_size_slot;

static uint32_t mm_win_load_granularity(void) {
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    return (uint32_t)info.dwAllocationGranularity;
}

static uint32_t mm_win_load_page_size(void) {
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    return (uint32_t)info.dwPageSize;
}

uint64_t mm_alignment(void) {
    return mm_cached(&mm_win_granularity_slot, mm_win_load_granularity);
}

uint64_t mm_page_size(void) { return mm_cached(&mm_win_page_size_slot, mm_win_load_page_size); }

/* Set the end of file to `size` ("SetEndOfFile function (fileapi.h)": the end of file
 * becomes the file pointer). The caller's file pointer is restored, so a handle passed to
 * mm_map_handle is left where it was. Returns 0 or the failing call's error. */
static DWORD mm_win_set_size(HANDLE file, uint64_t size) {
    LARGE_INTEGER zero, saved, target;
    DWORD code = 0;
    zero.QuadPart = 0;
    if (!SetFilePointerEx(file, zero, &saved, FILE_CURRENT))
        return GetLastError();
    target.QuadPart = (LONGLONG)size;
    if (!SetFilePointerEx(file, target, NULL, FILE_BEGIN) || !SetEndOfFile(file))
        code = GetLastError();
    if (!SetFilePointerEx(file, saved, NULL, FILE_BEGIN) && code == 0)
        code = GetLastError();
    return code;
}

/* "FILE_ALLOCATION_INFO structure (winbase.h)" / "SetFileInformationByHandle function
 * (fileapi.h)": reserve real clusters for `size` bytes without moving the end of file (an
 * allocation below the end of file would truncate it: callers never ask for that). */
static BOOL mm_win_allocate(HANDLE file, uint64_t size) {
    FILE_ALLOCATION_INFO alloc;
    alloc.AllocationSize.QuadPart = (LONGLONG)size;
    return SetFileInformationByHandle(file, FileAllocationInfo, &alloc, sizeof alloc);
}

/* Put the end of file and the allocation back at old_size after a failed grow, or after a
 * grow whose mapping failed. Best effort: the caller reports the first error. */
static void mm_win_restore_size(HANDLE file, uint64_t old_size) {
    (void)mm_win_set_size(file, old_size);
    (void)mm_win_allocate(file, old_size);
}

/* Extend the file from old_size to new_size bytes. The allocation is only a hint: file
 * systems and emulations that refuse it still get the plain SetEndOfFile, which reports a
 * full disk. A failure puts the end of file (and the allocation) back at old_size. */
static DWORD mm_win_grow(HANDLE file, uint64_t old_size, uint64_t new_size) {
    DWORD code;
    (void)mm_win_allocate(file, new_size);
    code = mm_win_set_size(file, new_size);
    if (code != 0)
        mm_win_restore_size(file, old_size);
    return code;
}

/* MM_TRUNCATE: make the file `end` bytes of zeros, reserving the space before the old
 * content goes. A file shorter than `end` is first grown to it with its content kept: a full
 * disk (or an impossible size) fails there, and mm_win_grow puts the file back as it was.
 * Only then is the end of file set to 0 and grown to `end` again, into the space just shown
 * to be free (unless another process takes it in between). The allocation alone is no proof:
 * emulations accept FileAllocationInfo without reserving anything. Cutting the file to 0
 * fails with ERROR_USER_MAPPED_FILE while a view of it exists ("SetEndOfFile function
 * (fileapi.h)"): the grow is undone then, so the file keeps its size and content. */
static DWORD mm_win_reset(HANDLE file, uint64_t old_size, uint64_t end) {
    DWORD code;
    if (end > old_size) {
        code = mm_win_grow(file, old_size, end);
        if (code != 0)
            return code;
    }
    code = mm_win_set_size(file, 0);
    if (code != 0) {
        if (end > old_size)
            mm_win_restore_size(file, old_size);
        return code;
    }
    return end > 0 ? mm_win_grow(file, 0, end) : 0;
}

/* Fail with `status` and `code` after closing the flush handle duplicated for the view
 * (NULL: none yet). `code` is read before the close can change GetLastError(). */
static int mm_win_fail_dropping(HANDLE flush_handle, mm_error *err, int status, DWORD code) {
    if (flush_handle != NULL)
        CloseHandle(flush_handle);
    return mm_win_error(err, status, code);
}

/* Size, grow and map an open file into *view. The handle is not closed; a MM_WRITE view
 * keeps a duplicate of it for durable flushes (see the top of this file). */
static int mm_win_map_file(HANDLE file, int access, uint64_t offset, uint64_t length, int flags,
                           mm_view *view, mm_error *err) {
    BY_HANDLE_FILE_INFORMATION info;
    LARGE_INTEGER size_li;
    uint64_t size, aligned, span;
    mm_plan plan;
    HANDLE mapping, flush_handle = NULL;
    void *base;
    DWORD type, code;
    int status;

    /* "GetFileType function (fileapi.h)": FILE_TYPE_UNKNOWN is an error only when
     * GetLastError() is not NO_ERROR. */
    SetLastError(NO_ERROR);
    type = GetFileType(file);
    if (type == FILE_TYPE_UNKNOWN && GetLastError() != NO_ERROR)
        return mm_win_error(err, MM_E_STAT, GetLastError());
    if (type != FILE_TYPE_DISK)
        return mm_win_error(err, MM_E_STAT, ERROR_NOT_SUPPORTED);
    if (!GetFileInformationByHandle(file, &info))
        return mm_win_error(err, MM_E_STAT, GetLastError());
    if (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)
        return mm_win_error(err, MM_E_STAT, ERROR_DIRECTORY_NOT_SUPPORTED);
    if (!GetFileSizeEx(file, &size_li))
        return mm_win_error(err, MM_E_STAT, GetLastError());
    size = (uint64_t)size_li.QuadPart;
    err->file_size = size;

    /* "MapViewOfFile function (memoryapi.h)": the file offset must be a multiple of the
     * allocation granularity ("SYSTEM_INFO structure (sysinfoapi.h)",
     * dwAllocationGranularity), not of the page size: mm_alignment(). MM_E_MAP from the
     * plan: the view does not fit in a SIZE_T (32-bit hosts), ERROR_ARITHMETIC_OVERFLOW
     * ("System Error Codes (500-999)"); found before the file is changed. */
    status = mm_plan_map(size, offset, length, flags, mm_alignment(), (uint64_t)(SIZE_T)-1,
                         &plan);
    if (status != MM_OK)
        return mm_win_error(err, status, status == MM_E_MAP ? ERROR_ARITHMETIC_OVERFLOW : 0);
    /* "DuplicateHandle function (handleapi.h)": the duplicate refers to the same file object
     * with the same access (GENERIC_WRITE, which "FlushFileBuffers function (fileapi.h)"
     * needs) and is not inherited by child processes. Made before the file changes, so a
     * failure leaves it as it was. */
    if (access == MM_WRITE && plan.length > 0 &&
        !DuplicateHandle(GetCurrentProcess(), file, GetCurrentProcess(), &flush_handle, 0, FALSE,
                         DUPLICATE_SAME_ACCESS))
        return mm_win_error(err, MM_E_MAP, GetLastError());
    if (plan.reset) {
        code = mm_win_reset(file, size, plan.end);
        if (code != 0)
            return mm_win_fail_dropping(flush_handle, err, MM_E_GROW, code);
        err->file_size = plan.end;
    } else if (plan.grow) {
        code = mm_win_grow(file, size, plan.end);
        if (code != 0)
            return mm_win_fail_dropping(flush_handle, err, MM_E_GROW, code);
        err->file_size = plan.end;
    }
    view->access = access;
    view->file_id[0] = info.dwVolumeSerialNumber; /* os.stat's st_dev on Windows */
    view->file_id[1] = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow; /* st_ino */
    if (plan.length == 0)
        return mm_ok(err); /* nothing to map: the file is checked, created or grown */

    aligned = offset - plan.delta;
    span = plan.delta + plan.length; /* fits in a SIZE_T: mm_plan_map */
    /* Maximum size = end: never larger than the file, so no protection extends it
     * ("CreateFileMappingW function (memoryapi.h)"); end > 0 since length > 0, so the
     * ERROR_FILE_INVALID of mapping an empty file cannot happen. */
    mapping = CreateFileMappingW(file, NULL, mm_win_protect[access], (DWORD)(plan.end >> 32),
                                 (DWORD)(plan.end & 0xFFFFFFFFu), NULL);
    base = NULL;
    code = mapping == NULL ? GetLastError() : 0;
    if (mapping != NULL) {
        base = MapViewOfFile(mapping, mm_win_view_access[access], (DWORD)(aligned >> 32),
                             (DWORD)(aligned & 0xFFFFFFFFu), (SIZE_T)span);
        code = base == NULL ? GetLastError() : 0;
        /* The view keeps the section alive ("CreateFileMappingW function (memoryapi.h)"). */
        CloseHandle(mapping);
    }
    if (base == NULL) {
        if (plan.grow)
            mm_win_restore_size(file, size); /* mm.h: a failed call leaves the old size */
        return mm_win_fail_dropping(flush_handle, err, MM_E_MAP, code);
    }

    view->base = base;
    view->base_length = span;
    /* delta < span: the requested byte lies in the view */
    view->data = (char *)base + plan.delta;
    view->length = plan.length;
    view->flush_handle = flush_handle; /* closed by mm_unmap */

    if (flags & MM_POPULATE) {
        mm_win_prefetch_fn prefetch =
            (mm_win_prefetch_fn)(void (*)(void))mm_win_kernel32("PrefetchVirtualMemory");
        mm_win_range_entry range;
        range.VirtualAddress = base;
        range.NumberOfBytes = (SIZE_T)span;
        if (prefetch != NULL)
            (void)prefetch(GetCurrentProcess(), 1, &range, 0);
    }
    return mm_ok(err);
}

/* UTF-8 -> newly allocated NUL-terminated wide string, or NULL with *code set. */
static wchar_t *mm_win_widen(const char *path, DWORD *code) {
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, NULL, 0);
    wchar_t *wide;
    if (n <= 0) {
        *code = GetLastError();
        return NULL;
    }
    wide = (wchar_t *)malloc((size_t)n * sizeof *wide);
    if (wide == NULL) {
        *code = ERROR_NOT_ENOUGH_MEMORY;
        return NULL;
    }
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, wide, n) != n) {
        *code = GetLastError();
        free(wide);
        return NULL;
    }
    return wide;
}

static HANDLE mm_win_open(const wchar_t *wpath, DWORD desired, DWORD disposition) {
    return CreateFileW(wpath, desired, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                       NULL, disposition, FILE_ATTRIBUTE_NORMAL, NULL);
}

/* Why CreateFileW failed. "CreateFileW function (fileapi.h)": opening a directory needs
 * FILE_FLAG_BACKUP_SEMANTICS, without it the call fails with ERROR_ACCESS_DENIED; report a
 * directory as one (MM_E_STAT, ERROR_DIRECTORY_NOT_SUPPORTED, as mm.h says). */
static int mm_win_open_error(const wchar_t *wpath, DWORD code, mm_error *err) {
    DWORD attrs;
    if (code == ERROR_ACCESS_DENIED) {
        attrs = GetFileAttributesW(wpath);
        if (attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_DIRECTORY))
            return mm_win_error(err, MM_E_STAT, ERROR_DIRECTORY_NOT_SUPPORTED);
    }
    return mm_win_error(err, MM_E_OPEN, code);
}

int mm_path_identity(const char *path, uint64_t id[3], mm_error *err) {
    mm_error spare;
    wchar_t *wpath;
    HANDLE file;
    BY_HANDLE_FILE_INFORMATION info;
    DWORD code = 0;
    err = mm_err_or(err, &spare);
    if (path == NULL || id == NULL)
        return mm_fail(err, MM_E_ARG, 0);
    wpath = mm_win_widen(path, &code);
    if (wpath == NULL)
        return mm_win_error(err, MM_E_OPEN, code);
    /* No access asked: enough to read the attributes ("CreateFileW function (fileapi.h)",
     * dwDesiredAccess 0); FILE_FLAG_BACKUP_SEMANTICS opens directories too. */
    file = CreateFileW(wpath, 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                       OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, NULL);
    code = GetLastError();
    free(wpath);
    if (file == INVALID_HANDLE_VALUE)
        return mm_win_error(err, MM_E_OPEN, code);
    if (!GetFileInformationByHandle(file, &info)) {
        code = GetLastError();
        CloseHandle(file);
        return mm_win_error(err, MM_E_STAT, code);
    }
    CloseHandle(file);
    id[0] = info.dwVolumeSerialNumber;
    id[1] = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
    id[2] = ((uint64_t)info.ftCreationTime.dwHighDateTime << 32) |
            info.ftCreationTime.dwLowDateTime;
    return mm_ok(err);
}

int mm_map_path(const char *path, int access, uint64_t offset, uint64_t length, int flags,
                mm_view *view, mm_error *err) {
    mm_error spare;
    wchar_t *wpath;
    HANDLE file;
    DWORD desired, code = 0;
    int created = 0, status;

    err = mm_err_or(err, &spare);
    if (mm_map_begin(view, access, offset, length, flags, path == NULL, err) != MM_OK)
        return err->status;

    wpath = mm_win_widen(path, &code);
    if (wpath == NULL)
        return mm_win_error(err, MM_E_OPEN, code);

    desired = GENERIC_READ;
    if (access == MM_WRITE || (flags & (MM_CREATE | MM_GROW | MM_TRUNCATE)))
        desired |= GENERIC_WRITE;
    if (flags & MM_CREATE) {
        /* CREATE_ALWAYS would not say whether the file existed; CREATE_NEW then
         * OPEN_EXISTING does ("CreateFileW function (fileapi.h)", dwCreationDisposition). An
         * existing file is reset by MM_TRUNCATE, which reserves the space before the old
         * content goes (TRUNCATE_EXISTING would lose it on a full disk). */
        file = mm_win_open(wpath, desired, CREATE_NEW);
        if (file != INVALID_HANDLE_VALUE) {
            created = 1;
        } else if (GetLastError() == ERROR_FILE_EXISTS) {
            file = mm_win_open(wpath, desired, OPEN_EXISTING);
            flags |= MM_TRUNCATE;
        }
    } else {
        file = mm_win_open(wpath, desired, OPEN_EXISTING);
    }
    if (file == INVALID_HANDLE_VALUE) {
        status = mm_win_open_error(wpath, GetLastError(), err);
        free(wpath);
        return status;
    }

    status = mm_win_map_file(file, access, offset, length, flags, view, err);
    CloseHandle(file); /* the view keeps the file open (see the top of this file) */
    /* FILE_SHARE_DELETE and the closed handle let a file this call created go at once. */
    if (status != MM_OK && created)
        (void)DeleteFileW(wpath);
    free(wpath);
    if (status != MM_OK)
        memset(view, 0, sizeof *view);
    return status;
}

int mm_open_read(const char *path, int access, void *buf, uint64_t n, uint64_t *got,
                 mm_handle *handle, mm_error *err) {
    mm_error spare;
    wchar_t *wpath;
    HANDLE file;
    DWORD code = 0, read = 0;
    OVERLAPPED at;
    int status;
    err = mm_err_or(err, &spare);
    if (path == NULL || buf == NULL || got == NULL || handle == NULL ||
        (access != MM_READ && access != MM_WRITE && access != MM_COPY) || n > (1u << 30))
        return mm_win_error(err, MM_E_ARG, 0);
    *got = 0;
    *handle = (mm_handle)INVALID_HANDLE_VALUE;
    wpath = mm_win_widen(path, &code);
    if (wpath == NULL)
        return mm_win_error(err, MM_E_OPEN, code);
    file = mm_win_open(wpath, access == MM_WRITE ? GENERIC_READ | GENERIC_WRITE : GENERIC_READ,
                       OPEN_EXISTING);
    if (file == INVALID_HANDLE_VALUE) {
        status = mm_win_open_error(wpath, GetLastError(), err);
        free(wpath);
        return status;
    }
    free(wpath);
    memset(&at, 0, sizeof at); /* from offset 0 ("ReadFile function (fileapi.h)") */
    if (!ReadFile(file, buf, (DWORD)n, &read, &at)) {
        code = GetLastError();
        if (code != ERROR_HANDLE_EOF) {
            CloseHandle(file);
            return mm_win_error(err, MM_E_STAT, code);
        }
        read = 0;
    }
    *got = read;
    *handle = (mm_handle)file;
    return mm_win_error(err, MM_OK, 0);
}

void mm_close_handle(mm_handle handle) {
    HANDLE file = (HANDLE)handle;
    if (file != NULL && file != INVALID_HANDLE_VALUE)
        CloseHandle(file);
}

int mm_map_handle(mm_handle handle, int access, uint64_t offset, uint64_t length, int flags,
                  mm_view *view, mm_error *err) {
    mm_error spare;
    int status, bad_handle = (HANDLE)handle == NULL || (HANDLE)handle == INVALID_HANDLE_VALUE ||
                             (flags & MM_CREATE);

    err = mm_err_or(err, &spare);
    if (mm_map_begin(view, access, offset, length, flags, bad_handle, err) != MM_OK)
        return err->status;
    status = mm_win_map_file((HANDLE)handle, access, offset, length, flags, view, err);
    if (status != MM_OK)
        memset(view, 0, sizeof *view);
    return status;
}

/* [start, start + length) of the view as offsets from view->base (mm_view_range): *first
 * page-aligned, *last <= base_length, equal for an empty range. MM_OK, or MM_E_ARG. */
static int mm_win_page_range(const mm_view *view, uint64_t start, uint64_t length,
                             uint64_t *first, uint64_t *last, mm_error *err) {
    if (mm_view_range(view, start, length, mm_page_size(), first, last) != 0)
        return mm_win_error(err, MM_E_ARG, 0);
    return MM_OK;
}

int mm_flush(const mm_view *view, uint64_t start, uint64_t length, int sync, mm_error *err) {
    mm_error spare;
    uint64_t first, last;
    int status;

    err = mm_err_or(err, &spare);
    status = mm_win_page_range(view, start, length, &first, &last, err);
    if (status != MM_OK)
        return status;
    if (view->access != MM_WRITE || first == last)
        return mm_ok(err);
    /* "FlushViewOfFile function (memoryapi.h)": it starts the write-back of the pages holding
     * the range and does not wait for the disk; 0 bytes would mean "to the end of the view",
     * last > first avoids it. base + first: first <= delta + start < base_length, inside the
     * view. */
    if (!FlushViewOfFile((char *)view->base + first, (SIZE_T)(last - first)))
        return mm_win_error(err, MM_E_FLUSH, GetLastError());
    if (!sync)
        return mm_ok(err);
    /* Same doc: for durability follow with FlushFileBuffers, which needs a handle with
     * GENERIC_WRITE ("FlushFileBuffers function (fileapi.h)"): the view's duplicate of the
     * handle it was mapped from, so the file flushed is the file mapped, whatever its path
     * names now. Every MM_WRITE view with bytes has one (mm_win_map_file). */
    if (!FlushFileBuffers((HANDLE)view->flush_handle))
        return mm_win_error(err, MM_E_FLUSH, GetLastError());
    return mm_ok(err);
}

int mm_advise(const mm_view *view, uint64_t start, uint64_t length, int advice, mm_error *err) {
    mm_error spare;
    uint64_t first, last;
    mm_win_prefetch_fn prefetch;
    mm_win_range_entry range;
    int status;

    err = mm_err_or(err, &spare);
    if (advice < MM_ADV_NORMAL || advice > MM_ADV_POPULATE_WRITE)
        return mm_win_error(err, MM_E_ARG, 0);
    status = mm_win_page_range(view, start, length, &first, &last, err);
    if (status != MM_OK)
        return status;
    if (first == last)
        return mm_ok(err); /* empty range */
    if (advice == MM_ADV_DONTNEED) {
        /* "VirtualUnlock function (memoryapi.h)": unlocking a range that is not locked
         * removes its pages from the process's working set, and fails with
         * ERROR_NOT_LOCKED, which is the expected outcome here. The pages stay in the
         * system file cache (there is no documented way to drop those for a view). */
        if (!VirtualUnlock((char *)view->base + first, (SIZE_T)(last - first)) &&
            GetLastError() != ERROR_NOT_LOCKED)
            return mm_win_error(err, MM_E_ADVISE, GetLastError());
        return mm_ok(err);
    }
    if (advice != MM_ADV_WILLNEED && advice != MM_ADV_POPULATE_READ &&
        advice != MM_ADV_POPULATE_WRITE)
        return mm_ok(err); /* no Windows equivalent: documented no-op */
    prefetch = (mm_win_prefetch_fn)(void (*)(void))mm_win_kernel32("PrefetchVirtualMemory");
    if (prefetch == NULL)
        return mm_ok(err); /* before Windows 8: documented no-op */
    /* base + first: first <= delta + start < base_length, inside the view; the range ends
     * at the last requested byte (last <= base_length). */
    range.VirtualAddress = (char *)view->base + first;
    range.NumberOfBytes = (SIZE_T)(last - first);
    if (!prefetch(GetCurrentProcess(), 1, &range, 0))
        return mm_win_error(err, MM_E_ADVISE, GetLastError());
    return mm_ok(err);
}

int mm_resident(const mm_view *view, uint64_t start, uint64_t length, uint64_t *resident,
                uint64_t *total, mm_error *err) {
    mm_error spare;
    PSAPI_WORKING_SET_EX_INFORMATION info[MM_WIN_QUERY_CHUNK];
    uint64_t first, last, page = mm_page_size(), pages, done, count = 0;
    mm_win_query_ws_fn query;
    size_t i, n;
    int status;

    err = mm_err_or(err, &spare);
    if (resident == NULL || total == NULL)
        return mm_win_error(err, MM_E_ARG, 0);
    *resident = 0;
    *total = 0;
    status = mm_win_page_range(view, start, length, &first, &last, err);
    if (status != MM_OK)
        return status;
    /* "QueryWorkingSetEx function (psapi.h)": exported by kernel32 as K32QueryWorkingSetEx
     * since Windows 7 (PSAPI_VERSION 2). */
    query = (mm_win_query_ws_fn)(void (*)(void))mm_win_kernel32("K32QueryWorkingSetEx");
    if (query == NULL)
        return mm_win_error(err, MM_E_QUERY, GetLastError());
    pages = mm_pages_between(first, last, page);
    for (done = 0; done < pages; done += n) {
        n = pages - done < MM_WIN_QUERY_CHUNK ? (size_t)(pages - done) : MM_WIN_QUERY_CHUNK;
        for (i = 0; i < n; i++) {
            /* done + i < pages: a page holding a requested byte, inside the view. */
            info[i].VirtualAddress = (char *)view->base + first + (done + i) * page;
            info[i].VirtualAttributes.Flags = 0;
        }
        if (!query(GetCurrentProcess(), info, (DWORD)(n * sizeof info[0])))
            return mm_win_error(err, MM_E_QUERY, GetLastError());
        /* "PSAPI_WORKING_SET_EX_BLOCK union (psapi.h)": Valid is bit 0 of Flags; it is set
         * when the page is in the working set. */
        for (i = 0; i < n; i++)
            count += (uint64_t)(info[i].VirtualAttributes.Flags & 1);
    }
    *resident = count;
    *total = pages;
    return mm_ok(err);
}

void mm_pause(unsigned microseconds) {
    /* "Sleep function (synchapi.h)": milliseconds only; Sleep(0) gives up the rest of the
     * time slice, which is the closest to a short pause. */
    Sleep(microseconds / 1000u);
}

int mm_unmap(mm_view *view, mm_error *err) {
    mm_error spare;
    void *base;
    HANDLE flush_handle;
    DWORD code = 0;

    err = mm_err_or(err, &spare);
    if (view == NULL)
        return mm_win_error(err, MM_E_ARG, 0);
    base = view->base;
    flush_handle = (HANDLE)view->flush_handle;
    memset(view, 0, sizeof *view);
    if (base != NULL && !UnmapViewOfFile(base))
        code = GetLastError();
    /* "CloseHandle function (handleapi.h)"; the first error is the one reported */
    if (flush_handle != NULL && !CloseHandle(flush_handle) && code == 0)
        code = GetLastError();
    if (code != 0)
        return mm_win_error(err, MM_E_UNMAP, code);
    return mm_ok(err);
}

/* ---- The fault guard: not available on Windows (mm.h). A view whose page cannot be read
 * raises EXCEPTION_IN_PAGE_ERROR ("Reading and Writing From a File View", Microsoft Learn),
 * which a vectored handler could see but not repair: a page of a view cannot be replaced by
 * another mapping in place. */
int mm_guard_install(mm_error *err) {
    mm_error spare;
    err = mm_err_or(err, &spare);
    return mm_fail(err, MM_E_ARG, ERROR_NOT_SUPPORTED);
}

int mm_guard_uninstall(mm_error *err) {
    mm_error spare;
    err = mm_err_or(err, &spare);
    return mm_ok(err);
}

int mm_guard_wake_fd(void) { return -1; }

int mm_guard_new_pipe(mm_error *err) {
    mm_error spare;
    err = mm_err_or(err, &spare);
    return mm_ok(err);
}

int mm_guard_keep_front(mm_error *err) { return mm_guard_install(err); }

void *mm_guard_owner(const mm_fault *fault) {
    (void)fault;
    return NULL;
}

int mm_guard_add(mm_view *view, uint64_t token, void *owner, mm_error *err) {
    mm_error spare;
    (void)view;
    (void)token;
    (void)owner;
    err = mm_err_or(err, &spare);
    return mm_fail(err, MM_E_ARG, ERROR_NOT_SUPPORTED);
}

void mm_guard_remove(mm_view *view) {
    if (view != NULL)
        view->guard_slot = 0;
}

uint64_t mm_guard_faults(const mm_view *view) {
    (void)view;
    return 0;
}

int mm_guard_pop(mm_fault *fault) {
    (void)fault;
    return 0;
}

uint64_t mm_guard_take_lost(void) { return 0; }

uint64_t mm_guard_recorded(void) { return 0; }

uint64_t mm_guard_taken(void) { return 0; }

void mm_guard_after_fork(void) {}

int mm_remap(mm_view *view, mm_handle handle, uint64_t offset, uint64_t length, int flags,
             mm_error *err) {
    mm_error spare;
    mm_view fresh;
    BY_HANDLE_FILE_INFORMATION info;
    int status;
    err = mm_err_or(err, &spare);
    if (view == NULL || view->base == NULL || length == 0 || (flags & ~MM_GROW) != 0 ||
        view->access != MM_WRITE)
        return mm_fail(err, MM_E_ARG, 0);
    /* The same file first ("GetFileInformationByHandle function (fileapi.h)": volume serial
     * and file index), before anything grows it; then, Windows being unable to resize a view
     * in place, map the new length and unmap the old view. */
    if (!GetFileInformationByHandle((HANDLE)handle, &info))
        return mm_win_error(err, MM_E_STAT, GetLastError());
    if (info.dwVolumeSerialNumber != view->file_id[0] ||
        (((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow) != view->file_id[1])
        return mm_fail(err, MM_E_STAT, ERROR_FILE_INVALID);
    status = mm_map_handle(handle, MM_WRITE, offset, length, flags, &fresh, err);
    if (status != MM_OK)
        return status;
    mm_unmap(view, NULL);
    *view = fresh;
    return mm_ok(err);
}
