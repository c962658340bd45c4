/*
 * test_guard_internal.c -- tests of the fault guard's internals (POSIX only): mm_guard.c is
 * included here, with a hook inside mm_find that changes a slot between the reads of it.
 * Built and run by run.sh native, next to test_mm.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

struct mm_guard_slot;
static void t_hook(struct mm_guard_slot *slot);
#define MM_GUARD_FIND_HOOK(slot) t_hook(slot)
#include "../mm_guard.c"

static int failures;
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

static mm_view t_x, t_y;
static uint32_t t_slot; /* 1 + the slot to change, 0: the hook does nothing */

/* Inside mm_find, between its reads of one slot's start and end: x's slot is released and
 * taken by y. */
static void t_hook(struct mm_guard_slot *slot) {
    mm_error e;
    if (t_slot == 0 || slot != &mm_slots[t_slot - 1])
        return;
    t_slot = 0;
    mm_guard_remove(&t_x);
    CHECK(mm_guard_add(&t_y, 2, NULL, &e) == MM_OK);
}

/* Address space for the fake views: T_PAGES pages, PROT_NONE (never touched: only guarded),
 * reserved by main. */
#define T_PAGES 64
static char *space;
static uint64_t page;

static void t_fake(mm_view *v, char *base, uint64_t length) {
    memset(v, 0, sizeof *v);
    v->base = v->data = base; /* inside the caller's PROT_NONE reservation, never touched */
    v->base_length = v->length = length;
    v->access = MM_READ;
}

/* A slot released and taken by another view while the handler reads it: mm_find must not
 * pair the first view's start with the second's end (that range covers addresses neither
 * view holds: found by helper-75's stress test, about once in 12-30 s). */
static void test_find_rejects_a_slot_changed_between_its_reads(void) {
    mm_guard_seen seen;
    mm_error e;
    t_fake(&t_x, space, 32 * page);            /* x: pages [0, 32) */
    t_fake(&t_y, space + 40 * page, page);     /* y: page 40 */
    CHECK(mm_guard_add(&t_x, 1, NULL, &e) == MM_OK);
    t_slot = t_x.guard_slot;
    memset(&seen, 0, sizeof seen);
    /* page 20: x's, and inside [x's start, y's end), but x is released while mm_find reads */
    CHECK(mm_find((uintptr_t)space + 20 * page, &seen) == 0);
    CHECK(t_slot == 0);                        /* the hook ran */
    CHECK(t_y.guard_slot != 0);
    /* y is found with its own bounds */
    CHECK(mm_find((uintptr_t)space + 40 * page + 5, &seen) == 1);
    CHECK(seen.start == (uintptr_t)t_y.base && seen.end == (uintptr_t)t_y.base + page);
    CHECK(seen.token == 2 && seen.slot == &mm_slots[t_y.guard_slot - 1]);
    mm_guard_remove(&t_y);
    CHECK(mm_find((uintptr_t)space + 40 * page + 5, &seen) == 0);
}

/* A slot whose count was left odd (a fork in the middle of an add: the child never finishes
 * it) still guards the views added to it later. */
static void test_slot_left_odd_guards_its_next_view(void) {
    mm_guard_seen seen;
    mm_error e;
    uint32_t slot;
    t_fake(&t_x, space, 2 * page);
    CHECK(mm_guard_add(&t_x, 3, NULL, &e) == MM_OK);
    slot = t_x.guard_slot - 1;
    mm_guard_remove(&t_x);
    mm_slots[slot].gen |= 1;                  /* as a fork in the middle of an add leaves it */
    CHECK(mm_guard_add(&t_x, 4, NULL, &e) == MM_OK);
    CHECK(t_x.guard_slot == slot + 1);        /* the same (lowest free) slot */
    CHECK(mm_find((uintptr_t)space + page, &seen) == 1 && seen.token == 4);
    mm_guard_remove(&t_x);
}

/* A fault recorded after its view was released and the slot taken by another (the handler
 * between mm_find and mm_record, the view closed by another thread meanwhile) leaves the
 * other view's count and run alone, and is queued under the released view's token. */
static void test_record_after_release_leaves_the_next_view_alone(void) {
    mm_guard_seen seen;
    mm_fault f;
    mm_error e;
    while (mm_guard_pop(&f)) /* records of the tests before */
        ;
    t_fake(&t_x, space, 2 * page);
    t_fake(&t_y, space + 4 * page, page);
    CHECK(mm_guard_add(&t_x, 5, NULL, &e) == MM_OK);
    CHECK(mm_find((uintptr_t)space + page, &seen) == 1);
    mm_guard_remove(&t_x);
    CHECK(mm_guard_add(&t_y, 6, NULL, &e) == MM_OK);
    CHECK(seen.slot == &mm_slots[t_y.guard_slot - 1]); /* y took x's slot */
    mm_record(&seen, (uintptr_t)space + page);
    CHECK(mm_guard_faults(&t_y) == 0);
    CHECK(LOAD(&seen.slot->last_thread) == 0);
    CHECK(mm_guard_pop(&f) == 1 && f.token == 5 && f.offset == page);
    mm_guard_remove(&t_y);
}

int main(void) {
    int before;
    page = (uint64_t)sysconf(_SC_PAGESIZE);
    space = mmap(NULL, T_PAGES * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
    if (space == MAP_FAILED) {
        perror("mmap of the address space for the fake views");
        return 1;
    }
    test_find_rejects_a_slot_changed_between_its_reads();
    printf("%s test_find_rejects_a_slot_changed_between_its_reads\n", failures ? "FAIL" : "ok  ");
    before = failures;
    test_slot_left_odd_guards_its_next_view();
    printf("%s test_slot_left_odd_guards_its_next_view\n", failures > before ? "FAIL" : "ok  ");
    before = failures;
    test_record_after_release_leaves_the_next_view_alone();
    printf("%s test_record_after_release_leaves_the_next_view_alone\n",
           failures > before ? "FAIL" : "ok  ");
    printf("%d failed\n", failures);
    return failures != 0;
}
