// An LD_PRELOAD tracer for the loop thread's GIL hand-offs, on real FastAPI and on the emulation
// alike (session 10; `gil_hold_trace.py` runs it and reads its log). Every event is timestamped
// (CLOCK_MONOTONIC, ns) with its thread id into an in-memory log that a background thread
// writes to $GIL_TRACE_DIR/trace.<pid>.bin once a second (uvicorn ends by re-raising SIGTERM,
// so no exit handler would run).
//
//   CPython 3.11  pthread_cond_timedwait / pthread_cond_wait   the GIL's waits (take_gil, and
//                                                               FORCE_SWITCHING's switch wait)
//                 PyGILState_Ensure / PyGILState_Release        uvloop's `with gil` callbacks:
//                                                               the loop taking and dropping it
//   Rust std      syscall(SYS_futex, FUTEX_WAIT*, FUTEX_WAKE)  Condvar/Mutex: the model's GIL
//                                                               waits, and its releases (a wake
//                                                               on the `released` condvar)
//   both          write / writev / send / sendmsg              the answers (fd, bytes)
//                 read / recv / recvfrom                       the requests (fd, bytes)
//                 epoll_wait / epoll_pwait                     the loop polling for I/O, with
//                                                               the thread's CPU time at entry
//
// Each hook costs a clock read and an atomic add (well under a microsecond), far less than
// `perf trace`'s per-syscall cost. Build: gcc -O2 -shared -fPIC -o gil_hold_trace.so
// gil_hold_trace.c -ldl -lpthread
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

// Event kinds (the `kind` field). For waits `a` is the condvar/futex address and `b` unused;
// for I/O `a` is the fd and `b` the bytes; for marks `b` is the thread's CPU time (ns).
enum {
    WAIT_SIGNALLED = 0,   // a timed wait ended by a wake-up
    WAIT_UNTIMED = 1,     // an untimed wait ended
    WAIT_TIMED_OUT = 110, // ETIMEDOUT
    WAIT_OTHER = 2,       // EAGAIN, EINTR
    WRITE = 1000,
    FUTEX_WOKE = 3000,
    EPOLL_ENTER = 4000,
    READ = 5000,
    GIL_ENSURE = 2001,
    GIL_HELD = 2002,
    GIL_RELEASE = 2003,
};

typedef struct {
    int32_t tid;
    int32_t kind;
    uint64_t a;
    uint64_t t0, t1; // waits: start and end; everything else: t0 = when, t1 = b
} event_t;

#define CAPACITY (8u << 20)
static event_t *events;
static atomic_uint count;
static __thread int32_t my_tid;
static long (*real_syscall)(long, ...);

static uint64_t ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void record(int32_t kind, uint64_t a, uint64_t t0, uint64_t t1) {
    if (!real_syscall) real_syscall = dlsym(RTLD_NEXT, "syscall");
    if (!my_tid) my_tid = (int32_t)real_syscall(SYS_gettid);
    unsigned i = atomic_fetch_add(&count, 1);
    if (!events || i >= CAPACITY) return;
    events[i] = (event_t){my_tid, kind, a, t0, t1};
}

static void mark(int32_t kind, uint64_t a, uint64_t b) { record(kind, a, ns(CLOCK_MONOTONIC), b); }

static void dump(void) {
    const char *dir = getenv("GIL_TRACE_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/trace.%d.bin", dir ? dir : "/tmp", getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return;
    unsigned n = atomic_load(&count);
    if (n > CAPACITY) n = CAPACITY;
    int32_t pid = getpid();
    fwrite(&pid, sizeof pid, 1, f);
    fwrite(events, sizeof(event_t), n, f);
    fclose(f);
}

static void *dumper(void *unused) {
    (void)unused;
    for (;;) {
        sleep(1);
        dump();
    }
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    real_syscall = dlsym(RTLD_NEXT, "syscall");
    events = calloc(CAPACITY, sizeof(event_t));
    pthread_t t;
    pthread_create(&t, NULL, dumper, NULL);
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *at) {
    REAL(pthread_cond_timedwait);
    uint64_t t0 = ns(CLOCK_MONOTONIC);
    int rc = real(c, m, at);
    record(rc == 0 ? WAIT_SIGNALLED : rc == ETIMEDOUT ? WAIT_TIMED_OUT : WAIT_OTHER, (uint64_t)c, t0,
           ns(CLOCK_MONOTONIC));
    return rc;
}

int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m) {
    REAL(pthread_cond_wait);
    uint64_t t0 = ns(CLOCK_MONOTONIC);
    int rc = real(c, m);
    record(WAIT_UNTIMED, (uint64_t)c, t0, ns(CLOCK_MONOTONIC));
    return rc;
}

long syscall(long nr, ...) {
    va_list ap;
    va_start(ap, nr);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    int op = (int)a2 & FUTEX_CMD_MASK;
    if (nr != SYS_futex) return real_syscall(nr, a1, a2, a3, a4, a5, a6);
    if (op == FUTEX_WAKE) {
        long rc = real_syscall(nr, a1, a2, a3, a4, a5, a6);
        mark(FUTEX_WOKE, (uint64_t)a1, (uint64_t)rc);
        return rc;
    }
    if (op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET) return real_syscall(nr, a1, a2, a3, a4, a5, a6);
    uint64_t t0 = ns(CLOCK_MONOTONIC);
    long rc = real_syscall(nr, a1, a2, a3, a4, a5, a6);
    int e = errno;
    int32_t kind = rc == 0 ? (a4 ? WAIT_SIGNALLED : WAIT_UNTIMED) : e == ETIMEDOUT ? WAIT_TIMED_OUT : WAIT_OTHER;
    record(kind, (uint64_t)a1, t0, ns(CLOCK_MONOTONIC));
    errno = e;
    return rc;
}

// Records an answer or a request of `rc` bytes on `fd` if it has at least `least` bytes, and
// passes `rc` on: the one body of every I/O hook below.
static ssize_t noted(int32_t kind, int fd, ssize_t rc, ssize_t least) {
    if (rc >= least) mark(kind, (uint64_t)fd, (uint64_t)rc);
    return rc;
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write);
    ssize_t rc = real(fd, buf, len);
    return fd > 2 ? noted(WRITE, fd, rc, 1) : rc;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev);
    return noted(WRITE, fd, real(fd, iov, n), 1);
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    REAL(send);
    return noted(WRITE, fd, real(fd, buf, len, flags), 1);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    REAL(sendmsg);
    return noted(WRITE, fd, real(fd, msg, flags), 1);
}

// Reads of a few bytes are the loops' own wake-ups (eventfd, pipes), not requests.
ssize_t read(int fd, void *buf, size_t len) {
    REAL(read);
    return noted(READ, fd, real(fd, buf, len), 9);
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
    REAL(recv);
    return noted(READ, fd, real(fd, buf, len, flags), 9);
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *alen) {
    REAL(recvfrom);
    return noted(READ, fd, real(fd, buf, len, flags, addr, alen), 9);
}

int epoll_wait(int ep, struct epoll_event *ev, int max, int timeout) {
    REAL(epoll_wait);
    mark(EPOLL_ENTER, (uint64_t)timeout, ns(CLOCK_THREAD_CPUTIME_ID));
    return real(ep, ev, max, timeout);
}

int epoll_pwait(int ep, struct epoll_event *ev, int max, int timeout, const sigset_t *mask) {
    REAL(epoll_pwait);
    mark(EPOLL_ENTER, (uint64_t)timeout, ns(CLOCK_THREAD_CPUTIME_ID));
    return real(ep, ev, max, timeout, mask);
}

// CPython's C API, called by uvloop's `with gil` (its own library's PLT, so LD_PRELOAD sees it).
int PyGILState_Ensure(void) {
    REAL(PyGILState_Ensure);
    mark(GIL_ENSURE, 0, ns(CLOCK_THREAD_CPUTIME_ID));
    int state = real();
    mark(GIL_HELD, 0, ns(CLOCK_THREAD_CPUTIME_ID));
    return state;
}

void PyGILState_Release(int state) {
    REAL(PyGILState_Release);
    mark(GIL_RELEASE, 0, ns(CLOCK_THREAD_CPUTIME_ID));
    real(state);
}
