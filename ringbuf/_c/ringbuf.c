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
