
/* ---- hand-written: crates/portres-c/header/trailer.h ---- */

typedef INET_PORT_RANGE *PINET_PORT_RANGE;
typedef INET_PORT_RESERVATION *PINET_PORT_RESERVATION;
typedef INET_PORT_RESERVATION_TOKEN *PINET_PORT_RESERVATION_TOKEN;
typedef INET_PORT_RESERVATION_INSTANCE *PINET_PORT_RESERVATION_INSTANCE;

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
#undef PORTRES_STATIC_ASSERT

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
