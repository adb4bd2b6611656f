/* fsyncshim: an LD_PRELOAD library that records, and may slow down, every fsync/fdatasync.
 *
 *   FSYNC_LOG=/path/log        append one line per call:
 *                              "<call> <fd> <start> <end> <rc> <path>\n"
 *                              start/end: CLOCK_MONOTONIC seconds (system-wide; Python's
 *                              time.monotonic() reads the same clock), path: /proc/self/fd readlink
 *   FSYNC_DELAY_MS=10          sleep that long before each call (an SD card's fsync; bench/sdcard.py)
 *
 * Built by bench/fsyncshim.py (gcc -shared -fPIC ... -ldl); used by tests/test_durability.py
 * and bench/sdcard.py.  One write(2) per line on an O_APPEND descriptor: lines from
 * concurrent threads never interleave.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int log_fd = -1;
static long delay_ns;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *log = getenv("FSYNC_LOG");
    if (log && *log)
        log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    const char *delay = getenv("FSYNC_DELAY_MS");
    if (delay && *delay)
        delay_ns = (long)(atof(delay) * 1e6);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int traced(const char *name, int datasync, int fd) {
    pthread_once(&once, init);
    double start = now();
    if (delay_ns > 0) {
        struct timespec ts = {delay_ns / 1000000000L, delay_ns % 1000000000L};
        while (nanosleep(&ts, &ts) != 0) {}
    }
    int rc = datasync ? real_fdatasync(fd) : real_fsync(fd);
    double end = now();
    if (log_fd >= 0) {
        char link[64], path[512], line[700];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        path[n > 0 ? n : 0] = '\0';
        int len = snprintf(line, sizeof line, "%s %d %.9f %.9f %d %s\n", name, fd, start, end, rc, path);
        if (len > (int)sizeof line - 1)
            len = (int)sizeof line - 1;
        if (write(log_fd, line, (size_t)len) < 0) {}
    }
    return rc;
}

int fsync(int fd) { return traced("fsync", 0, fd); }
int fdatasync(int fd) { return traced("fdatasync", 1, fd); }
