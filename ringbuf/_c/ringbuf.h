/* Atomics and futex helpers for the shared-memory ring (C11 __atomic builtins). */
#ifndef RINGMATCH_RINGBUF_H
#define RINGMATCH_RINGBUF_H
#include <stdint.h>
#include <stddef.h>

/* acquire load; pairs with rm_store_release / rm_fetch_add on the same word */
int64_t rm_load_acquire(const int64_t *p);
/* release store; pairs with rm_load_acquire */
void rm_store_release(int64_t *p, int64_t v);
/* acq_rel fetch-add; returns the previous value */
int64_t rm_fetch_add(int64_t *p, int64_t delta);
/* acq_rel compare-and-swap; returns 1 on success */
int rm_cas(int64_t *p, int64_t expected, int64_t desired);
int32_t rm_load_acquire32(const int32_t *p);
void rm_store_release32(int32_t *p, int32_t v);
int32_t rm_fetch_add32(int32_t *p, int32_t delta);
/* futex wait on a shared 32-bit word while it equals `expected`;
   timeout_ns < 0 waits forever.  Returns 0 on wake, or -errno. */
int rm_futex_wait(int32_t *p, int32_t expected, int64_t timeout_ns);
/* wake up to n waiters; returns the number woken or -errno */
int rm_futex_wake(int32_t *p, int32_t n);
void rm_copy(void *dst, const void *src, size_t n);

/* ---- composite helpers: one C call per ring operation (see docs/ring.md) ---- */

/* What a consumer waits on: the producer cursor, the per-slot availability
   markers (NULL on a single-producer ring) and the gating sequences of the
   consumers it depends on. */
typedef struct {
    int64_t *cursor;
    int64_t *avail;
    int64_t **deps;
    int32_t ndeps;
    int32_t shift;
    int64_t mask;
} rm_barrier_t;

/* highest sequence a consumer of `b` may read, given it wants `seq` next;
   returns seq - 1 when nothing is available (acquire loads throughout) */
int64_t rm_barrier_available(const rm_barrier_t *b, int64_t seq);
/* spin (with the CPU pause hint) up to `spins` rounds until seq is available */
int64_t rm_barrier_spin(const rm_barrier_t *b, int64_t seq, int64_t spins);
/* register as a futex waiter on futex[0] (futex[1] counts waiters), re-check,
   sleep at most timeout_ns, unregister; returns rm_barrier_available */
int64_t rm_barrier_block(const rm_barrier_t *b, int64_t seq, int32_t *futex, int64_t timeout_ns);
/* highest contiguous published sequence in [lo, hi] of a multi-producer ring; lo - 1 if none */
int64_t rm_highest_published(const int64_t *avail, int64_t mask, int32_t shift, int64_t lo, int64_t hi);
/* min over n sequences (acquire loads), starting from `minimum` */
int64_t rm_min_sequence(int64_t **seqs, int32_t n, int64_t minimum);
/* single producer: release-store the cursor; with check_waiters, a seq_cst
   fence then wake futex waiters if any are registered */
void rm_publish_sp(int64_t *cursor, int64_t seq, int32_t *futex, int32_t check_waiters);
/* multi producer: mark slots lo..hi available (release stores of the round
   number seq >> shift), clear the producer's claim entry (may be NULL), wake waiters */
void rm_publish_mp(int64_t *avail, int64_t mask, int32_t shift, int64_t lo, int64_t hi,
                   int64_t *entry, int32_t *futex, int32_t check_waiters);
/* multi producer, non-blocking claim of n slots: write the claim intent
   [lo, hi] into entry[4], entry[5], then CAS the cursor.  `cache` holds the
   producer's cached minimum gating sequence.  Returns lo, or 0 when full. */
int64_t rm_mp_try_claim(int64_t *cursor, int64_t n, int64_t capacity,
                        int64_t **gating, int32_t ngating, int64_t *cache, int64_t *entry);
/* copy one record into slot seq and publish it (single-producer fast path
   used by Producer.offer); returns 0 or -1 when the ring is full */
int64_t rm_sp_offer(int64_t *cursor, int64_t seq, int64_t capacity, int64_t **gating,
                    int32_t ngating, int64_t *cache, char *data, int64_t record_size,
                    const void *src, int32_t *futex, int32_t check_waiters);
/* argument orders for functools.partial (the varying seq last): one C call per publish,
   no Python frame */
void rm_publish_sp_at(int64_t *cursor, int32_t *futex, int32_t check_waiters, int64_t seq);
void rm_publish_mp_one(int64_t *avail, int64_t mask, int32_t shift, int64_t *entry,
                       int32_t *futex, int32_t check_waiters, int64_t seq);
/* ---- producers waiting for space (the "space" futex: futex[2] word, futex[3] waiter count) ---- */

/* spin (with the CPU pause hint) up to `spins` rounds until min(gating) >= needed;
   returns min(gating) */
int64_t rm_gating_spin(int64_t **gating, int32_t ngating, int64_t needed, int64_t spins);
/* register as a space waiter (seq_cst increment of futex[3]), re-check min(gating),
   sleep on futex[2] at most timeout_ns unless min(gating) >= needed, unregister;
   returns min(gating).  Pairs with the fence + waiter load in rm_commit. */
int64_t rm_gating_block(int64_t **gating, int32_t ngating, int64_t needed, int32_t *futex,
                        int64_t timeout_ns);
/* consumer commit: release-store *seq_ptr = seq; then (one seq_cst fence) wake
   consumer waiters (futex[0]) if signal_consumers and any are registered, and
   space waiters (futex[2]) if signal_producers and any are registered */
void rm_commit(int64_t *seq_ptr, int64_t seq, int32_t *futex, int32_t signal_consumers,
               int32_t signal_producers);
int64_t rm_monotonic_ns(void);
#endif
