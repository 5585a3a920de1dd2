/* vbench: the I/O loops of the virtio throughput benchmark
 * (tests/hil/virtio-bench.sh; not a test). Built static by the script, the
 * same binary runs in L2 (block reads, vsock listeners) and in L1 (vsock
 * clients). Every loop prints "VB: <name> begin" just before its first I/O
 * and "VB: <name> end ..." just after its last, on stdout (in L2 that is the
 * serial console, so L1 can time the loop with its own clock as the lines
 * arrive); the "end" line also gives the bytes moved and the seconds the
 * loop took by this side's CLOCK_MONOTONIC.
 *
 *   vbench seq DEV BS                  O_DIRECT reads of BS bytes over all of DEV
 *   vbench rand DEV BS COUNT THREADS   COUNT O_DIRECT reads of BS bytes at random
 *                                      BS-aligned offsets (a fixed seed: the same
 *                                      offsets every run), split over THREADS
 *   vbench sink PORT                   (L2) accept one vsock connection on PORT,
 *                                      read to EOF, answer "got N\n", close
 *   vbench source PORT BYTES WSIZE     (L2) accept one vsock connection on PORT,
 *                                      write BYTES, WSIZE bytes per write(),
 *                                      shut down the write side, read to the
 *                                      peer's EOF, close
 *   vbench send TARGET PORT BYTES WSIZE
 *                                      (L1) connect, write BYTES (WSIZE per
 *                                      write()), shut down the write side, read
 *                                      the answer to EOF
 *   vbench recv TARGET PORT            (L1) connect, read to EOF
 * TARGET is unix:PATH (a hybrid vsock socket: "CONNECT PORT\n", then one
 * "OK ...\n" line) or vsock:CID. The client's clock starts once the
 * connection is up (after the OK line) and stops at EOF.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Largest read; largest write size. */
#define NETBUF (256 << 10)

static void die(const char *what)
{
	printf("VB: ERROR: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void mark(const char *name, const char *what)
{
	printf("VB: %s %s\n", name, what);
	fflush(stdout);
}

static void end(const char *name, long long bytes, double t0)
{
	double s = now() - t0;
	printf("VB: %s end bytes=%lld secs=%.3f mib_s=%.1f\n", name, bytes, s,
	       s > 0 ? bytes / 1048576.0 / s : 0.0);
	fflush(stdout);
}

static void *aligned(size_t n)
{
	void *p;
	if (posix_memalign(&p, 4096, n))
		die("posix_memalign");
	memset(p, 0, n);
	return p;
}

static int open_direct(const char *dev, off_t *size)
{
	int fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0)
		die(dev);
	*size = lseek(fd, 0, SEEK_END);
	if (*size <= 0)
		die("lseek");
	return fd;
}

static int seq(const char *dev, size_t bs)
{
	off_t size, off;
	int fd = open_direct(dev, &size);
	char *buf = aligned(bs);
	long long got = 0;
	ssize_t n;
	mark("seq", "begin");
	double t0 = now();
	for (off = 0; off < size; off += n) {
		n = pread(fd, buf, bs, off);
		if (n <= 0)
			die("pread");
		got += n;
	}
	end("seq", got, t0);
	return 0;
}

struct rjob {
	int fd;
	size_t bs;
	long count;
	uint64_t seed, blocks;
	long long got;
};

static void *rand_thread(void *arg)
{
	struct rjob *j = arg;
	char *buf = aligned(j->bs);
	uint64_t x = j->seed;
	for (long i = 0; i < j->count; i++) {
		x ^= x << 13; /* xorshift64 */
		x ^= x >> 7;
		x ^= x << 17;
		if (pread(j->fd, buf, j->bs, (off_t)(x % j->blocks) * j->bs) != (ssize_t)j->bs)
			die("pread");
		j->got += j->bs;
	}
	return NULL;
}

static int rnd(const char *dev, size_t bs, long count, int threads)
{
	off_t size;
	int fd = open_direct(dev, &size);
	struct rjob j[64];
	pthread_t t[64];
	char name[32];
	long long got = 0;
	if (threads < 1 || threads > 64)
		threads = 1;
	for (int i = 0; i < threads; i++) {
		j[i] = (struct rjob){ fd, bs, count / threads, 0x9e3779b97f4a7c15ULL * (i + 1),
				      size / bs, 0 };
	}
	snprintf(name, sizeof name, "rand%d", threads);
	mark(name, "begin");
	double t0 = now();
	for (int i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, rand_thread, &j[i]))
			die("pthread_create");
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		got += j[i].got;
	}
	end(name, got, t0);
	return 0;
}

/* L2: one connection on PORT. */
static int accept_one(int port, const char *name)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int s = socket(AF_VSOCK, SOCK_STREAM, 0), c;
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1))
		die("vsock listen");
	mark(name, "listening");
	c = accept(s, NULL, NULL);
	if (c < 0)
		die("accept");
	close(s);
	return c;
}

static int sink(int port)
{
	int c = accept_one(port, "sink");
	char *buf = aligned(NETBUF), ans[64];
	long long got = 0;
	ssize_t n;
	mark("sink", "begin");
	double t0 = now();
	while ((n = read(c, buf, NETBUF)) > 0)
		got += n;
	if (n < 0)
		die("read");
	end("sink", got, t0);
	n = snprintf(ans, sizeof ans, "got %lld\n", got);
	if (write(c, ans, n) != n)
		die("write");
	close(c);
	return 0;
}

static int writeall(int fd, const char *buf, long long bytes, long wsize)
{
	if (wsize < 1 || wsize > NETBUF)
		wsize = NETBUF;
	while (bytes > 0) {
		ssize_t n = write(fd, buf, bytes < wsize ? bytes : wsize);
		if (n <= 0)
			return -1;
		bytes -= n;
	}
	return 0;
}

static int source(int port, long long bytes, long wsize)
{
	int c = accept_one(port, "source");
	char *buf = aligned(NETBUF);
	memset(buf, 0x5a, NETBUF);
	mark("source", "begin");
	double t0 = now();
	if (writeall(c, buf, bytes, wsize))
		die("write");
	/* Done when the peer has read it all: its EOF (poweroff -f right after
	 * close could lose what is still queued). */
	shutdown(c, SHUT_WR);
	while (read(c, buf, NETBUF) > 0)
		;
	end("source", bytes, t0);
	close(c);
	return 0;
}

/* L1: a connected stream to PORT of TARGET, past the hybrid handshake. */
static int dial(const char *target, int port)
{
	int s;
	if (!strncmp(target, "vsock:", 6)) {
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = atoi(target + 6),
					 .svm_port = port };
		s = socket(AF_VSOCK, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a))
			die("vsock connect");
		return s;
	}
	if (strncmp(target, "unix:", 5)) {
		errno = EINVAL;
		die("TARGET is unix:PATH or vsock:CID");
	}
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	char line[64];
	int n, i = 0;
	snprintf(u.sun_path, sizeof u.sun_path, "%s", target + 5);
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&u, sizeof u))
		die("unix connect");
	n = snprintf(line, sizeof line, "CONNECT %d\n", port);
	if (write(s, line, n) != n)
		die("write CONNECT");
	/* Byte by byte up to the newline: what follows is the stream. */
	while (i < (int)sizeof line - 1 && read(s, line + i, 1) == 1 && line[i] != '\n')
		i++;
	line[i] = 0;
	if (strncmp(line, "OK ", 3)) {
		printf("VB: ERROR: hybrid vsock answered '%s' to CONNECT %d\n", line, port);
		exit(1);
	}
	return s;
}

static int client(const char *name, const char *target, int port, long long bytes, long wsize)
{
	int s = dial(target, port);
	char *buf = aligned(NETBUF);
	long long got = 0;
	ssize_t n;
	memset(buf, 0xa5, NETBUF);
	mark(name, "begin");
	double t0 = now();
	if (bytes >= 0) {
		if (writeall(s, buf, bytes, wsize))
			die("write");
		shutdown(s, SHUT_WR);
	}
	while ((n = read(s, buf, NETBUF)) > 0)
		got += n;
	if (n < 0)
		die("read");
	if (bytes >= 0) {
		printf("VB: %s answer: %.*s", name, (int)got, buf);
		end(name, bytes, t0);
	} else {
		end(name, got, t0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *m = argc > 1 ? argv[1] : "";
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(m, "seq") && argc == 4)
		return seq(argv[2], atol(argv[3]));
	if (!strcmp(m, "rand") && argc == 6)
		return rnd(argv[2], atol(argv[3]), atol(argv[4]), atoi(argv[5]));
	if (!strcmp(m, "sink") && argc == 3)
		return sink(atoi(argv[2]));
	if (!strcmp(m, "source") && argc == 5)
		return source(atoi(argv[2]), atoll(argv[3]), atol(argv[4]));
	if (!strcmp(m, "send") && argc == 6)
		return client("send", argv[2], atoi(argv[3]), atoll(argv[4]), atol(argv[5]));
	if (!strcmp(m, "recv") && argc == 4)
		return client("recv", argv[2], atoi(argv[3]), -1, 0);
	fprintf(stderr, "usage: vbench seq DEV BS | rand DEV BS COUNT THREADS | sink PORT |"
			" source PORT BYTES WSIZE | send TARGET PORT BYTES WSIZE | recv TARGET PORT\n");
	return 2;
}
