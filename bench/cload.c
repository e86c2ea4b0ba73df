/*
 * cload - load generator for a courierfilter-style filter socket.
 *
 * It plays the part of Courier's `submit`: for every message it connects to the
 * filter's AF_UNIX stream socket, writes the data file path, the control file
 * path(s) and an empty line, then reads the verdict until the filter closes
 * the connection.  Many requests are kept in flight at once with non-blocking
 * sockets driven by one epoll loop, so the generator itself stays cheap next to
 * the daemon being measured.
 *
 * Build:  gcc -O2 -Wall -o cload cload.c
 * Usage:  cload -s SOCKET -d DATAFILE -c CTLFILE [-c CTLFILE ...] [options]
 *         cload -s SOCKET -d DATAFILE -L CTLLIST [options]
 *   -L FILE  vary the messages: FILE names one control file per line, and message
 *            number k (in the order they are started) is sent with line k mod N
 *            (instead of the -c list, which every message gets otherwise)
 *   -n N     connections kept in flight (default 1)
 *   -m N     messages to send in total (default 1000)
 *   -e TEXT  every reply line must start with TEXT (default "200")
 *   -r N     connect retries on EAGAIN per message, -1 = unlimited (default 5)
 *   -R MS    pause before a retry in milliseconds (default 1000, like Courier)
 *   -t SEC   give up on one message after SEC seconds (default 120)
 *   -l NAME  label copied into the summary
 *   -o FILE  also write every latency (microseconds, one per line) to FILE
 *
 * Output: a single JSON object on one line on stdout (see print_summary).
 * Exit status: 0 if every message got a valid reply, 1 otherwise, 2 on usage
 * errors.
 *
 * Latency of a message runs from its first connect() attempt (so retry pauses
 * caused by a full listen backlog are included) to the end of the reply.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CTL 64
#define SAMPLE_LEN 160

enum state { ST_FREE, ST_WAIT_RETRY, ST_CONNECTING, ST_SENDING, ST_READING };

struct slot {
    int fd;
    enum state st;
    double started;     /* first connect attempt of the current message */
    double retry_at;    /* when ST_WAIT_RETRY ends */
    int retries;        /* EAGAIN retries used by the current message */
    long req;           /* index of the request (control file) of the current message */
    size_t sent;        /* request bytes written */
    size_t got;         /* reply bytes read */
    size_t col;         /* column inside the current reply line */
    int bad;            /* a reply line did not start with the expected text */
    char sample[SAMPLE_LEN + 1];
    size_t sample_len;
};

/* configuration */
static struct sockaddr_un addr;
static char **requests;     /* one request per control file list (-L), else just one */
static size_t *request_lens;
static long n_requests;
static long next_message;   /* messages started so far: picks the request */
static const char *expect = "200";
static size_t expect_len = 3;
static long max_retries = 5;
static double retry_pause = 1.0;
static double msg_timeout = 120.0;

/* results */
static double *latency;
static long n_done, n_ok, n_bad_reply, n_no_reply, n_timeout, n_io_error;
static long n_eagain, n_econnrefused, n_connect_other, n_retried, n_refused;
static long in_flight, max_in_flight;
static char first_bad[SAMPLE_LEN + 1];
static int have_first_bad;

static int epfd;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void usage(void)
{
    fputs("usage: cload -s SOCKET -d DATAFILE (-c CTLFILE [-c CTLFILE ...] | -L CTLLIST)\n"
          "             [-n CONNS] [-m MESSAGES] [-e EXPECT] [-r RETRIES] [-R RETRY_MS]\n"
          "             [-t TIMEOUT_S] [-l LABEL] [-o FILE]\n",
          stderr);
    exit(2);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void watch(struct slot *s, long idx, uint32_t events, int op)
{
    struct epoll_event ev = { .events = events, .data.u64 = (uint64_t)idx };
    if (epoll_ctl(epfd, op, s->fd, &ev) < 0)
        die("epoll_ctl");
}

static void close_slot(struct slot *s)
{
    if (s->fd >= 0) {
        close(s->fd); /* also removes it from the epoll set */
        s->fd = -1;
    }
    s->st = ST_FREE;
}

/* The message in slot s is over (successfully or not). */
static void finish(struct slot *s)
{
    double t = now();
    latency[n_done++] = t - s->started;
    if (s->st == ST_SENDING || s->st == ST_READING)
        in_flight--;
    if (s->retries > 0)
        n_retried++;
    close_slot(s);
}

static void note_bad(const struct slot *s)
{
    if (!have_first_bad) {
        memcpy(first_bad, s->sample, s->sample_len);
        first_bad[s->sample_len] = '\0';
        have_first_bad = 1;
    }
}

/* Feed reply bytes into the line validator. */
static void consume(struct slot *s, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        if (s->sample_len < SAMPLE_LEN)
            s->sample[s->sample_len++] = c;
        if (c == '\n') {
            if (s->col < expect_len) /* empty or truncated line */
                s->bad = 1;
            s->col = 0;
            continue;
        }
        if (s->col < expect_len && c != expect[s->col])
            s->bad = 1;
        s->col++;
    }
    s->got += n;
}

/* The peer closed the connection: judge the whole reply. */
static void reply_complete(struct slot *s)
{
    if (s->got == 0) {
        n_no_reply++;
        s->sample_len = 0;
        note_bad(s);
    } else {
        if (s->col > 0 && s->col < expect_len)
            s->bad = 1;
        if (s->bad) {
            n_bad_reply++;
            note_bad(s);
        } else {
            n_ok++;
        }
    }
    finish(s);
}

static void start_sending(struct slot *s, long idx, int registered)
{
    s->st = ST_SENDING;
    in_flight++;
    if (in_flight > max_in_flight)
        max_in_flight = in_flight;
    /* The request is tiny: it nearly always fits in the socket buffer at once. */
    ssize_t w = write(s->fd, requests[s->req], request_lens[s->req]);
    if (w > 0)
        s->sent = (size_t)w;
    else if (w < 0 && errno != EAGAIN) {
        n_io_error++;
        finish(s);
        return;
    }
    if (s->sent == request_lens[s->req]) {
        s->st = ST_READING;
        watch(s, idx, EPOLLIN | EPOLLRDHUP, registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD);
    } else {
        watch(s, idx, EPOLLOUT, registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD);
    }
}

/* One connect() attempt for the message in slot idx. */
static void attempt(struct slot *slots, long idx)
{
    struct slot *s = &slots[idx];
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        die("socket");
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        start_sending(s, idx, 0);
        return;
    }
    int err = errno;
    if (err == EINPROGRESS) {
        s->st = ST_CONNECTING;
        watch(s, idx, EPOLLOUT, EPOLL_CTL_ADD);
        return;
    }
    close(s->fd);
    s->fd = -1;
    if (err == EAGAIN) {
        n_eagain++;
        if (max_retries < 0 || s->retries < max_retries) {
            s->retries++;
            s->st = ST_WAIT_RETRY;
            s->retry_at = now() + retry_pause;
            return;
        }
        n_refused++;
    } else {
        if (err == ECONNREFUSED)
            n_econnrefused++;
        else
            n_connect_other++;
        n_refused++;
    }
    finish(s);
}

static void begin_message(struct slot *slots, long idx)
{
    struct slot *s = &slots[idx];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->req = next_message++ % n_requests;
    s->started = now();
    attempt(slots, idx);
}

static void on_event(struct slot *slots, long idx, uint32_t events)
{
    struct slot *s = &slots[idx];
    if (s->st == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            n_connect_other++;
            n_refused++;
            finish(s);
            return;
        }
        start_sending(s, idx, 1);
        return;
    }
    if (s->st == ST_SENDING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            n_io_error++;
            finish(s);
            return;
        }
        size_t len = request_lens[s->req];
        ssize_t w = write(s->fd, requests[s->req] + s->sent, len - s->sent);
        if (w > 0)
            s->sent += (size_t)w;
        else if (w < 0 && errno != EAGAIN) {
            n_io_error++;
            finish(s);
            return;
        }
        if (s->sent == len) {
            s->st = ST_READING;
            watch(s, idx, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
        }
        return;
    }
    if (s->st == ST_READING) {
        char buf[4096];
        for (;;) {
            ssize_t r = read(s->fd, buf, sizeof buf);
            if (r > 0) {
                consume(s, buf, (size_t)r);
                continue;
            }
            if (r == 0) {
                reply_complete(s);
                return;
            }
            if (errno == EAGAIN)
                return;
            if (errno == EINTR)
                continue;
            n_io_error++;
            finish(s);
            return;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile_ms(double q)
{
    if (n_done == 0)
        return 0.0;
    long i = (long)(q * (double)(n_done - 1) + 0.5);
    return latency[i] * 1000.0;
}

static void print_json_string(const char *str)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)str; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void print_summary(const char *label, long total, long conns, double wall)
{
    double sum = 0.0;
    for (long i = 0; i < n_done; i++)
        sum += latency[i];
    qsort(latency, (size_t)n_done, sizeof *latency, cmp_double);
    printf("{\"label\": ");
    print_json_string(label);
    printf(", \"messages\": %ld, \"concurrency\": %ld, \"ok\": %ld, \"bad_reply\": %ld, "
           "\"no_reply\": %ld, \"timeouts\": %ld, \"io_errors\": %ld, ",
           total, conns, n_ok, n_bad_reply, n_no_reply, n_timeout, n_io_error);
    printf("\"connect\": {\"eagain\": %ld, \"econnrefused\": %ld, \"other_errors\": %ld, "
           "\"retried_messages\": %ld, \"refused_messages\": %ld}, ",
           n_eagain, n_econnrefused, n_connect_other, n_retried, n_refused);
    printf("\"max_in_flight\": %ld, \"wall_s\": %.4f, \"msg_per_s\": %.1f, ", max_in_flight, wall,
           wall > 0 ? (double)n_ok / wall : 0.0);
    printf("\"latency_ms\": {\"min\": %.3f, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
           "\"p99\": %.3f, \"max\": %.3f}, \"first_bad_reply\": ",
           quantile_ms(0.0), n_done ? sum / (double)n_done * 1000.0 : 0.0, quantile_ms(0.5),
           quantile_ms(0.9), quantile_ms(0.99), quantile_ms(1.0));
    if (have_first_bad)
        print_json_string(first_bad);
    else
        printf("null");
    printf("}\n");
}

/* "DATA\nCTL1\n...CTLn\n\n" */
static char *build_request(const char *data_path, const char *const *ctl, int n_ctl, size_t *len)
{
    size_t n = strlen(data_path) + 2;
    for (int i = 0; i < n_ctl; i++)
        n += strlen(ctl[i]) + 1;
    char *req = malloc(n + 1);
    if (!req)
        die("malloc");
    char *p = req;
    p += sprintf(p, "%s\n", data_path);
    for (int i = 0; i < n_ctl; i++)
        p += sprintf(p, "%s\n", ctl[i]);
    *p++ = '\n';
    *len = n;
    return req;
}

/* One request per non-empty line of the file at path (-L). */
static void load_request_list(const char *path, const char *data_path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die(path);
    char *line = NULL;
    size_t cap = 0, alloc = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) != -1) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (got == 0)
            continue;
        if ((size_t)n_requests == alloc) {
            alloc = alloc ? alloc * 2 : 256;
            requests = realloc(requests, alloc * sizeof *requests);
            request_lens = realloc(request_lens, alloc * sizeof *request_lens);
            if (!requests || !request_lens)
                die("realloc");
        }
        const char *one[1] = { line };
        requests[n_requests] = build_request(data_path, one, 1, &request_lens[n_requests]);
        n_requests++;
    }
    free(line);
    fclose(f);
    if (n_requests == 0) {
        fprintf(stderr, "cload: %s names no control file\n", path);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    const char *sock_path = NULL, *data_path = NULL, *label = "", *lat_file = NULL;
    const char *ctl_list = NULL;
    const char *ctl[MAX_CTL];
    int n_ctl = 0;
    long conns = 1, total = 1000;
    int opt;

    while ((opt = getopt(argc, argv, "s:d:c:L:n:m:e:r:R:t:l:o:h")) != -1) {
        switch (opt) {
        case 's': sock_path = optarg; break;
        case 'd': data_path = optarg; break;
        case 'c':
            if (n_ctl == MAX_CTL)
                usage();
            ctl[n_ctl++] = optarg;
            break;
        case 'L': ctl_list = optarg; break;
        case 'n': conns = atol(optarg); break;
        case 'm': total = atol(optarg); break;
        case 'e': expect = optarg; expect_len = strlen(optarg); break;
        case 'r': max_retries = atol(optarg); break;
        case 'R': retry_pause = atof(optarg) / 1000.0; break;
        case 't': msg_timeout = atof(optarg); break;
        case 'l': label = optarg; break;
        case 'o': lat_file = optarg; break;
        default: usage();
        }
    }
    if (!sock_path || !data_path || (n_ctl == 0) == (ctl_list == NULL) || conns < 1 || total < 1 ||
        optind != argc)
        usage();
    if (strlen(sock_path) >= sizeof addr.sun_path) {
        fprintf(stderr, "cload: socket path too long\n");
        return 2;
    }
    if (conns > total)
        conns = total;

    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, sock_path);

    if (ctl_list) {
        load_request_list(ctl_list, data_path);
    } else {
        requests = malloc(sizeof *requests);
        request_lens = malloc(sizeof *request_lens);
        if (!requests || !request_lens)
            die("malloc");
        requests[0] = build_request(data_path, ctl, n_ctl, &request_lens[0]);
        n_requests = 1;
    }

    raise_fd_limit();
    struct slot *slots = calloc((size_t)conns, sizeof *slots);
    latency = calloc((size_t)total, sizeof *latency);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!slots || !latency || epfd < 0)
        die("setup");
    for (long i = 0; i < conns; i++) {
        slots[i].fd = -1;
        slots[i].st = ST_FREE;
    }

    struct epoll_event events[512];
    long launched = 0;
    double t0 = now();
    double next_sweep = t0;

    while (n_done < total) {
        double t = now();
        /* Keep every slot busy while messages remain; sweep retries and timeouts. */
        if (launched < total || t >= next_sweep) {
            double soonest = t + 0.05;
            for (long i = 0; i < conns; i++) {
                struct slot *s = &slots[i];
                if (s->st == ST_FREE) {
                    if (launched < total) {
                        launched++;
                        begin_message(slots, i);
                    }
                } else if (s->st == ST_WAIT_RETRY) {
                    if (s->retry_at <= t)
                        attempt(slots, i);
                    else if (s->retry_at < soonest)
                        soonest = s->retry_at;
                } else if (t - s->started > msg_timeout) {
                    n_timeout++;
                    finish(s);
                    if (launched < total) {
                        launched++;
                        begin_message(slots, i);
                    }
                }
            }
            next_sweep = soonest;
        }
        if (n_done >= total)
            break;
        int wait_ms = (int)((next_sweep - now()) * 1000.0) + 1;
        if (wait_ms < 0)
            wait_ms = 0;
        int n = epoll_wait(epfd, events, 512, wait_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        int freed = 0;
        for (int k = 0; k < n; k++) {
            long idx = (long)events[k].data.u64;
            on_event(slots, idx, events[k].events);
            if (slots[idx].st == ST_FREE)
                freed = 1;
        }
        if (freed)
            next_sweep = 0; /* refill free slots right away */
    }
    double wall = now() - t0;

    if (lat_file) {
        FILE *f = fopen(lat_file, "w");
        if (!f)
            die(lat_file);
        for (long i = 0; i < n_done; i++)
            fprintf(f, "%.0f\n", latency[i] * 1e6);
        fclose(f);
    }
    print_summary(label, total, conns, wall);
    return n_ok == total ? 0 : 1;
}
