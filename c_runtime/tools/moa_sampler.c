/* moa_sampler: the power sampler moa-edge energy runs on the board, beside the runner.
 *
 *     moa_sampler [-t LIMIT_S] INTERVAL_US IDLE_MS FILE... -- RUNNER [ARG...]
 *
 * Reads every FILE (one integer each: sysfs power, current, voltage or energy counters)
 * every INTERVAL_US microseconds: first for IDLE_MS milliseconds with nothing running
 * (phase 0), then while RUNNER runs as a child process (phase 1). Prints on stdout
 *
 *     sample PHASE T_NS V1 V2 ...      (T_NS: CLOCK_MONOTONIC; "-" for a file that could not be read)
 *     active_ns N                      (from the child's start to its exit)
 *     exit STATUS
 *
 * A runner still running LIMIT_S seconds after its start is killed with its process group
 * (an emulator and whatever it started), after a line "timeout LIMIT_S"; its exit status is
 * then 128 + SIGKILL.
 * Files are opened for every read: a sysfs attribute is re-read from the start, and a
 * file replaced by rename (as a test's fake sysfs does) is seen anew. Exit code: the
 * runner's, or 2 for bad arguments. POSIX only; nothing but libc. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void sleep_until(long long deadline_ns)
{
    long long left = deadline_ns - now_ns();
    if (left > 0) {
        struct timespec t;
        t.tv_sec = (time_t)(left / 1000000000LL);
        t.tv_nsec = (long)(left % 1000000000LL);
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {
        }
    }
}

/* One reading of every file as one line. */
static void sample(int phase, int count, char **files)
{
    int k;
    printf("sample %d %lld", phase, now_ns());
    for (k = 0; k < count; k++) {
        char text[64];
        ssize_t got = -1;
        int fd = open(files[k], O_RDONLY);
        if (fd >= 0) {
            got = read(fd, text, sizeof text - 1);
            close(fd);
        }
        if (got > 0) {
            char *end;
            long long value;
            text[got] = '\0';
            errno = 0;
            value = strtoll(text, &end, 10);
            if (errno == 0 && end != text) {
                printf(" %lld", value);
                continue;
            }
        }
        printf(" -");
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    long long interval_ns, idle_ns, limit_ns = 0, next, start, end;
    int count = 0, status = 0, k;
    char **files;
    pid_t child;
    if (argc > 2 && strcmp(argv[1], "-t") == 0) {
        limit_ns = atoll(argv[2]) * 1000000000LL;
        if (limit_ns <= 0) {
            fprintf(stderr, "%s: -t needs a positive number of seconds\n", argv[0]);
            return 2;
        }
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if (argc < 5) {
        fprintf(stderr, "usage: %s [-t LIMIT_S] INTERVAL_US IDLE_MS FILE... -- RUNNER [ARG...]\n", argv[0]);
        return 2;
    }
    interval_ns = atoll(argv[1]) * 1000LL;
    idle_ns = atoll(argv[2]) * 1000000LL;
    files = argv + 3;
    while (3 + count < argc && strcmp(argv[3 + count], "--") != 0) {
        count++;
    }
    if (interval_ns <= 0 || idle_ns < 0 || count == 0 || 3 + count + 1 >= argc) {
        fprintf(stderr, "%s: need INTERVAL_US > 0, IDLE_MS >= 0, at least one FILE, -- and a runner\n", argv[0]);
        return 2;
    }
    next = now_ns();
    end = next + idle_ns;
    while (next <= end) {
        sample(0, count, files);
        next += interval_ns;
        sleep_until(next);
    }
    fflush(stdout);
    start = now_ns();
    child = fork();
    if (child < 0) {
        perror("fork");
        return 2;
    }
    if (child == 0) {
        setpgid(0, 0); /* a group of its own, killed whole at the time limit */
        execv(argv[3 + count + 1], argv + 3 + count + 1);
        perror(argv[3 + count + 1]);
        _exit(127);
    }
    next = start;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        sample(1, count, files);
        if (done == child) {
            break;
        }
        if (limit_ns > 0 && now_ns() - start >= limit_ns) {
            kill(-child, SIGKILL);
            kill(child, SIGKILL); /* should it have had no time to make its group */
            waitpid(child, &status, 0);
            printf("timeout %lld\n", limit_ns / 1000000000LL);
            break;
        }
        next += interval_ns;
        sleep_until(next);
    }
    printf("active_ns %lld\n", now_ns() - start);
    k = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    printf("exit %d\n", k);
    return k;
}
