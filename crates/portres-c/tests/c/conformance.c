/*
 * crates/portres-c/tests/c/conformance.c: the C conformance test of
 * libportres. Drives the C interface the way a Windows program would and
 * checks every documented outcome: each Winsock error code (WSAEINVAL,
 * WSAEACCES, WSAEFAULT, WSAENOTSOCK, WSAEOPNOTSUPP, WSAEADDRINUSE, ...),
 * each ERROR_* code of the persistent functions, byte counts, layouts,
 * the per-thread last error, bind() into an associated reservation,
 * connect()/listen()/sendto()/sendmsg() through an association (the NFS
 * client's privileged source port), WSASocket, the WSAIoctl socket
 * controls, and reservation lifetimes (closesocket, plain close,
 * WSACleanup).
 * Run by crates/portres-tests/tests/c_api.rs under AddressSanitizer and
 * LeakSanitizer, against a real daemon in a private network namespace:
 *
 *   conformance admin                      as root (a daemon administrator)
 *   conformance user START TOKEN FOREIGN OWNED
 *       as an unprivileged user: START and TOKEN name a persistent TCP
 *       reservation of one port created by root, FOREIGN is the token of a
 *       runtime reservation of another session, OWNED is the (privileged)
 *       port of a persistent TCP reservation delegated to this user; the
 *       daemon's quota is 8 ports
 *   conformance nodaemon                   with PORTRES_SOCKET naming no daemon
 *   conformance exec                       under `portres exec tcp --count N`:
 *       binds into the reservation portres exec holds (PORTRES_TOKEN)
 *   conformance restart                    as root: prints "ready" and waits for
 *       a line on standard input while the daemon is restarted
 *
 * Prints one line per failed check and "conformance: N passed, M failed";
 * exits 0 only if nothing failed.
 */
#include <portres/winsock.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SO_INCOMING_CPU
#define SO_INCOMING_CPU 49 /* <asm-generic/socket.h> */
#endif

static int passed;
static int failed;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) {                                                       \
            passed++;                                                     \
        } else {                                                          \
            failed++;                                                     \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
        }                                                                 \
    } while (0)

/* Layouts and values Windows code depends on. */
_Static_assert(sizeof(INET_PORT_RANGE) == 4, "INET_PORT_RANGE");
_Static_assert(sizeof(INET_PORT_RESERVATION) == 4, "INET_PORT_RESERVATION");
_Static_assert(sizeof(INET_PORT_RESERVATION_TOKEN) == 8, "token");
_Static_assert(sizeof(INET_PORT_RESERVATION_INSTANCE) == 16, "instance");
_Static_assert(offsetof(INET_PORT_RESERVATION_INSTANCE, Token) == 8, "Token offset");
_Static_assert(offsetof(INET_PORT_RANGE, NumberOfPorts) == 2, "NumberOfPorts offset");
_Static_assert(sizeof(USHORT) == 2 && sizeof(WORD) == 2, "16-bit");
_Static_assert(sizeof(ULONG) == 4 && sizeof(DWORD) == 4, "32-bit");
_Static_assert(sizeof(ULONG64) == 8, "64-bit");
_Static_assert(SIO_ACQUIRE_PORT_RESERVATION == 0x98000064u, "SIO_ACQUIRE");
_Static_assert(SIO_RELEASE_PORT_RESERVATION == 0x98000065u, "SIO_RELEASE");
_Static_assert(SIO_ASSOCIATE_PORT_RESERVATION == 0x98000066u, "SIO_ASSOCIATE");
_Static_assert(NO_ERROR == 0 && ERROR_ACCESS_DENIED == 5 && ERROR_SHARING_VIOLATION == 32,
               "ERROR_*");
_Static_assert(ERROR_INVALID_PARAMETER == 87 && ERROR_NOT_FOUND == 1168, "ERROR_*");
_Static_assert(WSAEINVAL == 10022 && WSAEACCES == 10013 && WSAEFAULT == 10014, "WSAE*");
_Static_assert(WSAENOTSOCK == 10038 && WSAEOPNOTSUPP == 10045 && WSAEADDRINUSE == 10048,
               "WSAE*");
_Static_assert(INVALID_SOCKET == -1 && SOCKET_ERROR == -1, "failure values");
_Static_assert(MAKEWORD(2, 2) == 0x0202 && MAKEWORD(1, 2) == 0x0201, "MAKEWORD");
/* The SDK's C shape of the instance: anonymous members, Token a ULONG64. */
_Static_assert(offsetof(INET_PORT_RESERVATION_INSTANCE, StartPort) == 0, "StartPort offset");
_Static_assert(offsetof(INET_PORT_RESERVATION_INSTANCE, NumberOfPorts) == 2, "count offset");
_Static_assert(sizeof(((INET_PORT_RESERVATION_INSTANCE *) 0)->Token) == 8, "Token is a ULONG64");
_Static_assert(sizeof(INET_PORT_RESERVATION_INFORMATION) == 4, "INFORMATION");
_Static_assert(INVALID_PORT_RESERVATION_TOKEN == 0, "INVALID_PORT_RESERVATION_TOKEN");
/* Windows' base types and Win64's OVERLAPPED. */
_Static_assert(sizeof(WCHAR) == sizeof(wchar_t) && sizeof(BOOL) == 4 && sizeof(INT) == 4
                   && sizeof(UINT) == 4 && sizeof(LONG) == 4 && sizeof(HRESULT) == 4
                   && sizeof(BYTE) == 1 && sizeof(HANDLE) == sizeof(void *),
               "base types");
_Static_assert(TRUE == 1 && FALSE == 0, "TRUE/FALSE");
_Static_assert(sizeof(OVERLAPPED) == 32 && sizeof(WSAOVERLAPPED) == 32, "OVERLAPPED");
_Static_assert(offsetof(OVERLAPPED, Offset) == 16 && offsetof(OVERLAPPED, OffsetHigh) == 20
                   && offsetof(OVERLAPPED, Pointer) == 16 && offsetof(OVERLAPPED, hEvent) == 24,
               "OVERLAPPED members");
_Static_assert(sizeof(SOCKADDR_INET) == 28 && offsetof(SOCKADDR_INET, si_family) == 0,
               "SOCKADDR_INET");
/* Control codes as Windows computes them. */
_Static_assert(IOC_VENDOR == 0x18000000u && IOC_WS2 == 0x08000000u, "IOC_*");
_Static_assert(_WSAIORW(IOC_WS2, 6) == 0xC8000006u && _WSAIO(IOC_VENDOR, 1) == 0x38000001u,
               "_WSAIORW, _WSAIO");
_Static_assert(_WSAIOW(IOC_VENDOR, 100) == SIO_ACQUIRE_PORT_RESERVATION, "_WSAIOW");
_Static_assert(SIO_CPU_AFFINITY == 0x98000015u && SIO_UDP_CONNRESET == 0x9800000Cu
                   && SIO_UDP_NETRESET == 0x9800000Fu && SIO_LOOPBACK_FAST_PATH == 0x98000010u
                   && SIO_KEEPALIVE_VALS == 0x98000004u,
               "vendor codes");
_Static_assert(SIO_BASE_HANDLE == 0x48000022u && SIO_GET_EXTENSION_FUNCTION_POINTER == 0xC8000006u
                   && _WSAIOR(IOC_WS2, 34) == SIO_BASE_HANDLE,
               "Winsock 2 codes");
_Static_assert(FIONBIO == 0x5421 && FIONREAD == 0x541B, "Linux's FIONBIO/FIONREAD");
_Static_assert(sizeof(u_long) == sizeof(unsigned long), "<sys/types.h>'s u_long");
_Static_assert(WSA_IO_PENDING == 997 && WSA_FLAG_OVERLAPPED == 1
                   && WSA_FLAG_NO_HANDLE_INHERIT == 0x80,
               "WSA_IO_PENDING, WSA_FLAG_*");

/* ---- helpers ---- */

/* WSAIoctl without overlapped I/O: 0, or the WSA error (-1 if the return
 * value was neither 0 nor SOCKET_ERROR). Checks the byte count: 0 after a
 * failure, `ok_bytes` after a success. */
static int ioctl_(SOCKET s, DWORD code, void *in, DWORD cbin, void *out, DWORD cbout,
                  DWORD ok_bytes, int line)
{
    DWORD n = 0xdeadbeef;
    int r = WSAIoctl(s, code, in, cbin, out, cbout, &n, NULL, NULL);
    int e = r == 0 ? 0 : (r == SOCKET_ERROR ? WSAGetLastError() : -1);
    if (e == 0)
        CHECK(n == ok_bytes, "line %d: bytes returned %u, want %u", line, n, ok_bytes);
    else
        CHECK(n == 0, "line %d: bytes returned %u after a failure, want 0", line, n);
    return e;
}

#define IOCTL(s, code, in, cbin, out, cbout, ok) ioctl_(s, code, in, cbin, out, cbout, ok, __LINE__)

static int acquire(SOCKET s, int start, int count, INET_PORT_RESERVATION_INSTANCE *res)
{
    INET_PORT_RANGE range = { htons((USHORT) start), (USHORT) count };
    memset(res, 0, sizeof *res);
    return IOCTL(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, res, sizeof *res, 16);
}

static int associate(SOCKET s, ULONG64 token)
{
    return IOCTL(s, SIO_ASSOCIATE_PORT_RESERVATION, &token, sizeof token, NULL, 0, 8);
}

static int release(SOCKET s, ULONG64 token)
{
    return IOCTL(s, SIO_RELEASE_PORT_RESERVATION, &token, sizeof token, NULL, 0, 8);
}

static int start_of(const INET_PORT_RESERVATION_INSTANCE *res)
{
    return ntohs(res->StartPort);
}

static int in_block(int port, const INET_PORT_RESERVATION_INSTANCE *res)
{
    return port >= start_of(res) && port < start_of(res) + res->NumberOfPorts;
}

/* bind to 0.0.0.0 or [::] (or 127.0.0.1:port): 0 or the WSA error. */
static int bind4(SOCKET s, int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = port ? htonl(INADDR_LOOPBACK) : INADDR_ANY;
    a.sin_port = htons((USHORT) port);
    return bind(s, (SOCKADDR *) &a, sizeof a) == SOCKET_ERROR ? WSAGetLastError() : 0;
}

static int bind6(SOCKET s)
{
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    return bind(s, (SOCKADDR *) &a, sizeof a) == SOCKET_ERROR ? WSAGetLastError() : 0;
}

static int port_of(SOCKET s)
{
    struct sockaddr_storage a;
    int len = sizeof a;
    if (getsockname(s, (SOCKADDR *) &a, &len) == SOCKET_ERROR)
        return -1;
    if (a.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *) &a)->sin_port);
    return ntohs(((struct sockaddr_in6 *) &a)->sin6_port);
}

static SOCKET sock_(int family, int type, int proto)
{
    SOCKET s = socket(family, type, proto);
    if (s == INVALID_SOCKET) {
        printf("socket(%d, %d, %d) failed: %d\n", family, type, proto, WSAGetLastError());
        exit(2);
    }
    return s;
}

static SOCKET tcp4(void) { return sock_(AF_INET, SOCK_STREAM, IPPROTO_TCP); }
static SOCKET udp4(void) { return sock_(AF_INET, SOCK_DGRAM, IPPROTO_UDP); }
static SOCKET tcp6(void) { return sock_(AF_INET6, SOCK_STREAM, 0); }

static void close_(SOCKET s)
{
    CHECK(closesocket(s) == 0, "closesocket(%d): %d", s, WSAGetLastError());
}

/* ---- WSAStartup, WSACleanup, the last error ---- */

static void test_startup(void)
{
    WSADATA d;
    CHECK(WSACleanup() == SOCKET_ERROR && WSAGetLastError() == WSANOTINITIALISED,
          "WSACleanup before WSAStartup");
    CHECK(WSAStartup(MAKEWORD(2, 2), NULL) == WSAEFAULT, "WSAStartup(NULL)");
    CHECK(WSAStartup(MAKEWORD(0, 9), &d) == WSAVERNOTSUPPORTED, "WSAStartup(0.9)");
    memset(&d, 0, sizeof d);
    CHECK(WSAStartup(MAKEWORD(1, 1), &d) == 0, "WSAStartup(1.1)");
    CHECK(d.wVersion == MAKEWORD(1, 1) && d.wHighVersion == MAKEWORD(2, 2),
          "versions %#x %#x", d.wVersion, d.wHighVersion);
    CHECK(LOBYTE(d.wHighVersion) == 2 && HIBYTE(d.wHighVersion) == 2, "LOBYTE/HIBYTE");
    CHECK(strncmp(d.szDescription, "portres", 7) == 0, "description %s", d.szDescription);
    CHECK(WSACleanup() == 0, "WSACleanup");
    CHECK(WSAStartup(MAKEWORD(3, 0), &d) == 0 && d.wVersion == MAKEWORD(2, 2),
          "WSAStartup(3.0) gives 2.2: %#x", d.wVersion);
    CHECK(WSACleanup() == 0, "WSACleanup");
}

static void *other_thread(void *arg)
{
    int *seen = arg;
    WSASetLastError(WSAEACCES);
    seen[0] = WSAGetLastError();
    /* A failing libc call is reported too, translated. */
    seen[1] = socket(-5, SOCK_STREAM, 0) == INVALID_SOCKET ? WSAGetLastError() : 0;
    return NULL;
}

static void test_last_error(void)
{
    pthread_t t;
    int seen[2] = { 0, 0 };
    WSASetLastError(WSAEINVAL);
    CHECK(pthread_create(&t, NULL, other_thread, seen) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(seen[0] == WSAEACCES, "other thread's error %d", seen[0]);
    CHECK(seen[1] == WSAEAFNOSUPPORT, "socket(-5) gives %d", seen[1]);
    CHECK(WSAGetLastError() == WSAEINVAL, "this thread's error is its own: %d",
          WSAGetLastError());
    WSASetLastError(5);
    CHECK(WSAGetLastError() == 5, "WSASetLastError(5) round trip: %d", WSAGetLastError());
    WSASetLastError(0);
    CHECK(WSAGetLastError() == 0, "cleared");
    /* libc's bind on something that is not a socket. */
    CHECK(bind4(-1, 0) == WSAENOTSOCK, "bind(-1)");
}

/* ---- SIO_ACQUIRE_PORT_RESERVATION ---- */

static int completion_called;

static void CALLBACK completion(DWORD error, DWORD transferred, LPWSAOVERLAPPED ov, DWORD flags)
{
    (void) error; (void) transferred; (void) ov; (void) flags;
    completion_called = 1;
}

static void test_acquire(void)
{
    INET_PORT_RESERVATION_INSTANCE res, other;
    INET_PORT_RANGE range;
    SOCKET s = tcp4();
    SOCKET u = udp4();
    DWORD n;
    int e;

    /* Wildcard and specific blocks. */
    e = acquire(s, 0, 4, &res);
    CHECK(e == 0, "wildcard acquire: %d", e);
    CHECK(res.NumberOfPorts == 4 && start_of(&res) >= 1024 && res.Token != 0,
          "wildcard block %d+%d token %llu", start_of(&res), res.NumberOfPorts,
          res.Token);
    e = acquire(s, 20000, 3, &other);
    CHECK(e == 0 && other.StartPort == htons(20000)
              && other.NumberOfPorts == 3,
          "specific acquire: %d, %d+%d", e, start_of(&other), other.NumberOfPorts);
    CHECK(other.Token != res.Token, "distinct tokens");

    /* The block is taken: overlapping acquires fail with WSAEADDRINUSE. */
    CHECK(acquire(u, 20000, 3, &other) == 0, "the same block for UDP is another block");
    CHECK(acquire(s, 20002, 2, &other) == WSAEADDRINUSE, "overlap");
    {
        SOCKET l = tcp4();
        int port;
        CHECK(bind4(l, 20050) == 0, "plain bind to 20050");
        port = port_of(l);
        CHECK(port == 20050, "plain bind port %d", port);
        CHECK(acquire(s, 20050, 1, &other) == WSAEADDRINUSE, "a port in use");
        close_(l);
    }

    /* Parameters. */
    CHECK(acquire(s, 20100, 0, &other) == WSAEINVAL, "count 0");
    CHECK(acquire(s, 65535, 2, &other) == WSAEINVAL, "past 65535");

    /* Buffers. */
    range.StartPort = 0;
    range.NumberOfPorts = 1;
    CHECK(IOCTL(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, &other,
                sizeof other - 1, 16) == WSAEINVAL,
          "output buffer too small");
    CHECK(IOCTL(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, NULL,
                sizeof other, 16) == WSAEFAULT,
          "NULL output buffer");
    CHECK(IOCTL(s, SIO_ACQUIRE_PORT_RESERVATION, NULL, sizeof range, &other,
                sizeof other, 16) == WSAEFAULT,
          "NULL input buffer");
    CHECK(IOCTL(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range - 1, &other,
                sizeof other, 16) == WSAEINVAL,
          "input buffer too small");
    CHECK(WSAIoctl(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, &other, sizeof other,
                   NULL, NULL, NULL) == SOCKET_ERROR && WSAGetLastError() == WSAEFAULT,
          "NULL lpcbBytesReturned");

    /* Control codes and sockets. */
    CHECK(IOCTL(s, 0x98000067u, &range, sizeof range, &other, sizeof other, 16) == WSAEOPNOTSUPP,
          "unknown control code");
    {
        SOCKET unx = sock_(AF_UNIX, SOCK_STREAM, 0);
        SOCKET raw = sock_(AF_INET, SOCK_RAW, IPPROTO_UDP);
        int file = open("/dev/null", O_RDONLY);
        CHECK(acquire(unx, 0, 1, &other) == WSAEOPNOTSUPP, "Unix socket");
        CHECK(acquire(raw, 0, 1, &other) == WSAEOPNOTSUPP, "raw socket");
        CHECK(acquire(file, 0, 1, &other) == WSAENOTSOCK, "a file");
        CHECK(acquire(INVALID_SOCKET, 0, 1, &other) == WSAENOTSOCK, "INVALID_SOCKET");
        CHECK(acquire(987654, 0, 1, &other) == WSAENOTSOCK, "a closed descriptor");
        CHECK(closesocket(file) == SOCKET_ERROR && WSAGetLastError() == WSAENOTSOCK,
              "closesocket(a file)");
        CHECK(fcntl(file, F_GETFD) != -1, "closesocket left the file open");
        close(file);
        CHECK(closesocket(INVALID_SOCKET) == SOCKET_ERROR && WSAGetLastError() == WSAENOTSOCK,
              "closesocket(INVALID_SOCKET)");
        close_(unx);
        close_(raw);
    }

    /* Overlapped: completes synchronously; the structure is left alone; a
     * completion routine is not supported. */
    {
        WSAOVERLAPPED ov, pattern;
        memset(&ov, 0xab, sizeof ov);
        memcpy(&pattern, &ov, sizeof ov);
        n = 0;
        CHECK(WSAIoctl(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, &other,
                       sizeof other, &n, &ov, NULL) == 0 && n == 16,
              "overlapped acquire: %d, %u", WSAGetLastError(), n);
        CHECK(memcmp(&ov, &pattern, sizeof ov) == 0, "WSAOVERLAPPED untouched");
        CHECK(release(s, other.Token) == 0, "release");
        n = 7;
        CHECK(WSAIoctl(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, &other,
                       sizeof other, &n, &ov, completion) == SOCKET_ERROR
                  && WSAGetLastError() == WSAEOPNOTSUPP && n == 0,
              "completion routine: %d", WSAGetLastError());
        CHECK(!completion_called, "the completion routine is never called");
    }

    close_(s);
    close_(u);
}

/* ---- SIO_ASSOCIATE_PORT_RESERVATION and bind ---- */

static void test_associate_and_bind(void)
{
    INET_PORT_RESERVATION_INSTANCE tcp, one, udp;
    SOCKET owner = tcp4();
    SOCKET uowner = udp4();
    SOCKET a, b, c;
    int port, e;

    CHECK(acquire(owner, 0, 3, &tcp) == 0, "acquire tcp");
    CHECK(acquire(uowner, 0, 2, &udp) == 0, "acquire udp");

    /* IPv4 and IPv6 sockets bind into the block. */
    a = tcp4();
    CHECK(associate(a, tcp.Token) == 0, "associate");
    CHECK((e = bind4(a, 0)) == 0, "bind: %d", e);
    port = port_of(a);
    CHECK(in_block(port, &tcp), "port %d in %d+3", port, start_of(&tcp));
    b = tcp6();
    CHECK(associate(b, tcp.Token) == 0, "associate v6");
    CHECK((e = bind6(b)) == 0, "bind v6: %d", e);
    CHECK(in_block(port_of(b), &tcp), "v6 port %d", port_of(b));
    {
        SOCKET ub = udp4();
        CHECK(associate(ub, udp.Token) == 0, "associate udp");
        CHECK(bind4(ub, 0) == 0 && in_block(port_of(ub), &udp), "udp port %d", port_of(ub));
        close_(ub);
    }

    /* Other sockets are untouched by the interposed bind. */
    c = tcp4();
    CHECK(bind4(c, 0) == 0, "plain bind");
    port = port_of(c);
    CHECK(port > 0 && !in_block(port, &tcp) && !in_block(port, &udp), "plain port %d", port);
    close_(c);

    /* Errors. */
    c = tcp4();
    CHECK(associate(c, udp.Token) == WSAEINVAL, "a UDP token on a TCP socket");
    CHECK(associate(c, 0) == WSAEINVAL, "token 0");
    CHECK(associate(c, 12345) == WSAEINVAL, "an unknown token");
    CHECK(IOCTL(c, SIO_ASSOCIATE_PORT_RESERVATION, &tcp.Token, sizeof tcp.Token, &one,
                sizeof one, 8) == WSAEINVAL,
          "an output buffer");
    CHECK(IOCTL(c, SIO_ASSOCIATE_PORT_RESERVATION, &tcp.Token, 4, NULL, 0, 8) == WSAEINVAL,
          "a short input buffer");
    CHECK(IOCTL(c, SIO_ASSOCIATE_PORT_RESERVATION, NULL, 8, NULL, 0, 8) == WSAEFAULT,
          "a NULL input buffer");
    CHECK(associate(a, tcp.Token) == WSAEINVAL, "an already bound socket");
    {
        SOCKET unx = sock_(AF_UNIX, SOCK_DGRAM, 0);
        CHECK(associate(unx, tcp.Token) == WSAEOPNOTSUPP, "a Unix socket");
        CHECK(associate(-1, tcp.Token) == WSAENOTSOCK, "not a socket");
        close_(unx);
    }

    /* A specific port on an associated socket is an ordinary bind. */
    CHECK(associate(c, tcp.Token) == 0, "associate");
    CHECK(bind4(c, 20150) == 0 && port_of(c) == 20150, "specific port: %d", port_of(c));
    close_(c);

    /* The block exhausted: bind fails with WSAEADDRINUSE, the association
     * stays, and a freed port is taken again. */
    close_(a);
    close_(b);
    CHECK(acquire(owner, 0, 1, &one) == 0, "acquire 1 port");
    a = tcp4();
    b = tcp4();
    CHECK(associate(a, one.Token) == 0 && associate(b, one.Token) == 0, "associate");
    CHECK(bind4(a, 0) == 0 && port_of(a) == start_of(&one), "the one port");
    CHECK((e = bind4(b, 0)) == WSAEADDRINUSE, "exhausted: %d", e);
    close_(a);
    CHECK((e = bind4(b, 0)) == 0 && port_of(b) == start_of(&one), "freed again: %d", e);
    close_(b);

    /* A released reservation cannot be bound into. */
    c = tcp4();
    CHECK(associate(c, one.Token) == 0, "associate");
    CHECK(release(owner, one.Token) == 0, "release");
    CHECK((e = bind4(c, 0)) == WSAEADDRNOTAVAIL, "released: %d", e);
    close_(c);

    /* The reference page's literal sequence: associate and bind the
     * acquiring socket itself, then release through it. */
    {
        SOCKET sock = tcp4();
        INET_PORT_RESERVATION_INSTANCE r;
        CHECK(acquire(sock, 0, 2, &r) == 0, "acquire");
        CHECK(associate(sock, r.Token) == 0, "associate the acquiring socket");
        CHECK(bind4(sock, 0) == 0 && in_block(port_of(sock), &r), "port %d", port_of(sock));
        CHECK(release(sock, r.Token) == 0, "release");
        close_(sock);
    }

    close_(owner);
    close_(uowner);
}

/* ---- connect, listen, sendto, sendmsg through an association ---- */

/* connect to 127.0.0.1:port or [::1]:port: 0 or the WSA error. */
static int connect_(SOCKET s, int family, int port)
{
    SOCKADDR_INET a;
    memset(&a, 0, sizeof a);
    if (family == AF_INET) {
        a.Ipv4.sin_family = AF_INET;
        a.Ipv4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.Ipv4.sin_port = htons((USHORT) port);
    } else {
        a.Ipv6.sin6_family = AF_INET6;
        a.Ipv6.sin6_addr = in6addr_loopback;
        a.Ipv6.sin6_port = htons((USHORT) port);
    }
    return connect(s, (SOCKADDR *) &a, family == AF_INET ? sizeof a.Ipv4 : sizeof a.Ipv6)
                   == SOCKET_ERROR
               ? WSAGetLastError()
               : 0;
}

/* A plain TCP listener on the loopback address of `family` (its port is
 * an ordinary one, outside any reservation). */
static SOCKET listener(int family, int *port)
{
    SOCKET l = family == AF_INET ? tcp4() : tcp6();
    SOCKADDR_INET a;
    memset(&a, 0, sizeof a);
    if (family == AF_INET) {
        a.Ipv4.sin_family = AF_INET;
        a.Ipv4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        a.Ipv6.sin6_family = AF_INET6;
        a.Ipv6.sin6_addr = in6addr_loopback;
    }
    CHECK(bind(l, (SOCKADDR *) &a, family == AF_INET ? sizeof a.Ipv4 : sizeof a.Ipv6) == 0
              && listen(l, 8) == 0,
          "listener: %d", WSAGetLastError());
    *port = port_of(l);
    return l;
}

static int peer_port(SOCKET s)
{
    SOCKADDR_INET a;
    int len = sizeof a;
    if (getpeername(s, (SOCKADDR *) &a, &len) == SOCKET_ERROR)
        return -1;
    return ntohs(a.si_family == AF_INET ? a.Ipv4.sin_port : a.Ipv6.sin6_port);
}

/* The server side of a connect: the source port it sees. */
static int accepted_from(SOCKET l)
{
    SOCKET a = accept(l, NULL, NULL);
    int port;
    CHECK(a != INVALID_SOCKET, "accept: %d", WSAGetLastError());
    if (a == INVALID_SOCKET)
        return -1;
    port = peer_port(a);
    close_(a);
    return port;
}

/* The source port of the next datagram on `srv`. */
static int datagram_from(SOCKET srv)
{
    char buf[8];
    SOCKADDR_INET from;
    socklen_t len = sizeof from;
    if (recvfrom(srv, buf, sizeof buf, 0, (SOCKADDR *) &from, &len) < 0)
        return -1;
    return ntohs(from.si_family == AF_INET ? from.Ipv4.sin_port : from.Ipv6.sin6_port);
}

static int privileged(int port) { return port >= 600 && port <= 1023; }

static void test_implicit_bind(void)
{
    INET_PORT_RESERVATION_INSTANCE tcp, udp, one;
    SOCKET owner = tcp4();
    SOCKET uowner = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKET l4, l6, c, a, srv, u;
    SOCKADDR_IN to;
    int lport4, lport6, port, e;

    /* The Windows NFS client's sequence: reserve 600-1023 (privileged
     * ports, which NFS servers' default "secure" option requires),
     * associate, connect without binding. */
    CHECK((e = acquire(owner, 600, 424, &tcp)) == 0, "acquire tcp 600-1023: %d", e);
    CHECK((e = acquire(uowner, 600, 424, &udp)) == 0, "acquire udp 600-1023: %d", e);
    l4 = listener(AF_INET, &lport4);
    l6 = listener(AF_INET6, &lport6);
    CHECK(!privileged(lport4) && !privileged(lport6), "listeners on %d, %d", lport4, lport6);

    c = tcp4();
    CHECK(associate(c, tcp.Token) == 0, "associate");
    CHECK((e = connect_(c, AF_INET, lport4)) == 0, "connect: %d", e);
    port = accepted_from(l4);
    CHECK(privileged(port) && port == port_of(c), "the server sees source port %d (%d)", port,
          port_of(c));
    close_(c);

    c = tcp6();
    CHECK(associate(c, tcp.Token) == 0, "associate v6");
    CHECK((e = connect_(c, AF_INET6, lport6)) == 0, "connect v6: %d", e);
    port = accepted_from(l6);
    CHECK(privileged(port) && port == port_of(c), "v6 source port %d", port);
    close_(c);

    /* listen() on an associated, unbound socket listens on a port of the
     * block. */
    c = tcp4();
    CHECK(associate(c, tcp.Token) == 0, "associate");
    CHECK(listen(c, 1) == 0 && privileged(port_of(c)), "listen: %d, port %d", WSAGetLastError(),
          port_of(c));
    close_(c);

    /* UDP: sendto, sendmsg and connect bind into the block. */
    srv = udp4();
    CHECK(bind4(srv, 0) == 0, "udp server");
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons((USHORT) port_of(srv));
    CHECK(!privileged(port_of(srv)), "udp server on %d", port_of(srv));

    u = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(associate(u, udp.Token) == 0, "associate udp");
    CHECK(sendto(u, "x", 1, 0, (SOCKADDR *) &to, sizeof to) == 1, "sendto: %d",
          WSAGetLastError());
    port = datagram_from(srv);
    CHECK(privileged(port) && port == port_of(u), "the receiver sees source port %d", port);
    close_(u);

    u = udp4();
    CHECK(associate(u, udp.Token) == 0, "associate udp");
    {
        struct iovec iov = { (void *) "y", 1 };
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_name = &to;
        m.msg_namelen = sizeof to;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        CHECK(sendmsg(u, &m, 0) == 1, "sendmsg: %d", WSAGetLastError());
    }
    port = datagram_from(srv);
    CHECK(privileged(port) && port == port_of(u), "sendmsg source port %d", port);
    close_(u);

    u = udp4();
    CHECK(associate(u, udp.Token) == 0, "associate udp");
    CHECK((e = connect_(u, AF_INET, port_of(srv))) == 0 && privileged(port_of(u)),
          "udp connect: %d, port %d", e, port_of(u));
    CHECK(send(u, "z", 1, 0) == 1 && datagram_from(srv) == port_of(u), "udp send");
    close_(u);

    /* Sockets never associated keep their ordinary ports. */
    c = tcp4();
    CHECK(connect_(c, AF_INET, lport4) == 0 && !privileged(port_of(c)), "plain connect: %d",
          port_of(c));
    CHECK(!privileged(accepted_from(l4)), "plain source port");
    close_(c);
    u = udp4();
    CHECK(sendto(u, "x", 1, 0, (SOCKADDR *) &to, sizeof to) == 1 && !privileged(port_of(u)),
          "plain sendto: %d", port_of(u));
    CHECK(!privileged(datagram_from(srv)), "plain datagram");
    close_(u);

    /* A send on an unconnected TCP socket, or a connect without an address,
     * fails without using the association up. */
    c = tcp4();
    CHECK(associate(c, tcp.Token) == 0, "associate");
    CHECK(sendto(c, "x", 1, MSG_NOSIGNAL, NULL, 0) == -1 && port_of(c) == 0,
          "tcp send before connect: port %d", port_of(c));
    CHECK(connect(c, NULL, 0) == SOCKET_ERROR && port_of(c) == 0, "connect without an address");
    CHECK(connect_(c, AF_INET, lport4) == 0 && privileged(port_of(c)), "then connect: %d",
          port_of(c));
    CHECK(privileged(accepted_from(l4)), "source port");
    close_(c);

    /* Errors map as for bind, nothing is connected, the association stays:
     * every port bound → WSAEADDRINUSE; released → WSAEADDRNOTAVAIL. */
    CHECK(acquire(owner, 0, 1, &one) == 0, "acquire 1 port");
    a = tcp4();
    CHECK(associate(a, one.Token) == 0 && bind4(a, 0) == 0, "the one port");
    c = tcp4();
    CHECK(associate(c, one.Token) == 0, "associate");
    CHECK((e = connect_(c, AF_INET, lport4)) == WSAEADDRINUSE && port_of(c) == 0
              && peer_port(c) == -1,
          "exhausted: %d", e);
    close_(a);
    CHECK((e = connect_(c, AF_INET, lport4)) == 0 && port_of(c) == start_of(&one),
          "freed again: %d, port %d", e, port_of(c));
    CHECK(accepted_from(l4) == start_of(&one), "source port");
    close_(c);
    c = tcp4();
    CHECK(associate(c, one.Token) == 0, "associate");
    CHECK(release(owner, one.Token) == 0, "release");
    CHECK((e = connect_(c, AF_INET, lport4)) == WSAEADDRNOTAVAIL && port_of(c) == 0,
          "released: %d", e);
    CHECK(listen(c, 1) == SOCKET_ERROR && WSAGetLastError() == WSAEADDRNOTAVAIL,
          "listen, released: %d", WSAGetLastError());
    u = udp4();
    CHECK(acquire(uowner, 0, 1, &one) == 0, "acquire 1 udp port");
    CHECK(associate(u, one.Token) == 0 && release(uowner, one.Token) == 0, "associate, release");
    CHECK(sendto(u, "x", 1, 0, (SOCKADDR *) &to, sizeof to) == -1
              && WSAGetLastError() == WSAEADDRNOTAVAIL && port_of(u) == 0,
          "sendto, released: %d", WSAGetLastError());
    close_(u);
    close_(c);

    close_(srv);
    close_(l4);
    close_(l6);
    close_(owner);
    close_(uowner);
}

/* ---- WSASocket ---- */

static void test_wsasocket(void)
{
    SOCKET s = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKET t = WSASocketA(AF_INET6, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                          WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    SOCKET w = WSASocket(AF_INET, SOCK_STREAM, 0, NULL, 0, 0);
    CHECK(s != INVALID_SOCKET && !(fcntl(s, F_GETFD) & FD_CLOEXEC), "WSASocketW overlapped");
    CHECK(t != INVALID_SOCKET && (fcntl(t, F_GETFD) & FD_CLOEXEC), "WSASocketA no-inherit");
    CHECK(w != INVALID_SOCKET, "WSASocket");
    CHECK(WSASocketW(AF_INET, SOCK_DGRAM, 0, NULL, 0, WSA_FLAG_REGISTERED_IO) == INVALID_SOCKET
              && WSAGetLastError() == WSAEINVAL,
          "an unsupported flag: %d", WSAGetLastError());
    CHECK(WSASocketW(AF_INET, SOCK_DGRAM, 0, NULL, 1, 0) == INVALID_SOCKET
              && WSAGetLastError() == WSAEINVAL,
          "a group");
    CHECK(WSASocketW(-5, SOCK_DGRAM, 0, NULL, 0, 0) == INVALID_SOCKET
              && WSAGetLastError() == WSAEAFNOSUPPORT,
          "a bad family: %d", WSAGetLastError());
    close_(s);
    close_(t);
    close_(w);
}

/* ---- WSAIoctl socket controls ---- */

static int sockopt_int(SOCKET s, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(s, level, name, &v, &len) != 0)
        return -2;
    return v;
}

static void test_socket_controls(void)
{
    SOCKET t = tcp4();
    SOCKET u = udp4();
    ULONG on = 1, avail = 0;
    SOCKET base = INVALID_SOCKET;
    USHORT cpu = 0;
    BOOL off = FALSE;
    BYTE byte = 0;
    struct tcp_keepalive ka = { 1, 30000, 5500 };
    DWORD n;
    int e;

    /* FIONBIO, FIONREAD: Linux's own, under Linux's values (the header's)
     * and Windows'. */
    CHECK(IOCTL(t, FIONBIO, &on, sizeof on, NULL, 0, 0) == 0
              && (fcntl(t, F_GETFL) & O_NONBLOCK),
          "FIONBIO on");
    on = 0;
    CHECK(IOCTL(t, FIONBIO, &on, sizeof on, NULL, 0, 0) == 0
              && !(fcntl(t, F_GETFL) & O_NONBLOCK),
          "FIONBIO off");
    on = 1;
    CHECK(IOCTL(t, 0x8004667Eu, &on, sizeof on, NULL, 0, 0) == 0
              && (fcntl(t, F_GETFL) & O_NONBLOCK),
          "Windows' FIONBIO");
    {
        u_long mode = 0;
        CHECK(ioctlsocket(t, FIONBIO, &mode) == 0 && !(fcntl(t, F_GETFL) & O_NONBLOCK),
              "ioctlsocket FIONBIO off");
        mode = 1;
        CHECK(ioctlsocket(t, (long) 0x8004667Eu, &mode) == 0 && (fcntl(t, F_GETFL) & O_NONBLOCK),
              "ioctlsocket Windows' FIONBIO on");
        CHECK(ioctlsocket(t, FIONBIO, NULL) == SOCKET_ERROR && WSAGetLastError() == WSAEFAULT,
              "ioctlsocket NULL");
        CHECK(ioctlsocket(t, (long) 0x40047307u /* Windows' SIOCATMARK */, &mode)
                      == SOCKET_ERROR
                  && WSAGetLastError() == WSAEOPNOTSUPP,
              "ioctlsocket SIOCATMARK");
        CHECK(ioctlsocket(-1, FIONBIO, &mode) == SOCKET_ERROR && WSAGetLastError() == WSAENOTSOCK,
              "ioctlsocket on no socket");
    }
    CHECK(IOCTL(t, FIONBIO, NULL, 4, NULL, 0, 0) == WSAEFAULT, "FIONBIO without input");
    CHECK(bind4(u, 0) == 0, "bind");
    {
        SOCKADDR_IN self;
        u_long pending = 0;
        memset(&self, 0, sizeof self);
        self.sin_family = AF_INET;
        self.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        self.sin_port = htons((USHORT) port_of(u));
        CHECK(sendto(u, "abc", 3, 0, (SOCKADDR *) &self, sizeof self) == 3, "sendto self");
        CHECK(ioctlsocket(u, FIONREAD, &pending) == 0 && pending == 3, "ioctlsocket FIONREAD");
        pending = 0;
        CHECK(IOCTL(u, FIONREAD, NULL, 0, &pending, sizeof pending, 8) == 0 && pending == 3,
              "FIONREAD into a u_long: %lu", pending);
    }
    CHECK(IOCTL(u, 0x4004667Fu, NULL, 0, &avail, sizeof avail, 4) == 0 && avail == 3,
          "Windows' FIONREAD into a ULONG: %u", avail);
    CHECK(IOCTL(u, FIONREAD, NULL, 0, &avail, 2, 4) == WSAEINVAL, "FIONREAD short output");

    /* SIO_BASE_HANDLE: no layered provider, the socket is its own base. */
    CHECK(IOCTL(t, SIO_BASE_HANDLE, NULL, 0, &base, sizeof base, 4) == 0 && base == t,
          "SIO_BASE_HANDLE %d", base);

    /* SIO_KEEPALIVE_VALS: SO_KEEPALIVE, TCP_KEEPIDLE and TCP_KEEPINTVL in
     * whole seconds (rounded up). */
    CHECK(IOCTL(t, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, 0) == 0
              && sockopt_int(t, SOL_SOCKET, SO_KEEPALIVE) == 1
              && sockopt_int(t, IPPROTO_TCP, TCP_KEEPIDLE) == 30
              && sockopt_int(t, IPPROTO_TCP, TCP_KEEPINTVL) == 6,
          "SIO_KEEPALIVE_VALS");
    ka.onoff = 0;
    CHECK(IOCTL(t, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, 0) == 0
              && sockopt_int(t, SOL_SOCKET, SO_KEEPALIVE) == 0,
          "SIO_KEEPALIVE_VALS off");
    CHECK(IOCTL(t, SIO_KEEPALIVE_VALS, &ka, 8, NULL, 0, 0) == WSAEINVAL, "short keepalive");
    CHECK(IOCTL(u, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, 0) == WSAEINVAL,
          "keepalive on UDP");

    /* SIO_CPU_AFFINITY (MsQuic's per-processor sockets): SO_INCOMING_CPU. */
    CHECK((e = IOCTL(u, SIO_CPU_AFFINITY, &cpu, sizeof cpu, NULL, 0, 0)) == 0
              && sockopt_int(u, SOL_SOCKET, SO_INCOMING_CPU) == 0,
          "SIO_CPU_AFFINITY: %d", e);
    CHECK(IOCTL(u, SIO_CPU_AFFINITY, &cpu, 1, NULL, 0, 0) == WSAEINVAL, "short affinity");
    CHECK(IOCTL(u, SIO_CPU_AFFINITY, NULL, 2, NULL, 0, 0) == WSAEFAULT, "NULL affinity");

    /* SIO_UDP_CONNRESET, SIO_UDP_NETRESET, SIO_LOOPBACK_FAST_PATH: nothing
     * to do on Linux; accepted on the sockets they apply to. */
    CHECK(IOCTL(u, SIO_UDP_CONNRESET, &off, sizeof off, NULL, 0, 0) == 0, "SIO_UDP_CONNRESET");
    CHECK(IOCTL(u, SIO_UDP_CONNRESET, &byte, 1, NULL, 0, 0) == 0, "SIO_UDP_CONNRESET, 1 byte");
    CHECK(IOCTL(u, SIO_UDP_NETRESET, &off, sizeof off, NULL, 0, 0) == 0, "SIO_UDP_NETRESET");
    CHECK(IOCTL(t, SIO_UDP_CONNRESET, &off, sizeof off, NULL, 0, 0) == WSAEINVAL,
          "SIO_UDP_CONNRESET on TCP");
    CHECK(IOCTL(u, SIO_UDP_CONNRESET, NULL, 4, NULL, 0, 0) == WSAEFAULT, "NULL input");
    on = 1;
    CHECK(IOCTL(t, SIO_LOOPBACK_FAST_PATH, &on, sizeof on, NULL, 0, 0) == 0,
          "SIO_LOOPBACK_FAST_PATH");
    CHECK(IOCTL(u, SIO_LOOPBACK_FAST_PATH, &on, sizeof on, NULL, 0, 0) == WSAEINVAL,
          "SIO_LOOPBACK_FAST_PATH on UDP");
    n = 7;
    CHECK(WSAIoctl(u, SIO_UDP_CONNRESET, &off, sizeof off, NULL, 0, &n, NULL, completion)
                  == SOCKET_ERROR
              && WSAGetLastError() == WSAEOPNOTSUPP && n == 0,
          "a completion routine");

    /* The rest stays unsupported. */
    {
        char guid[16] = { 0 };
        void *fn = NULL;
        CHECK(IOCTL(t, SIO_GET_EXTENSION_FUNCTION_POINTER, guid, sizeof guid, &fn, sizeof fn, 0)
                  == WSAEOPNOTSUPP,
              "SIO_GET_EXTENSION_FUNCTION_POINTER");
        CHECK(IOCTL(t, SIO_TCP_INFO, guid, 4, guid, sizeof guid, 0) == WSAEOPNOTSUPP,
              "SIO_TCP_INFO");
    }
    close_(t);
    close_(u);
}

/* ---- SIO_RELEASE_PORT_RESERVATION ---- */

static void test_release(void)
{
    INET_PORT_RESERVATION_INSTANCE r;
    SOCKET s = tcp4();
    SOCKET t = tcp4();
    CHECK(acquire(s, 20200, 2, &r) == 0, "acquire");
    CHECK(IOCTL(s, SIO_RELEASE_PORT_RESERVATION, &r.Token, 4, NULL, 0, 8) == WSAEINVAL,
          "short input");
    CHECK(IOCTL(s, SIO_RELEASE_PORT_RESERVATION, NULL, 8, NULL, 0, 8) == WSAEFAULT,
          "NULL input");
    CHECK(IOCTL(s, SIO_RELEASE_PORT_RESERVATION, &r.Token, 8, &r, sizeof r, 8) == WSAEINVAL,
          "an output buffer");
    CHECK(release(s, 0) == WSAEINVAL, "token 0");
    CHECK(release(s, r.Token) == 0, "release");
    CHECK(release(s, r.Token) == WSAEINVAL, "released twice");
    CHECK(acquire(t, 20200, 2, &r) == 0, "the block is free again");
    /* Released through another socket of the process. */
    CHECK(release(s, r.Token) == 0, "release via another socket");
    close_(s);
    close_(t);
}

/* ---- lifetimes ---- */

static void test_lifetimes(void)
{
    INET_PORT_RESERVATION_INSTANCE r, w;
    WSADATA d;
    SOCKET a, b, c;
    int fd, port;

    /* closesocket ends the socket's reservations before returning. */
    a = tcp4();
    CHECK(acquire(a, 21000, 2, &r) == 0, "acquire");
    b = tcp4();
    CHECK(acquire(b, 21000, 2, &r) == WSAEADDRINUSE, "held");
    close_(a);
    CHECK(acquire(b, 21000, 2, &r) == 0, "free once closesocket returned");
    close_(b);

    /* Plain close(): the association is not inherited by the next socket
     * that gets the same descriptor number, and the reservation ends at the
     * next WSAIoctl. */
    a = tcp4();
    CHECK(acquire(a, 0, 2, &w) == 0, "acquire");
    b = tcp4();
    CHECK(associate(b, w.Token) == 0, "associate");
    fd = b;
    close(b);
    c = tcp4();
    CHECK(c == fd, "descriptor %d reused (%d)", fd, c);
    CHECK(bind4(c, 0) == 0, "bind");
    port = port_of(c);
    CHECK(port > 0 && !in_block(port, &w), "a new socket on an old number binds normally: %d",
          port);
    close_(c);
    CHECK(acquire(a, 21100, 1, &r) == 0, "acquire");
    close(a);
    b = tcp4();
    CHECK(acquire(b, 21100, 1, &r) == 0, "the closed socket's reservation ended");
    close_(b);

    /* The final WSACleanup ends every runtime reservation. */
    a = tcp4();
    CHECK(acquire(a, 21200, 1, &r) == 0, "acquire");
    CHECK(WSACleanup() == 0, "WSACleanup");
    CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
    b = tcp4();
    CHECK(acquire(b, 21200, 1, &r) == 0, "free after WSACleanup");
    close_(a);
    close_(b);
}

/* ---- threads and fork ---- */

static void *worker(void *arg)
{
    int *bad = arg;
    for (int i = 0; i < 20; i++) {
        INET_PORT_RESERVATION_INSTANCE r;
        SOCKET s = tcp4(), a = tcp4();
        if (acquire(s, 0, 2, &r) != 0 || associate(a, r.Token) != 0 || bind4(a, 0) != 0
            || !in_block(port_of(a), &r))
            (*bad)++;
        if (closesocket(a) != 0 || closesocket(s) != 0)
            (*bad)++;
    }
    return NULL;
}

static void test_threads_and_fork(void)
{
    pthread_t t[4];
    int bad[4] = { 0, 0, 0, 0 };
    INET_PORT_RESERVATION_INSTANCE r, other;
    SOCKET s, o;
    pid_t child;
    int status = -1;

    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, worker, &bad[i]) == 0, "pthread_create");
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(bad[i] == 0, "thread %d: %d failures", i, bad[i]);
    }

    /* A forked child does not own the parent's reservations: its
     * closesocket closes its copy of the socket and nothing else. */
    s = tcp4();
    CHECK(acquire(s, 21400, 1, &r) == 0, "acquire");
    fflush(stdout);
    child = fork();
    if (child == 0) {
        int ok = closesocket(s) == 0;
        SOCKET c = tcp4();
        ok = ok && acquire(c, 21400, 1, &other) == WSAEADDRINUSE;
        ok = ok && acquire(c, 21401, 1, &other) == 0;
        ok = ok && closesocket(c) == 0;
        _exit(ok ? 0 : 1);
    }
    CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status)
              && WEXITSTATUS(status) == 0,
          "child: status %d", status);
    o = tcp4();
    CHECK(acquire(o, 21400, 1, &other) == WSAEADDRINUSE, "still held by the parent");
    CHECK(acquire(o, 21401, 1, &other) == 0, "the child's own reservation ended");
    close_(s);
    close_(o);
}

/* ---- persistent reservations, as an administrator ---- */

static void test_persistent_admin(void)
{
    ULONG64 token = 0, found = 0, utoken = 0;
    INET_PORT_RESERVATION_INSTANCE r;
    SOCKET s, l;
    ULONG st;

    st = CreatePersistentTcpPortReservation(htons(22000), 5, &token);
    CHECK(st == NO_ERROR && token != 0, "create: %u", st);
    st = CreatePersistentTcpPortReservation(htons(22004), 2, &found);
    CHECK(st == ERROR_SHARING_VIOLATION, "overlap: %u", st);
    l = tcp4();
    CHECK(bind4(l, 22100) == 0, "plain bind");
    st = CreatePersistentTcpPortReservation(htons(22100), 1, &found);
    CHECK(st == ERROR_SHARING_VIOLATION, "a port in use: %u", st);
    close_(l);
    CHECK(CreatePersistentTcpPortReservation(0, 5, &found) == ERROR_INVALID_PARAMETER, "start 0");
    CHECK(CreatePersistentTcpPortReservation(htons(22200), 0, &found) == ERROR_INVALID_PARAMETER,
          "count 0");
    CHECK(CreatePersistentTcpPortReservation(htons(65535), 2, &found) == ERROR_INVALID_PARAMETER,
          "past 65535");
    CHECK(CreatePersistentTcpPortReservation(htons(22200), 1, NULL) == ERROR_INVALID_PARAMETER,
          "NULL token");

    st = LookupPersistentTcpPortReservation(htons(22000), 5, &found);
    CHECK(st == NO_ERROR && found == token, "lookup: %u", st);
    CHECK(LookupPersistentTcpPortReservation(htons(22000), 4, &found) == ERROR_NOT_FOUND,
          "lookup of another block");
    CHECK(LookupPersistentTcpPortReservation(htons(22000), 5, NULL) == ERROR_INVALID_PARAMETER,
          "lookup NULL");
    CHECK(LookupPersistentUdpPortReservation(htons(22000), 5, &found) == ERROR_NOT_FOUND,
          "no UDP reservation");

    /* The UDP twins. */
    st = CreatePersistentUdpPortReservation(htons(22000), 5, &utoken);
    CHECK(st == NO_ERROR && utoken != 0 && utoken != token, "create udp: %u", st);
    CHECK(LookupPersistentUdpPortReservation(htons(22000), 5, &found) == NO_ERROR
              && found == utoken,
          "lookup udp");

    /* A runtime acquire cannot overlap it. */
    s = tcp4();
    CHECK(acquire(s, 22003, 1, &r) == WSAEADDRINUSE, "runtime over persistent");
    close_(s);

    /* Bind into it. */
    s = tcp4();
    CHECK(associate(s, utoken) == WSAEINVAL, "the UDP token on a TCP socket");
    CHECK(release(s, token) == WSAEINVAL, "releasing a persistent reservation");
    CHECK(associate(s, token) == 0, "associate persistent");
    CHECK(bind4(s, 0) == 0, "bind persistent");
    CHECK(port_of(s) >= 22000 && port_of(s) < 22005, "port %d", port_of(s));
    close_(s);
    s = udp4();
    CHECK(associate(s, utoken) == 0 && bind4(s, 0) == 0
              && port_of(s) >= 22000 && port_of(s) < 22005,
          "udp port %d", port_of(s));
    close_(s);

    CHECK(DeletePersistentUdpPortReservation(htons(22000), 5) == NO_ERROR, "delete udp");
    CHECK(DeletePersistentTcpPortReservation(htons(22000), 4) == ERROR_NOT_FOUND,
          "delete another block");
    CHECK(DeletePersistentTcpPortReservation(htons(22000), 5) == NO_ERROR, "delete");
    CHECK(DeletePersistentTcpPortReservation(htons(22000), 5) == ERROR_NOT_FOUND, "deleted");
    CHECK(LookupPersistentTcpPortReservation(htons(22000), 5, &found) == ERROR_NOT_FOUND,
          "lookup deleted");
    CHECK(DeletePersistentTcpPortReservation(0, 1) == ERROR_INVALID_PARAMETER, "delete start 0");
    CHECK(DeletePersistentUdpPortReservation(htons(1), 0) == ERROR_INVALID_PARAMETER,
          "delete count 0");
}

/* ---- as an unprivileged user ---- */

static void test_user(int start, ULONG64 persistent, ULONG64 foreign, int owned)
{
    INET_PORT_RESERVATION_INSTANCE r;
    ULONG64 token = 0;
    SOCKET s, a;
    int e;

    CHECK(CreatePersistentTcpPortReservation(htons(24000), 1, &token) == ERROR_ACCESS_DENIED,
          "create");
    CHECK(CreatePersistentUdpPortReservation(htons(24000), 1, &token) == ERROR_ACCESS_DENIED,
          "create udp");
    CHECK(LookupPersistentTcpPortReservation(htons((USHORT) start), 1, &token)
              == ERROR_ACCESS_DENIED,
          "lookup");
    CHECK(DeletePersistentTcpPortReservation(htons((USHORT) start), 1) == ERROR_ACCESS_DENIED,
          "delete");

    s = tcp4();
    CHECK((e = associate(s, persistent)) == WSAEACCES, "associate persistent: %d", e);
    CHECK((e = associate(s, foreign)) == WSAEACCES, "associate foreign: %d", e);
    CHECK((e = release(s, foreign)) == WSAEACCES, "release foreign: %d", e);
    CHECK((e = acquire(s, 100, 1, &r)) == WSAEACCES, "a privileged block: %d", e);
    CHECK((e = acquire(s, 0, 9, &r)) == WSAENOBUFS, "over the quota: %d", e);

    /* What a user may do works. */
    CHECK((e = acquire(s, 0, 2, &r)) == 0, "acquire: %d", e);
    a = tcp4();
    CHECK(associate(a, r.Token) == 0 && bind4(a, 0) == 0 && in_block(port_of(a), &r),
          "bind as a user: %d", port_of(a));
    close_(a);
    close_(s);

    /* A persistent reservation delegated to this user: looked up and bound
     * into without privileges, even below port 1024. */
    CHECK(LookupPersistentTcpPortReservation(htons((USHORT) owned), 1, &token) == NO_ERROR
              && token != 0,
          "lookup of an owned reservation");
    a = tcp4();
    CHECK(bind4(a, owned) == WSAEACCES, "no plain bind to port %d", owned);
    close_(a);
    a = tcp4();
    CHECK(associate(a, token) == 0, "associate an owned reservation");
    CHECK((e = bind4(a, 0)) == 0 && port_of(a) == owned, "bind to %d: %d, port %d", owned, e,
          port_of(a));
    close_(a);
    /* ... and connected from without binding (the NFS client's way). */
    {
        int lport;
        SOCKET l = listener(AF_INET, &lport);
        a = tcp4();
        CHECK(associate(a, token) == 0, "associate an owned reservation");
        CHECK((e = connect_(a, AF_INET, lport)) == 0 && port_of(a) == owned,
              "connect from %d: %d, port %d", owned, e, port_of(a));
        CHECK(accepted_from(l) == owned, "the server sees port %d", owned);
        close_(a);
        close_(l);
    }
}

/* ---- without a daemon ---- */

static void test_nodaemon(void)
{
    INET_PORT_RESERVATION_INSTANCE r;
    ULONG64 token = 0;
    SOCKET s = tcp4();
    int e;
    CHECK((e = acquire(s, 0, 1, &r)) == WSAENETDOWN, "acquire: %d", e);
    CHECK((e = associate(s, 1234)) == WSAENETDOWN, "associate: %d", e);
    CHECK((e = release(s, 1234)) == WSAENETDOWN, "release: %d", e);
    CHECK(CreatePersistentTcpPortReservation(htons(5000), 1, &token) == ERROR_SERVICE_NOT_ACTIVE,
          "create");
    CHECK(LookupPersistentUdpPortReservation(htons(5000), 1, &token) == ERROR_SERVICE_NOT_ACTIVE,
          "lookup");
    CHECK(DeletePersistentTcpPortReservation(htons(5000), 1) == ERROR_SERVICE_NOT_ACTIVE,
          "delete");
    CHECK(bind4(s, 0) == 0 && port_of(s) > 0, "bind still works");
    close_(s);
}

/* ---- under portres exec ---- */

static void test_exec(void)
{
    const char *token = getenv("PORTRES_TOKEN");
    const char *start = getenv("PORTRES_START");
    const char *count = getenv("PORTRES_COUNT");
    SOCKET s;
    int port, e;
    CHECK(token && start && count, "portres exec's variables");
    if (!token || !start || !count)
        return;
    /* The reservation is held by portres exec's session; its capability,
     * inherited through PORTRES_SESSION_FD, lets this process use it. */
    s = tcp4();
    CHECK((e = associate(s, strtoull(token, NULL, 10))) == 0, "associate: %d", e);
    CHECK((e = bind4(s, 0)) == 0, "bind: %d", e);
    port = port_of(s);
    CHECK(port >= atoi(start) && port < atoi(start) + atoi(count), "port %d in %s+%s", port,
          start, count);
    close_(s);
}

/* ---- PortresAcquireAndBind: libportres' one-call acquire + bind ---- */

static int acquire_and_bind4(SOCKET s, const char *ip, INET_PORT_RESERVATION_INSTANCE *res)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return PortresAcquireAndBind(s, (SOCKADDR *) &a, sizeof a, res) == SOCKET_ERROR
               ? WSAGetLastError()
               : 0;
}

static void test_acquire_and_bind(void)
{
    INET_PORT_RESERVATION_INSTANCE r, again;
    struct sockaddr_in6 a6;
    SOCKET s = tcp4(), u = udp4(), v6 = tcp6(), other = tcp4(), bound = tcp4();
    int e;

    CHECK((e = acquire_and_bind4(s, "127.0.0.1", &r)) == 0, "acquire and bind: %d", e);
    CHECK(r.NumberOfPorts == 1 && r.Token != 0 && port_of(s) == start_of(&r),
          "one port, the socket bound to it: %d of %d", port_of(s), start_of(&r));
    CHECK(listen(s, 4) == 0, "listen on it");
    /* The block is reserved: nobody else gets it. */
    CHECK(acquire(other, start_of(&r), 1, &again) == WSAEADDRINUSE, "reserved");
    /* It ends with the socket. */
    close_(s);
    CHECK((e = acquire(other, start_of(&r), 1, &again)) == 0, "released with the socket: %d", e);
    CHECK(release(other, again.Token) == 0, "release");
    CHECK((e = acquire_and_bind4(u, "0.0.0.0", NULL)) == 0 && port_of(u) > 0,
          "UDP, no output wanted: %d", e);
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    CHECK(PortresAcquireAndBind(v6, (SOCKADDR *) &a6, sizeof a6, &r) == 0
              && port_of(v6) == start_of(&r),
          "IPv6: %d", WSAGetLastError());
    /* Refusals leave the socket unbound and nothing reserved. */
    CHECK(bind4(bound, 0) == 0, "bind");
    CHECK((e = acquire_and_bind4(bound, "127.0.0.1", &r)) == WSAEINVAL, "bound socket: %d", e);
    s = tcp4();
    CHECK((e = acquire_and_bind4(s, "192.0.2.1", &r)) == WSAEINVAL, "not our address: %d", e);
    CHECK(port_of(s) == 0, "left unbound: %d", port_of(s));
    CHECK(PortresAcquireAndBind(s, NULL, 0, &r) == SOCKET_ERROR && WSAGetLastError() == WSAEFAULT,
          "NULL name");
    CHECK(PortresAcquireAndBind(-1, NULL, 0, &r) == SOCKET_ERROR
              && WSAGetLastError() == WSAENOTSOCK,
          "not a socket");
    CHECK((e = acquire_and_bind4(s, "127.0.0.1", &r)) == 0, "then it works: %d", e);
    close_(s);
    close_(u);
    close_(v6);
    close_(other);
    close_(bound);
}

/* ---- across a daemon restart ---- */

static void test_restart(void)
{
    INET_PORT_RESERVATION_INSTANCE r;
    ULONG64 token = 0, found = 0, old;
    char line[16];
    SOCKET s = tcp4(), a;
    int e;

    CHECK(CreatePersistentTcpPortReservation(htons(25000), 2, &token) == NO_ERROR, "create");
    CHECK(acquire(s, 0, 1, &r) == 0, "acquire");
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {
        CHECK(0, "no go-ahead on standard input");
        return;
    }
    /* A new daemon: the persistent reservation is back (its token may have
     * changed), the runtime one ended with the old daemon. Both the shared
     * connection and the socket's session reconnect by themselves. */
    e = (int) LookupPersistentTcpPortReservation(htons(25000), 2, &found);
    CHECK(e == NO_ERROR && found != 0, "lookup after the restart: %d", e);
    old = r.Token;
    CHECK((e = acquire(s, 0, 1, &r)) == 0, "acquire on the same socket: %d", e);
    CHECK((e = release(s, old)) == WSAEINVAL, "the old runtime token is gone: %d", e);
    a = tcp4();
    CHECK(associate(a, found) == 0 && bind4(a, 0) == 0
              && port_of(a) >= 25000 && port_of(a) < 25002,
          "bind into the persistent block: %d", port_of(a));
    close_(a);
    close_(s);
    CHECK(DeletePersistentTcpPortReservation(htons(25000), 2) == NO_ERROR, "delete");
}

int main(int argc, char **argv)
{
    WSADATA d;
    const char *mode = argc > 1 ? argv[1] : "";

    if (strcmp(mode, "admin") == 0) {
        test_startup();
        test_last_error();
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
        test_acquire();
        test_associate_and_bind();
        test_implicit_bind();
        test_wsasocket();
        test_socket_controls();
        test_release();
        test_lifetimes();
        test_threads_and_fork();
        test_persistent_admin();
        test_acquire_and_bind();
        CHECK(WSACleanup() == 0, "WSACleanup");
    } else if (strcmp(mode, "user") == 0 && argc == 6) {
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
        test_user(atoi(argv[2]), strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                  atoi(argv[5]));
        CHECK(WSACleanup() == 0, "WSACleanup");
    } else if (strcmp(mode, "nodaemon") == 0) {
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
        test_nodaemon();
        CHECK(WSACleanup() == 0, "WSACleanup");
    } else if (strcmp(mode, "restart") == 0) {
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
        test_restart();
        CHECK(WSACleanup() == 0, "WSACleanup");
    } else if (strcmp(mode, "exec") == 0) {
        CHECK(WSAStartup(MAKEWORD(2, 2), &d) == 0, "WSAStartup");
        test_exec();
        CHECK(WSACleanup() == 0, "WSACleanup");
    } else {
        printf("usage: %s admin | user START TOKEN FOREIGN OWNED | nodaemon | exec | restart\n",
               argv[0]);
        return 2;
    }
    printf("conformance: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
