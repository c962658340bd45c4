/*
 * mm_scan.c -- platform-independent helpers built on the mm.h primitives (both builds compile
 * this file beside mm_posix.c or mm_win32.c).
 */
#include "mm.h"
#include "mm_internal.h"

/* One read per 64 KiB: a read fault maps the whole aligned fault-around window of cached
 * pages (Linux: /sys/kernel/debug/fault_around_bytes, 64 KiB by default), so reading one byte
 * of each window faults a range in about twice as fast as madvise(MADV_POPULATE_READ), which
 * walks it page by page (measured: 18-21 against 10 GB/s, file cached in 4 KiB pages). Where
 * a window is not fully mapped by its fault, the consumer faults the rest itself. */
#define MM_TOUCH_STRIDE 65536u

static void mm_touch(const char *addr, uint64_t length) {
    volatile char sink = 0;
    uint64_t i;
    for (i = 0; i < length; i += MM_TOUCH_STRIDE)
        sink ^= addr[i]; /* i < length: inside [addr, addr + length) */
    if (length > 0)
        sink ^= addr[length - 1]; /* the window holding the last byte */
    (void)sink;
}

static int mm_populate_loop(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                            uint64_t window, const volatile uint64_t *consumer,
                            const volatile int *stop, volatile uint64_t *progress,
                            uint64_t idle_limit_us, mm_error *err);

int mm_populate_ahead(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                      uint64_t window, const volatile uint64_t *consumer,
                      const volatile int *stop, volatile uint64_t *progress,
                      uint64_t idle_limit_us, mm_error *err) {
    volatile uint64_t spare_progress;
    int status;
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (progress == NULL)
        progress = &spare_progress;
    if (view == NULL || consumer == NULL || stop == NULL || step == 0 || window == 0 ||
        start > end || view->data == NULL || end > view->length)
        status = mm_fail(err, MM_E_ARG, 0);
    else
        status = mm_populate_loop(view, start, end, step, window, consumer, stop, progress,
                                  idle_limit_us, err);
    *progress = end; /* returned: it touches nothing more */
    return status;
}

static int mm_populate_loop(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                            uint64_t window, const volatile uint64_t *consumer,
                            const volatile int *stop, volatile uint64_t *progress,
                            uint64_t idle_limit_us, mm_error *err) {
    uint64_t next = start, length, idle = 0, last;
    unsigned wait = 20; /* microseconds; doubles while the consumer is idle, up to 1 ms */
    last = *consumer;
    while (next < end && !*stop) {
        if (mm_guard_faults(view) != 0) /* its pages are zeros now, not the file's data */
            return mm_fail(err, MM_E_FAULT, 0);
        uint64_t reached = *consumer;
        if (reached != last) { /* the consumer moved: it is alive */
            last = reached;
            idle = 0;
        }
        if (next < reached) { /* the consumer is past this point and faults it in itself */
            next = reached < end ? reached : end;
            *progress = next;
        }
        if (next >= end)
            break;
        if (next - reached >= window) { /* far enough ahead (next >= reached: no wrap) */
            if (idle_limit_us != 0 && idle >= idle_limit_us)
                break; /* nobody consumes: stop rather than wait forever */
            mm_pause(wait);
            idle += wait;
            wait = wait < 1000 ? 2 * wait : 1000; /* an idle consumer costs ~1000 wakeups/s */
            continue;
        }
        wait = 20;
        length = end - next < step ? end - next : step;
        /* One touch window at a time, re-reading *consumer before each: a consumer that has
         * passed this step (and may have released its pages, chunks(drop_behind=...)) must
         * not see them faulted back in behind it. */
        while (length > 0 && !*stop) {
            uint64_t piece = length < MM_TOUCH_STRIDE ? length : MM_TOUCH_STRIDE;
            if (next < *consumer)
                break; /* overtaken: the outer loop jumps to the consumer */
            *progress = next; /* before the fault: nothing below next is touched again */
            /* [next, next + piece) lies in [start, end) and end <= view->length (checked
             * above), so data + next .. data + next + piece is inside the mapping. */
            mm_touch(view->data + next, piece);
            next += piece;
            length -= piece;
        }
    }
    if (mm_guard_faults(view) != 0)
        return mm_fail(err, MM_E_FAULT, 0);
    return mm_ok(err);
}
