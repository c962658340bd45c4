/*
 * mm_guard.c -- the fault guard of mm.h on POSIX: a SIGBUS in a guarded view becomes a zero
 * page and a record instead of the end of the process.
 *
 * Everything the signal handler touches is static memory read and written with atomic
 * builtins (no lock: the handler may interrupt a thread in the middle of any of the functions
 * below, and several threads may fault at once), and the only calls it makes are mmap(2),
 * munmap(2), write(2), sigaction(2), sigpending(2), raise(3) and pthread_self(3), all
 * async-signal-safe ("signal-safety(7)"; mmap, munmap and pthread_self are not in POSIX's
 * list but are a plain system call or a read of the thread pointer on every system this
 * builds for).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_ANONYMOUS on older glibc */
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sched.h>

#include "mm.h"
#include "mm_internal.h"

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif
/* "mmap(2)": MAP_FIXED_NOREPLACE (Linux 4.17) fails rather than replace a mapping; older
 * kernels take it as a hint and map elsewhere, which the caller checks. */
#ifdef MAP_FIXED_NOREPLACE
#define MM_FIXED_NOREPLACE MAP_FIXED_NOREPLACE
#else
#define MM_FIXED_NOREPLACE 0
#endif

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* A slot guards one view: [start, end) of the address space. start 0 is a free slot, 1 one
 * being filled in (mm_guard_add claims it with a compare-and-swap, fills the other fields,
 * then publishes start). */
typedef struct mm_guard_slot {
    uintptr_t start;
    uintptr_t end;
    uintptr_t data;   /* the view's first requested byte: fault offsets are relative to it */
    uint64_t token;
    uint64_t faults;
    void *owner;
    uint64_t last_thread; /* thread of the last queued fault not yet taken by mm_guard_pop:
                             a run of faults of one thread in one view is queued once
                             (counted every time) until its record is taken; a fault of that
                             thread after that is queued again, a new run */
    int prot;         /* PROT_* of the zero page that replaces a faulting one */
    uint64_t gen;     /* odd while mm_guard_add fills the slot in, even otherwise: the
                         handler rejects what it read of a slot across a change of it (a
                         slot freed and taken by another view between its reads of start
                         and end would pair one view's start with another's end) */
} mm_guard_slot;

/* What the handler read of a slot, all of one view. */
typedef struct mm_guard_seen {
    mm_guard_slot *slot;
    uintptr_t start, end, data;
    uint64_t gen;     /* the slot's count when read: whether it still holds the view */
    uint64_t token;
    int prot;
} mm_guard_seen;

static mm_guard_slot mm_slots[MM_GUARD_SLOTS];
static uint32_t mm_slots_used;  /* slots [0, used) may be taken: the handler scans those */
/* Which slots are taken, one bit per slot (bit i % 64 of word i / 64): where mm_guard_add
 * looks for a free one, 64 slots per load. A slot's start decides (claimed and released
 * with a compare-and-swap); its bit is set after the claim and cleared before the release,
 * so a free slot's bit is clear, and a clear bit that names a taken slot (being claimed, or
 * cleared by a stale copy of a view: mm_guard_remove) costs a failed compare-and-swap. */
#if MM_GUARD_SLOTS % 64 != 0
#error "MM_GUARD_SLOTS must be a multiple of 64 (one bit per slot in whole words)"
#endif
#define MM_GUARD_WORDS (MM_GUARD_SLOTS / 64)
static uint64_t mm_slots_taken[MM_GUARD_WORDS];
static uint32_t mm_words_hint;  /* the word mm_guard_add starts at: the lowest that had a free
                                   slot when last looked at (a hint: any word may be free) */

/* The queue: entry i % MM_GUARD_QUEUE holds fault number i once its `seq` is i + 1. */
typedef struct mm_guard_entry {
    uint64_t seq;
    mm_fault fault;
} mm_guard_entry;

static mm_guard_entry mm_queue[MM_GUARD_QUEUE];
static uint64_t mm_queue_head; /* faults recorded (the next fault's number) */
static uint64_t mm_queue_tail; /* faults taken by mm_guard_pop (its one consumer) */
static uint64_t mm_queue_lost; /* records mm_guard_pop skipped (overwritten): its consumer's */

static struct sigaction mm_previous; /* what the guard replaced: where other SIGBUS go */
static int mm_wake[2] = {-1, -1};
static int64_t mm_last_check_ms = INT64_MIN / 2; /* mm_guard_keep_front's last check */
/* Spare mappings to give back at vm.max_map_count: MM_BALLAST_PAGES pages of alternating
 * protection, so each page is a mapping of its own. The handler unmaps the inner ones
 * (whole mappings: nothing splits) to get below the limit before it maps zeros over a whole
 * view; mm_guard_install makes a new one once it is gone. */
#define MM_BALLAST_PAGES 8
static uintptr_t mm_ballast;
static uintptr_t mm_page;            /* the page size, read at install (sysconf is not
                                        async-signal-safe) */

static void mm_handler(int sig, siginfo_t *info, void *context);

#ifndef MM_GUARD_FIND_HOOK /* csrc/tests/test_guard_internal.c defines it */
#define MM_GUARD_FIND_HOOK(slot) ((void)0)
#endif

/* The view guarding `addr`: 1 and *seen filled with what its slot holds, or 0. Each slot's
 * fields are read between two reads of its `gen` (a sequence lock: mm_guard_add, the slot's
 * one writer while it fills it in, makes gen odd first and even again after publishing
 * start), and kept only if gen was even and did not change: then they are all of one view. A
 * slot that changes under the reads is read again (a few times: a writer interrupted by this
 * very handler would never finish); a slot being filled in guards nothing yet. */
static int mm_find(uintptr_t addr, mm_guard_seen *seen) {
    uint32_t used = LOAD(&mm_slots_used), i;
    for (i = 0; i < used; i++) {
        mm_guard_slot *slot = &mm_slots[i];
        int tries;
        for (tries = 0; tries < 4; tries++) {
            uint64_t gen = LOAD(&slot->gen);
            uintptr_t start = LOAD(&slot->start), end;
            if (gen % 2 != 0 || start <= 1 || addr < start)
                break;
            MM_GUARD_FIND_HOOK(slot); /* tests: change the slot between the reads */
            end = LOAD(&slot->end);
            seen->data = LOAD(&slot->data);
            seen->token = LOAD(&slot->token);
            seen->prot = LOAD(&slot->prot);
            if (LOAD(&slot->gen) != gen)
                continue; /* filled in again meanwhile: read it again */
            if (addr >= end)
                break;
            seen->slot = slot;
            seen->gen = gen;
            seen->start = start;
            seen->end = end;
            return 1;
        }
    }
    return 0;
}

static void mm_record(const mm_guard_seen *seen, uintptr_t addr) {
    uint64_t thread = (uint64_t)(uintptr_t)pthread_self(), n;
    mm_guard_slot *slot = seen->slot;
    mm_guard_entry *entry;
    char byte = 1;
    /* The view's count and run, while its slot still holds it: the view may have been
     * released since mm_find (closed while this thread faulted in it) and the slot taken by
     * another view, whose count must not grow nor its next run go unqueued. (A release
     * between this check and the two updates is left: a window of a few instructions, where
     * it was the whole mmap before.) Released: the record is queued all the same, under the
     * view's token, which its consumer no longer finds (mm_guard_owner). Start first, gen
     * last: a release and a re-add at the same base between the two reads changes gen. */
    if (LOAD(&slot->start) == seen->start && LOAD(&slot->gen) == seen->gen) {
        __atomic_fetch_add(&slot->faults, 1, __ATOMIC_ACQ_REL);
        if (__atomic_exchange_n(&slot->last_thread, thread, __ATOMIC_ACQ_REL) == thread)
            return; /* this thread's run of faults in this view is queued already */
    }
    n = __atomic_fetch_add(&mm_queue_head, 1, __ATOMIC_ACQ_REL);
    entry = &mm_queue[n % MM_GUARD_QUEUE];
    entry->fault.token = seen->token; /* the view's, even if the slot was released since */
    entry->fault.slot = (uint32_t)(slot - mm_slots); /* slot is an element of mm_slots */
    entry->fault.offset = (uint64_t)(addr - seen->data);
    entry->fault.thread = thread;
#ifdef SYS_gettid
    entry->fault.native_thread = (uint64_t)syscall(SYS_gettid); /* async-signal-safe */
#else
    entry->fault.native_thread = 0;
#endif
    STORE(&entry->seq, n + 1);
    {
        int fd = LOAD(&mm_wake[1]);
        if (fd >= 0) {
            ssize_t ignored = write(fd, &byte, 1); /* non-blocking: a full pipe is fine */
            (void)ignored;
        }
    }
}

/* The default action for `sig`, from inside the guard's handler: SIG_DFL, and for a signal
 * that was sent (kill(2), raise(3), tgkill(2)) the signal sent again -- blocked while the
 * handler runs, it is delivered, fatally, as the handler returns. A fault needs nothing
 * more: returning retries the access, and the default action ends the process. */
static void mm_default(int sig, const siginfo_t *info) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (info == NULL || info->si_code <= 0)
        raise(sig);
}

/* Whether the disposition of `sig` is the guard's handler. */
static int mm_is_front(int sig) {
    struct sigaction current;
    return sigaction(sig, NULL, &current) == 0 && (current.sa_flags & SA_SIGINFO) &&
           current.sa_sigaction == mm_handler;
}

/* Call a previous function handler directly: the guard stays installed. A handler that passes
 * the signal on to its own predecessor by restoring it and raising (Python's faulthandler)
 * leaves it pending; when that predecessor is the guard itself (it was installed in front of
 * the guard, and the guard then put back in front of it) the chain is a cycle: the default
 * action ends it ("sigpending(2)": the set of signals pending for delivery to the thread). */
static void mm_call_previous(const struct sigaction *previous, int sig, siginfo_t *info,
                             void *context) {
    sigset_t pending;
    if (previous->sa_flags & SA_SIGINFO)
        previous->sa_sigaction(sig, info, context);
    else
        previous->sa_handler(sig);
    sigemptyset(&pending);
    if (sigpending(&pending) == 0 && sigismember(&pending, sig) == 1 && mm_is_front(sig))
        mm_default(sig, NULL); /* SIG_DFL: the pending signal ends the process as we return */
}

/* The last fault each thread handed on (by a hash of its pthread_self): a thread that faults
 * again at the same address right after was not helped by the previous handler, and returning
 * again would retry the access for ever. */
#define MM_REFAULT_SLOTS 256
static struct {
    uint64_t thread;
    uintptr_t addr;
} mm_refault[MM_REFAULT_SLOTS];

/* A SIGBUS that is not ours: hand it to what was there before the guard, without ever
 * looping. The guard stays installed (a signal sent to the process must not take it away from
 * the mappings it guards):
 *  - sent by kill(2) & co (si_code <= 0): a function handler is called directly, SIG_IGN
 *    ignores it, SIG_DFL ends the process as by default;
 *  - a fault (si_code > 0): a function handler is called directly, and returning retries the
 *    access; if the same thread faults again at the same address the handler did not fix it,
 *    and the default action ends the process (as a handler that returns under SIG_DFL would:
 *    the kernel forces it). SIG_IGN or SIG_DFL: the default action. */
static void mm_chain(int sig, siginfo_t *info, void *context) {
    struct sigaction previous = mm_previous;
    int function = (previous.sa_flags & SA_SIGINFO) ||
                   (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN);
    if (info == NULL || info->si_code <= 0) {
        if (function)
            mm_call_previous(&previous, sig, info, context);
        else if (previous.sa_handler == SIG_DFL)
            mm_default(sig, info);
        /* SIG_IGN: ignored, as it was */
        return;
    }
    if (function) {
        uint64_t thread = (uint64_t)(uintptr_t)pthread_self();
        uintptr_t addr = (uintptr_t)info->si_addr;
        unsigned i = (unsigned)((thread ^ (thread >> 17)) % MM_REFAULT_SLOTS);
        if (LOAD(&mm_refault[i].thread) == thread && LOAD(&mm_refault[i].addr) == addr) {
            STORE(&mm_refault[i].thread, 0);
            mm_default(sig, info); /* the same fault again: the handler could not fix it */
            return;
        }
        STORE(&mm_refault[i].thread, thread);
        STORE(&mm_refault[i].addr, addr);
        mm_call_previous(&previous, sig, info, context);
        return;
    }
    mm_default(sig, info); /* SIG_IGN cannot stop a fault: the kernel would force it anyway */
}

static void mm_handler(int sig, siginfo_t *info, void *context) {
    int saved = errno;
    if (info != NULL && info->si_code == BUS_ADRERR) {
        uintptr_t addr = (uintptr_t)info->si_addr;
        mm_guard_seen seen;
        if (mm_find(addr, &seen)) {
            uintptr_t page = addr - addr % mm_page;
            /* page lies in [seen.start, seen.end): start is page-aligned (a view's base)
             * and addr is inside, so the page is part of the guarded view. */
            void *zero = mmap((void *)page, (size_t)mm_page, seen.prot,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (zero == MAP_FAILED) {
                /* One zero page splits the view's mapping in up to three, and the process
                 * may be out of mappings (vm.max_map_count: ENOMEM). One anonymous mapping
                 * over the whole view needs none more: the whole view reads zeros then,
                 * which a faulted view may (its data is no longer what the file holds). */
                uintptr_t start = seen.start, end = seen.end; /* of one view (mm_find) */
                /* First one MAP_FIXED mapping of zeros over exactly the whole view: it
                 * replaces the old pages in one system call, under the mm lock, so another
                 * thread touching a valid page of the view meanwhile sees either the file's
                 * page or a zero one, never a hole ("mmap(2)": "If the memory region
                 * specified by addr and length overlaps pages of any existing mapping(s),
                 * then the overlapped part of the existing mapping(s) will be discarded").
                 * [start, end) is exactly the view's mappings, so nothing splits. */
                if (start > 1 && end > start)
                    zero = mmap((void *)start, (size_t)(end - start), seen.prot,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                /* At the limit (a split may take the count just past it: "let map_count go
                 * just above its limit temporarily", mm/vma.c), mmap refuses even that:
                 * give back the spare mappings, then try once more. */
                if (zero == MAP_FAILED && start > 1 && end > start) {
                    uintptr_t spare = __atomic_exchange_n(&mm_ballast, 0, __ATOMIC_ACQ_REL);
                    if (spare != 0) {
                        munmap((void *)(spare + mm_page), (MM_BALLAST_PAGES - 2) * mm_page);
                        zero = mmap((void *)start, (size_t)(end - start), seen.prot,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                    }
                }
                /* Only if that failed too: mmap(2) may refuse any new mapping at the limit,
                 * even one that would lower the count. Unmap the view first, then map zeros
                 * where it was -- unless another thread took the range in between
                 * (MAP_FIXED_NOREPLACE), then nothing is ours. A thread touching the view
                 * in that gap gets SIGSEGV: the last resort before the process's death. */
                if (zero == MAP_FAILED && start > 1 && end > start &&
                    munmap((void *)start, end - start) == 0) {
                    zero = mmap((void *)start, (size_t)(end - start), seen.prot,
                                MAP_PRIVATE | MAP_ANONYMOUS | MM_FIXED_NOREPLACE, -1, 0);
                    if (zero != MAP_FAILED && zero != (void *)start) {
                        munmap(zero, (size_t)(end - start)); /* a kernel without NOREPLACE */
                        zero = MAP_FAILED;
                    }
                }
            }
            if (zero != MAP_FAILED) {
                mm_record(&seen, addr);
                errno = saved;
                return; /* the access is retried and reads the zero page */
            }
        }
    }
    mm_chain(sig, info, context);
    errno = saved;
}

/* The wake-up pipe: close-on-exec both ends, and the handler's end never blocks
 * ("pipe(7)": O_NONBLOCK makes a write to a full pipe fail with EAGAIN). 0 or an errno. */
static int mm_make_pipe(int fds[2]) {
    int code;
    if (pipe(fds) != 0)
        return errno;
    if (fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0 && fcntl(fds[1], F_SETFD, FD_CLOEXEC) == 0 &&
        fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
        return 0;
    code = errno;
    close(fds[0]);
    close(fds[1]);
    return code;
}

/* A new mm_ballast when there is none (the handler took it). Its first and last pages stay
 * mapped for good: they may have merged with a neighbour, so only the inner ones, each a
 * whole mapping, are given back. Without one the handler does without. */
static void mm_make_ballast(void) {
    uintptr_t page = mm_page, expected = 0;
    char *spare;
    int i;
    if (LOAD(&mm_ballast) != 0)
        return;
    spare = mmap(NULL, MM_BALLAST_PAGES * page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (spare == MAP_FAILED)
        return;
    for (i = 1; i < MM_BALLAST_PAGES; i += 2)
        if (mprotect(spare + i * page, page, PROT_NONE) != 0) {
            munmap(spare, MM_BALLAST_PAGES * page);
            return;
        }
    if (!__atomic_compare_exchange_n(&mm_ballast, &expected, (uintptr_t)spare, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        munmap(spare, MM_BALLAST_PAGES * page);
}

/* 0: mm_guard_after_fork not registered yet; 1: being registered; 2: registered. */
static int mm_atfork_state;

/* Register mm_guard_after_fork as a pthread_atfork child handler, once. Returns 0 once it
 * is registered (by this call or another thread's), or pthread_atfork's error (ENOMEM): the
 * next install tries again. */
static int mm_register_atfork(void) {
    for (;;) {
        int expected = 0, code;
        if (__atomic_compare_exchange_n(&mm_atfork_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            code = pthread_atfork(NULL, NULL, mm_guard_after_fork);
            STORE(&mm_atfork_state, code == 0 ? 2 : 0);
            return code;
        }
        if (expected == 2)
            return 0;
        sched_yield(); /* another thread's install is registering it: its outcome counts */
    }
}

int mm_guard_install(mm_error *err) {
    struct sigaction current, act;
    mm_error spare;
    long page;
    int code;
    err = mm_err_or(err, &spare);
    if (sigaction(SIGBUS, NULL, &current) != 0)
        return mm_fail(err, MM_E_ARG, errno);
    if (mm_page == 0) {
        page = sysconf(_SC_PAGESIZE);
        mm_page = page > 0 ? (uintptr_t)page : 4096;
    }
    mm_make_ballast();
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == mm_handler)
        return mm_ok(err);
    if (mm_wake[0] < 0) {
        int fds[2];
        code = mm_make_pipe(fds);
        if (code != 0)
            return mm_fail(err, MM_E_ARG, code);
        mm_wake[1] = fds[1];
        mm_wake[0] = fds[0];
    }
    /* "pthread_atfork(3)": child handlers run inside fork(), in the order registered, so
     * this one runs before every later one and before Python's after-fork hooks
     * (os.register_at_fork): a fault the child makes in those is queued after the reset, not
     * forgotten by it. Registered once: handlers cannot be removed, and mm_guard_after_fork
     * only stores to static memory (async-signal-safe, as a child handler must be). */
    code = mm_register_atfork();
    if (code != 0)
        return mm_fail(err, MM_E_ARG, code);
    memset(&act, 0, sizeof act);
    act.sa_sigaction = mm_handler;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&act.sa_mask);
    mm_previous = current; /* before the switch: a SIGBUS right after it chains correctly */
    if (sigaction(SIGBUS, &act, NULL) != 0)
        return mm_fail(err, MM_E_ARG, errno);
    return mm_ok(err);
}

int mm_guard_uninstall(mm_error *err) {
    struct sigaction current;
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (sigaction(SIGBUS, NULL, &current) != 0)
        return mm_fail(err, MM_E_ARG, errno);
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == mm_handler &&
        sigaction(SIGBUS, &mm_previous, NULL) != 0)
        return mm_fail(err, MM_E_ARG, errno);
    mm_last_check_ms = INT64_MIN / 2; /* the next keep_front installs again at once */
    return mm_ok(err);
}

int mm_guard_wake_fd(void) { return mm_wake[0]; }

int mm_guard_new_pipe(mm_error *err) {
    int fds[2], old[2] = {mm_wake[0], mm_wake[1]}, code;
    mm_error spare;
    err = mm_err_or(err, &spare);
    if (old[0] < 0)
        return mm_ok(err); /* no pipe yet: the first install makes one */
    code = mm_make_pipe(fds);
    if (code != 0)
        return mm_fail(err, MM_E_ARG, code);
    STORE(&mm_wake[1], fds[1]); /* the handler writes to the new pipe from now on */
    STORE(&mm_wake[0], fds[0]);
    close(old[0]);
    close(old[1]);
    return mm_ok(err);
}


int mm_guard_keep_front(mm_error *err) {
    struct timespec now;
    int64_t ms;
#ifdef CLOCK_MONOTONIC_COARSE
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &now) != 0)
#endif
        if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
            return mm_guard_install(err);
    ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (ms - mm_last_check_ms < 100) {
        mm_error spare;
        return mm_ok(mm_err_or(err, &spare));
    }
    mm_last_check_ms = ms;
    return mm_guard_install(err);
}

void *mm_guard_owner(const mm_fault *fault) {
    mm_guard_slot *slot;
    if (fault == NULL || fault->slot >= MM_GUARD_SLOTS)
        return NULL;
    slot = &mm_slots[fault->slot];
    if (LOAD(&slot->start) <= 1 || LOAD(&slot->token) != fault->token)
        return NULL;
    return slot->owner;
}

int mm_guard_add(mm_view *view, uint64_t token, void *owner, mm_error *err) {
    mm_error spare;
    uint32_t n, w;
    err = mm_err_or(err, &spare);
    if (view == NULL || view->base == NULL || view->base_length == 0)
        return mm_fail(err, MM_E_ARG, 0);
    if (view->guard_slot != 0)
        return mm_ok(err);
    /* One pass over the words from the hint, wrapping: a full word costs one load, so even
     * with most of the table taken the search is MM_GUARD_WORDS loads at most. */
    for (n = 0, w = LOAD(&mm_words_hint) % MM_GUARD_WORDS; n < MM_GUARD_WORDS;
         n++, w = (w + 1) % MM_GUARD_WORDS) {
        uint64_t free_bits = ~LOAD(&mm_slots_taken[w]);
        while (free_bits != 0) {
            uint32_t bit = (uint32_t)__builtin_ctzll(free_bits);
            uint32_t i = w * 64 + bit, used; /* < MM_GUARD_SLOTS: w < MM_GUARD_WORDS, bit < 64 */
            uintptr_t expected = 0;
            uint64_t gen;
            mm_guard_slot *slot = &mm_slots[i];
            free_bits &= free_bits - 1;
            if (!__atomic_compare_exchange_n(&slot->start, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE))
                continue; /* claimed meanwhile, or being released (bit cleared first) */
            __atomic_fetch_or(&mm_slots_taken[w], (uint64_t)1 << bit, __ATOMIC_ACQ_REL);
            /* This thread alone writes the slot until it publishes start: gen odd first,
             * ordered before the fields by the fence (mm_find then sees it changed). Odd by
             * construction, not by adding 1 to whatever is there: a count left odd (a fork
             * in the middle of an add) must not make this slot's views unguarded for good. */
            gen = LOAD(&slot->gen) | 1;
            STORE(&slot->gen, gen);
            __atomic_thread_fence(__ATOMIC_RELEASE);
            STORE(&slot->end, (uintptr_t)view->base + (uintptr_t)view->base_length);
            STORE(&slot->data, (uintptr_t)view->data);
            STORE(&slot->token, token);
            slot->owner = owner;
            STORE(&slot->last_thread, 0);
            STORE(&slot->faults, 0);
            STORE(&slot->prot, view->access == MM_READ ? PROT_READ : PROT_READ | PROT_WRITE);
            used = LOAD(&mm_slots_used);
            while (used < i + 1 && !__atomic_compare_exchange_n(&mm_slots_used, &used, i + 1, 0,
                                                                 __ATOMIC_ACQ_REL,
                                                                 __ATOMIC_ACQUIRE))
                ;
            STORE(&slot->start, (uintptr_t)view->base); /* published: the handler sees it now */
            STORE(&slot->gen, gen + 1); /* even: filled in */
            STORE(&mm_words_hint, w);
            view->guard_slot = i + 1;
            return mm_ok(err);
        }
    }
    return mm_fail(err, MM_E_ARG, 0); /* every slot taken: this view is not guarded */
}

void mm_guard_remove(mm_view *view) {
    uintptr_t expected;
    uint32_t i, w;
    if (view == NULL || view->guard_slot == 0 || view->guard_slot > MM_GUARD_SLOTS)
        return;
    i = view->guard_slot - 1;
    view->guard_slot = 0;
    /* The bit first: a free slot's bit is clear. Then the slot, only while it still guards
     * this view: a stale copy of a view must not free a slot that guards another view by now
     * (views alive at once never share a base); the bit it cleared then only costs the next
     * adds a failed compare-and-swap, until that view's own release. */
    w = i / 64;
    __atomic_fetch_and(&mm_slots_taken[w], ~((uint64_t)1 << (i % 64)), __ATOMIC_ACQ_REL);
    expected = (uintptr_t)view->base;
    if (!__atomic_compare_exchange_n(&mm_slots[i].start, &expected, 0, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return;
    if (w < LOAD(&mm_words_hint))
        STORE(&mm_words_hint, w);
}

uint64_t mm_guard_faults(const mm_view *view) {
    if (view == NULL || view->guard_slot == 0 || view->guard_slot > MM_GUARD_SLOTS)
        return 0;
    return LOAD(&mm_slots[view->guard_slot - 1].faults);
}

int mm_guard_pop(mm_fault *fault) {
    for (;;) {
        uint64_t tail = mm_queue_tail, head = LOAD(&mm_queue_head), seq;
        mm_guard_entry *entry;
        if (tail >= head)
            return 0;
        if (head - tail > MM_GUARD_QUEUE) { /* overwritten: skip to the oldest kept */
            mm_queue_lost += head - MM_GUARD_QUEUE - tail;
            mm_queue_tail = head - MM_GUARD_QUEUE;
            continue;
        }
        entry = &mm_queue[tail % MM_GUARD_QUEUE];
        seq = LOAD(&entry->seq);
        if (seq < tail + 1)
            return 0; /* claimed by a handler still writing it: next time */
        if (seq > tail + 1) { /* lapped by newer faults meanwhile */
            mm_queue_lost++;
            mm_queue_tail = tail + 1;
            continue;
        }
        *fault = entry->fault;
        if (LOAD(&entry->seq) != tail + 1) /* rewritten while copied: lapped, next round */
            continue;
        mm_queue_tail = tail + 1;
        if (fault->slot < MM_GUARD_SLOTS) {
            /* Taken: the thread's next fault in this view starts a new run and is queued
             * again (its consumer tells one run from the next, mmarray/_guard.py). Only
             * while the slot still guards that view and no other thread faulted since. */
            mm_guard_slot *slot = &mm_slots[fault->slot];
            uint64_t expected = fault->thread;
            if (LOAD(&slot->start) > 1 && LOAD(&slot->token) == fault->token)
                __atomic_compare_exchange_n(&slot->last_thread, &expected, 0, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        }
        return 1;
    }
}

uint64_t mm_guard_recorded(void) { return LOAD(&mm_queue_head); }

uint64_t mm_guard_taken(void) { return mm_queue_tail; }

void mm_guard_after_fork(void) {
    uint32_t used = LOAD(&mm_slots_used), i;
    /* Everything claimed so far counts as taken: the parent's records are the parent's
     * (its dispatcher reports them), and one half written at the fork never completes. */
    mm_queue_tail = LOAD(&mm_queue_head);
    mm_queue_lost = 0;
    for (i = 0; i < used; i++) /* no run is queued any more: the next fault queues again */
        STORE(&mm_slots[i].last_thread, 0);
}

uint64_t mm_guard_take_lost(void) {
    uint64_t lost = mm_queue_lost;
    mm_queue_lost = 0;
    return lost;
}
