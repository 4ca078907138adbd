/*
 * crates/portres-c/tests/c/shapes.c: INET_PORT_RESERVATION_INSTANCE as C
 * code and as C++ code use it. The Windows SDK gives the two languages
 * different shapes and portres/winsock.h mirrors that: C++ names the
 * members (res.Reservation.StartPort, res.Token.Token, &res.Token), C sees
 * them anonymous (res.StartPort, res.NumberOfPorts, res.Token as a
 * ULONG64). Compiled as C and as C++ by crates/portres-tests/tests/c_api.rs
 * (and at every language level the header claims), run against a real
 * daemon: acquires a block, reads it through the language's shape,
 * associates a second socket with the token and binds it into the block.
 * Prints "shapes (C|C++): start=S, count=N, token=T, port=P"; exits 0 if every
 * check held.
 */
#include <portres/winsock.h>

#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
#define LANGUAGE "C++"
#else
#define LANGUAGE "C"
#endif

static int failed;

static void check(int ok, const char *what)
{
    if (!ok) {
        printf("FAIL %s: %s (WSAGetLastError %d)\n", LANGUAGE, what, WSAGetLastError());
        failed = 1;
    }
}

int main(void)
{
    WSADATA wsaData;
    INET_PORT_RANGE range;
    INET_PORT_RESERVATION_INSTANCE res;
    SOCKADDR_IN sin;
    int len = (int) sizeof sin;
    DWORD n = 0;
    SOCKET s, b;
    unsigned start, count, port;
    ULONG64 token, at8;
    LPVOID tokenIn;

    memset(&range, 0, sizeof range);
    memset(&res, 0, sizeof res);
    memset(&sin, 0, sizeof sin);
    range.StartPort = htons(0);
    range.NumberOfPorts = 3;
    check(WSAStartup(MAKEWORD(2, 2), &wsaData) == 0, "WSAStartup");
    s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    check(WSAIoctl(s, SIO_ACQUIRE_PORT_RESERVATION, &range, sizeof range, &res, sizeof res, &n,
                   NULL, NULL) == 0
              && n == sizeof res,
          "acquire");

#ifdef __cplusplus
    /* The SDK's C++ shape. */
    start = ntohs(res.Reservation.StartPort);
    count = res.Reservation.NumberOfPorts;
    token = res.Token.Token;
    tokenIn = &res.Token;
#else
    /* The SDK's C shape: anonymous members, Token a ULONG64. */
    start = ntohs(res.StartPort);
    count = res.NumberOfPorts;
    token = res.Token;
    tokenIn = &res.Token;
    /* Beyond the SDK, C may also name the block as C++ does. */
    check(res.Reservation.StartPort == res.StartPort
              && res.Reservation.NumberOfPorts == res.NumberOfPorts,
          "res.Reservation is the same block");
#endif
    memcpy(&at8, (const char *) &res + 8, sizeof at8);
    check(count == 3 && start >= 1 && token != INVALID_PORT_RESERVATION_TOKEN && at8 == token,
          "the block and the token at offset 8");

    b = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    check(WSAIoctl(b, SIO_ASSOCIATE_PORT_RESERVATION, tokenIn, sizeof(ULONG64), NULL, 0, &n,
                   NULL, NULL) == 0,
          "associate");
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = INADDR_ANY;
    sin.sin_port = 0;
    check(bind(b, (SOCKADDR *) &sin, sizeof sin) == 0, "bind");
    check(getsockname(b, (SOCKADDR *) &sin, &len) == 0, "getsockname");
    port = ntohs(sin.sin_port);
    check(port >= start && port < start + count, "the port is in the block");

    printf("shapes (%s): start=%u, count=%u, token=%llu, port=%u\n", LANGUAGE, start, count,
           (unsigned long long) token, port);
    check(closesocket(b) == 0 && closesocket(s) == 0, "closesocket");
    check(WSACleanup() == 0, "WSACleanup");
    return failed;
}
