/*
 * mm_internal.h -- the rules mm_posix.c and mm_win32.c (and mm_scan.c) share, written once.
 *
 * Private to the mapping layer: not part of the contract (mm.h). Static inline functions of
 * plain arithmetic and argument checks, no OS header and no OS call, so both builds compile
 * the same code and the C tests (csrc/tests/test_mm.c) check the rules directly, with values
 * a 64-bit test host cannot produce through the OS (a 32-bit size_t).
 */
#ifndef MM_INTERNAL_H
#define MM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mm.h"

/* Every flag mm.h defines for mm_map_path / mm_map_handle. */
#define MM_KNOWN_FLAGS (MM_CREATE | MM_GROW | MM_POPULATE | MM_TRUNCATE)

/* The largest end of a file either OS can address: off_t (64-bit on POSIX, the build sets
 * _FILE_OFFSET_BITS=64) and LARGE_INTEGER ("GetFileSizeEx function (fileapi.h)") are signed
 * 64-bit. An offset or offset + length past it names no byte of any file. */
#define MM_MAX_FILE_END ((uint64_t)INT64_MAX)

/* mm.h: every function accepts err == NULL. A function keeps a spare mm_error on its stack
 * and writes there instead: `err = mm_err_or(err, &spare);` */
static inline mm_error *mm_err_or(mm_error *err, mm_error *spare) {
    return err != NULL ? err : spare;
}

static inline int mm_fail(mm_error *err, int status, int64_t code) {
    err->status = status;
    err->code = code;
    return status;
}

static inline int mm_ok(mm_error *err) { return mm_fail(err, MM_OK, 0); }

/* The start of mm_map_path and mm_map_handle, before any OS call: clear *err, zero *view,
 * then check the arguments in this order (all MM_E_ARG, code 0). `bad_source` is the
 * caller's own verdict on its path (NULL) or handle (invalid, or MM_CREATE given). */
static inline int mm_map_begin(mm_view *view, int access, uint64_t offset, uint64_t length,
                               int flags, int bad_source, mm_error *err) {
    err->status = MM_OK;
    err->code = 0;
    err->file_size = 0;
    if (view == NULL)
        return mm_fail(err, MM_E_ARG, 0);
    memset(view, 0, sizeof *view);
    if (bad_source)
        return mm_fail(err, MM_E_ARG, 0);
    if (access != MM_READ && access != MM_WRITE && access != MM_COPY)
        return mm_fail(err, MM_E_ARG, 0);
    if ((flags & ~MM_KNOWN_FLAGS) != 0)
        return mm_fail(err, MM_E_ARG, 0);
    if ((flags & (MM_CREATE | MM_TRUNCATE)) && length == MM_TO_END)
        return mm_fail(err, MM_E_ARG, 0); /* no size to create or reset the file to */
    if (offset > MM_MAX_FILE_END)
        return mm_fail(err, MM_E_ARG, 0);
    if (length != MM_TO_END && length > MM_MAX_FILE_END - offset)
        return mm_fail(err, MM_E_ARG, 0); /* offset + length past any file's end */
    return MM_OK;
}

/* What mm_map_* does to a file of `size` bytes, decided before anything changes it. */
typedef struct mm_plan {
    uint64_t length; /* bytes to map: `length`, or size - offset for MM_TO_END */
    uint64_t end;    /* offset + length: the size the file must have */
    uint64_t delta;  /* offset - offset aligned down: the view starts this far into its base */
    int reset;       /* MM_TRUNCATE: make the file `end` bytes of zeros */
    int grow;        /* extend the file from `size` to `end` (MM_GROW was given) */
} mm_plan;

/* Fill *plan for a file of `size` bytes, after mm_map_begin accepted the arguments. Returns
 * MM_OK, MM_E_EMPTY (MM_TO_END from the end of the file or past it), MM_E_RANGE (the range
 * ends past the file, no MM_GROW or MM_TRUNCATE), or MM_E_MAP when delta + length bytes do
 * not fit in `size_max` (SIZE_MAX: only on 32-bit hosts, where mmap(2) would fail with
 * EOVERFLOW and MapViewOfFile cannot be asked, its size being a SIZE_T). */
static inline int mm_plan_map(uint64_t size, uint64_t offset, uint64_t length, int flags,
                              uint64_t alignment, uint64_t size_max, mm_plan *plan) {
    if (length == MM_TO_END) {
        if (offset >= size)
            return MM_E_EMPTY;
        length = size - offset;
    }
    plan->length = length;
    plan->end = offset + length; /* <= MM_MAX_FILE_END: mm_map_begin, or size - offset */
    plan->delta = offset % alignment;
    plan->reset = (flags & MM_TRUNCATE) != 0;
    plan->grow = !plan->reset && plan->end > size;
    if (plan->grow && !(flags & MM_GROW))
        return MM_E_RANGE;
    if (plan->delta > size_max || length > size_max - plan->delta)
        return MM_E_MAP;
    return MM_OK;
}

/* [start, start + length) of a view, as offsets from view->base: *first is rounded down to a
 * page, *last is the end of the range (not rounded; <= base_length). An empty range gives
 * *first == *last. Returns 0, or -1 for no view (NULL, zeroed, or length 0) or a range that
 * is not inside [0, view->length]. */
static inline int mm_view_range(const mm_view *view, uint64_t start, uint64_t length,
                                uint64_t page, uint64_t *first, uint64_t *last) {
    uint64_t delta;
    if (view == NULL || view->base == NULL || view->data == NULL)
        return -1;
    if (start > view->length || length > view->length - start)
        return -1;
    /* data = base + delta with delta < base_length (mm_map_*): a difference inside the view */
    delta = (uint64_t)(view->data - (const char *)view->base);
    *first = mm_align_down(delta + start, page);
    *last = length == 0 ? *first : delta + start + length; /* <= delta + length = base_length */
    return 0;
}

/* Pages holding a byte of [first, last), with first page-aligned. */
static inline uint64_t mm_pages_between(uint64_t first, uint64_t last, uint64_t page) {
    return (last - first + page - 1) / page;
}

/* *slot, filled from load() by the first call. Threads that race on that call all store the
 * same value: a benign race. 32 bits (a page size or an allocation granularity fits), so a
 * load or store is one access and no thread can see half a value. */
static inline uint64_t mm_cached(volatile uint32_t *slot, uint32_t (*load)(void)) {
    uint32_t value = *slot;
    if (value == 0) {
        value = load();
        *slot = value;
    }
    return value;
}

#endif /* MM_INTERNAL_H */
