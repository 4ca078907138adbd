
/* ---- hand-written: crates/portres-c/header/trailer.h ---- */

typedef INET_PORT_RANGE *PINET_PORT_RANGE;
typedef INET_PORT_RESERVATION *PINET_PORT_RESERVATION;
typedef INET_PORT_RESERVATION_TOKEN *PINET_PORT_RESERVATION_TOKEN;
typedef INET_PORT_RESERVATION_INFORMATION *PINET_PORT_RESERVATION_INFORMATION;

/*
 * A reservation and its token: the output of SIO_ACQUIRE_PORT_RESERVATION
 * (16 bytes, the token at offset 8; StartPort in network byte order).
 * Declared as the Windows SDK (mstcpip.h) declares it: C++ code names the
 * members (res.Reservation.StartPort, res.Token.Token, &res.Token); C code
 * sees them anonymous (res.StartPort, res.NumberOfPorts, and res.Token, a
 * ULONG64). Beyond the SDK, C may also write res.Reservation (the same
 * four bytes), so C++-style code such as the reference page's example
 * compiles as C too.
 */
typedef struct INET_PORT_RESERVATION_INSTANCE {
#ifdef __cplusplus
    INET_PORT_RESERVATION Reservation;
    INET_PORT_RESERVATION_TOKEN Token;
#else
    union {
        struct {
            USHORT StartPort;
            USHORT NumberOfPorts;
        };
        INET_PORT_RESERVATION Reservation;
    };
    ULONG64 Token;
#endif
} INET_PORT_RESERVATION_INSTANCE, *PINET_PORT_RESERVATION_INSTANCE;

/* Windows' layouts, checked at compile time. */
#ifdef __cplusplus
#define PORTRES_STATIC_ASSERT static_assert
#else
#define PORTRES_STATIC_ASSERT _Static_assert
#endif
PORTRES_STATIC_ASSERT(sizeof(INET_PORT_RANGE) == 4, "INET_PORT_RANGE is 4 bytes");
PORTRES_STATIC_ASSERT(sizeof(INET_PORT_RESERVATION_TOKEN) == 8, "the token is 8 bytes");
PORTRES_STATIC_ASSERT(sizeof(INET_PORT_RESERVATION_INSTANCE) == 16,
                      "INET_PORT_RESERVATION_INSTANCE is 16 bytes");
PORTRES_STATIC_ASSERT(offsetof(INET_PORT_RESERVATION_INSTANCE, Token) == 8,
                      "the instance's Token is at offset 8");
#ifdef __cplusplus
PORTRES_STATIC_ASSERT(offsetof(INET_PORT_RESERVATION_INSTANCE, Reservation) == 0,
                      "the instance's Reservation is at offset 0");
#else
PORTRES_STATIC_ASSERT(offsetof(INET_PORT_RESERVATION_INSTANCE, StartPort) == 0 &&
                          offsetof(INET_PORT_RESERVATION_INSTANCE, NumberOfPorts) == 2 &&
                          offsetof(INET_PORT_RESERVATION_INSTANCE, Reservation) == 0 &&
                          sizeof(((INET_PORT_RESERVATION_INSTANCE *)0)->Token) == 8,
                      "the instance's StartPort, NumberOfPorts at 0 and 2, Token a ULONG64");
#endif
PORTRES_STATIC_ASSERT(sizeof(INET_PORT_RESERVATION_INFORMATION) == 4,
                      "INET_PORT_RESERVATION_INFORMATION is 4 bytes");
PORTRES_STATIC_ASSERT(sizeof(OVERLAPPED) == 4 * sizeof(void *) &&
                          offsetof(OVERLAPPED, hEvent) == 3 * sizeof(void *),
                      "OVERLAPPED has Windows' layout (32 bytes on 64-bit)");
PORTRES_STATIC_ASSERT(sizeof(SOCKADDR_INET) == 28, "SOCKADDR_INET is 28 bytes");
#undef PORTRES_STATIC_ASSERT

/* WSASocket: the W or A form, as UNICODE says (both take only NULL protocol
 * information, so they behave alike). */
#ifdef UNICODE
#define WSASocket WSASocketW
#else
#define WSASocket WSASocketA
#endif

/*
 * Winsock passes address lengths as int *, POSIX as socklen_t *: accept
 * both for getsockname() and getpeername(), so Windows code compiles
 * without warnings. Define PORTRES_NO_WINSOCK_COMPAT to leave this out.
 */
#ifndef PORTRES_NO_WINSOCK_COMPAT
#ifdef __cplusplus
static inline int getsockname(SOCKET s, struct sockaddr *name, int *namelen) {
    return ::getsockname(s, name, (socklen_t *)namelen);
}
static inline int getpeername(SOCKET s, struct sockaddr *name, int *namelen) {
    return ::getpeername(s, name, (socklen_t *)namelen);
}
#else
#define PORTRES_SOCKLEN_PTR(p) _Generic((p), int *: (socklen_t *)(p), default: (p))
#define getsockname(s, name, namelen) getsockname((s), (name), PORTRES_SOCKLEN_PTR(namelen))
#define getpeername(s, name, namelen) getpeername((s), (name), PORTRES_SOCKLEN_PTR(namelen))
#endif
#endif

#endif /* PORTRES_WINSOCK_H */
