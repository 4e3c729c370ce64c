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
#endif
