#include "ringbuf.h"
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>

int64_t rm_load_acquire(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void rm_store_release(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
int64_t rm_fetch_add(int64_t *p, int64_t d) { return __atomic_fetch_add(p, d, __ATOMIC_ACQ_REL); }
int rm_cas(int64_t *p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
int32_t rm_load_acquire32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void rm_store_release32(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
int32_t rm_fetch_add32(int32_t *p, int32_t d) { return __atomic_fetch_add(p, d, __ATOMIC_ACQ_REL); }

int rm_futex_wait(int32_t *p, int32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    /* shared (not FUTEX_PRIVATE): the word lives in a segment mapped by several processes */
    long r = syscall(SYS_futex, p, FUTEX_WAIT, expected, tsp, NULL, 0);
    return r == 0 ? 0 : -errno;
}
int rm_futex_wake(int32_t *p, int32_t n) {
    long r = syscall(SYS_futex, p, FUTEX_WAKE, n, NULL, NULL, 0);
    return r >= 0 ? (int)r : -errno;
}
void rm_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }

/* ---- composite helpers ---- */
static inline void rm_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

int64_t rm_highest_published(const int64_t *avail, int64_t mask, int32_t shift, int64_t lo, int64_t hi) {
    for (int64_t s = lo; s <= hi; s++) {
        /* acquire load; pairs with the release store in rm_publish_mp */
        if (__atomic_load_n(&avail[s & mask], __ATOMIC_ACQUIRE) != (s >> shift))
            return s - 1;
    }
    return hi;
}

int64_t rm_min_sequence(int64_t **seqs, int32_t n, int64_t minimum) {
    for (int32_t i = 0; i < n; i++) {
        int64_t v = __atomic_load_n(seqs[i], __ATOMIC_ACQUIRE);
        if (v < minimum) minimum = v;
    }
    return minimum;
}

int64_t rm_barrier_available(const rm_barrier_t *b, int64_t seq) {
    int64_t hi = __atomic_load_n(b->cursor, __ATOMIC_ACQUIRE);
    if (b->ndeps) hi = rm_min_sequence(b->deps, b->ndeps, hi);
    if (hi < seq) return hi < seq - 1 ? seq - 1 : hi;
    if (b->avail) return rm_highest_published(b->avail, b->mask, b->shift, seq, hi);
    return hi;
}

int64_t rm_barrier_spin(const rm_barrier_t *b, int64_t seq, int64_t spins) {
    int64_t a = rm_barrier_available(b, seq);
    while (a < seq && spins-- > 0) {
        rm_pause();
        a = rm_barrier_available(b, seq);
    }
    return a;
}

int64_t rm_barrier_block(const rm_barrier_t *b, int64_t seq, int32_t *futex, int64_t timeout_ns) {
    /* seq_cst RMW: the waiter count is visible before we re-check the cursor;
       pairs with the fence + waiter load in rm_publish_* (Dekker style) */
    __atomic_fetch_add(&futex[1], 1, __ATOMIC_SEQ_CST);
    int32_t sig = __atomic_load_n(&futex[0], __ATOMIC_ACQUIRE);
    int64_t a = rm_barrier_available(b, seq);
    if (a < seq) {
        rm_futex_wait(&futex[0], sig, timeout_ns);
        a = rm_barrier_available(b, seq);
    }
    __atomic_fetch_sub(&futex[1], 1, __ATOMIC_SEQ_CST);
    return a;
}

static inline void rm_signal(int32_t *futex) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&futex[1], __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&futex[0], 1, __ATOMIC_SEQ_CST);
        rm_futex_wake(&futex[0], 0x7fffffff);
    }
}

void rm_publish_sp(int64_t *cursor, int64_t seq, int32_t *futex, int32_t check_waiters) {
    /* release store; pairs with the acquire load in rm_barrier_available */
    __atomic_store_n(cursor, seq, __ATOMIC_RELEASE);
    if (check_waiters) rm_signal(futex);
}

void rm_publish_mp(int64_t *avail, int64_t mask, int32_t shift, int64_t lo, int64_t hi,
                   int64_t *entry, int32_t *futex, int32_t check_waiters) {
    for (int64_t s = lo; s <= hi; s++)
        /* release store; pairs with the acquire load in rm_highest_published */
        __atomic_store_n(&avail[s & mask], s >> shift, __ATOMIC_RELEASE);
    if (entry) {
        /* the claim is published: clear the intent (empty range lo > hi) */
        __atomic_store_n(&entry[5], 0, __ATOMIC_RELEASE);
        __atomic_store_n(&entry[4], 1, __ATOMIC_RELEASE);
    }
    if (check_waiters) rm_signal(futex);
}

int64_t rm_mp_try_claim(int64_t *cursor, int64_t n, int64_t capacity,
                        int64_t **gating, int32_t ngating, int64_t *cache, int64_t *entry) {
    for (;;) {
        int64_t cur = __atomic_load_n(cursor, __ATOMIC_ACQUIRE);
        int64_t hi = cur + n;
        int64_t wrap = hi - capacity;
        if (wrap > *cache) {
            int64_t g = rm_min_sequence(gating, ngating, cur);
            *cache = g;
            if (wrap > g) return 0;
        }
        if (entry) {
            /* intent first: any claimed-but-unpublished slot is always covered
               by its claimant's entry (the dead-producer rule, docs/ring.md) */
            __atomic_store_n(&entry[4], cur + 1, __ATOMIC_RELEASE);
            __atomic_store_n(&entry[5], hi, __ATOMIC_RELEASE);
            __atomic_store_n(&entry[6], rm_monotonic_ns(), __ATOMIC_RELEASE);
        }
        if (__atomic_compare_exchange_n(cursor, &cur, hi, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return cur + 1;
    }
}

int64_t rm_sp_offer(int64_t *cursor, int64_t seq, int64_t capacity, int64_t **gating,
                    int32_t ngating, int64_t *cache, char *data, int64_t record_size,
                    const void *src, int32_t *futex, int32_t check_waiters) {
    int64_t wrap = seq - capacity;
    if (wrap > *cache) {
        int64_t g = rm_min_sequence(gating, ngating, seq - 1);
        *cache = g;
        if (wrap > g) return -1;
    }
    memcpy(data + (seq & (capacity - 1)) * record_size, src, (size_t)record_size);
    rm_publish_sp(cursor, seq, futex, check_waiters);
    return 0;
}

int64_t rm_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void rm_publish_sp_at(int64_t *cursor, int32_t *futex, int32_t check_waiters, int64_t seq) {
    rm_publish_sp(cursor, seq, futex, check_waiters);
}

void rm_publish_mp_one(int64_t *avail, int64_t mask, int32_t shift, int64_t *entry,
                       int32_t *futex, int32_t check_waiters, int64_t seq) {
    rm_publish_mp(avail, mask, shift, seq, seq, entry, futex, check_waiters);
}

/* ---- producers waiting for space ---- */
int64_t rm_gating_spin(int64_t **gating, int32_t ngating, int64_t needed, int64_t spins) {
    int64_t g = rm_min_sequence(gating, ngating, INT64_MAX);
    while (g < needed && spins-- > 0) {
        rm_pause();
        g = rm_min_sequence(gating, ngating, INT64_MAX);
    }
    return g;
}

int64_t rm_gating_block(int64_t **gating, int32_t ngating, int64_t needed, int32_t *futex,
                        int64_t timeout_ns) {
    /* seq_cst RMW + fence: the waiter count is visible before we re-read the
       gating sequences; pairs with the fence + waiter load in rm_commit (Dekker
       style: either we see the consumer's new sequence or it sees our count) */
    __atomic_fetch_add(&futex[3], 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int32_t sig = __atomic_load_n(&futex[2], __ATOMIC_ACQUIRE);
    int64_t g = rm_min_sequence(gating, ngating, INT64_MAX);
    if (g < needed) {
        rm_futex_wait(&futex[2], sig, timeout_ns);
        g = rm_min_sequence(gating, ngating, INT64_MAX);
    }
    __atomic_fetch_sub(&futex[3], 1, __ATOMIC_SEQ_CST);
    return g;
}

void rm_commit(int64_t *seq_ptr, int64_t seq, int32_t *futex, int32_t signal_consumers,
               int32_t signal_producers) {
    /* release store; pairs with the acquire loads of producers' gating checks and
       dependents' barriers */
    __atomic_store_n(seq_ptr, seq, __ATOMIC_RELEASE);
    if (!(signal_consumers | signal_producers)) return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (signal_consumers && __atomic_load_n(&futex[1], __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&futex[0], 1, __ATOMIC_SEQ_CST);
        rm_futex_wake(&futex[0], 0x7fffffff);
    }
    if (signal_producers && __atomic_load_n(&futex[3], __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&futex[2], 1, __ATOMIC_SEQ_CST);
        rm_futex_wake(&futex[2], 0x7fffffff);
    }
}
