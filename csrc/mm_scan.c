/*
 * mm_scan.c -- platform-independent helpers built on the mm.h primitives (both builds compile
 * this file beside mm_posix.c or mm_win32.c).
 */
#include "mm.h"

int mm_populate_ahead(const mm_view *view, uint64_t start, uint64_t end, uint64_t step,
                      uint64_t window, const volatile uint64_t *consumer,
                      const volatile int *stop, mm_error *err) {
    uint64_t next = start, length;
    unsigned wait = 20; /* microseconds; doubles while the consumer is idle, up to 1 ms */
    int status;
    err->status = MM_OK;
    err->code = 0;
    if (step == 0 || start > end || end > view->length)
        return err->status = MM_E_ARG;
    while (next < end && !*stop) {
        uint64_t reached = *consumer;
        if (next < reached) /* the consumer is past this point and faults it in itself */
            next = reached < end ? reached : end;
        if (next >= end)
            break;
        if (next - reached >= window) { /* far enough ahead (next >= reached: no wrap) */
            mm_pause(wait);
            wait = wait < 1000 ? 2 * wait : 1000; /* an idle consumer costs ~1000 wakeups/s */
            continue;
        }
        wait = 20;
        length = end - next < step ? end - next : step;
        /* [next, next + length) lies in [start, end), inside the view: mm_advise checks it. */
        status = mm_advise(view, next, length, MM_ADV_POPULATE_READ, err);
        if (status != MM_OK)
            return status;
        next += length;
    }
    return MM_OK;
}
