
/* ---- hand-written: crates/portres-c/header/prelude.h ---- */

/* Socket address types under their Windows names. */
typedef struct sockaddr SOCKADDR, *PSOCKADDR, *LPSOCKADDR;
typedef struct sockaddr_in SOCKADDR_IN, *PSOCKADDR_IN, *LPSOCKADDR_IN;
typedef struct sockaddr_in6 SOCKADDR_IN6, *PSOCKADDR_IN6, *LPSOCKADDR_IN6;
typedef struct sockaddr_storage SOCKADDR_STORAGE, *PSOCKADDR_STORAGE;
typedef struct in_addr IN_ADDR;
typedef struct in6_addr IN6_ADDR;
typedef unsigned short ADDRESS_FAMILY;

#if !defined(__cplusplus) && !defined(PORTRES_NO_SOCKADDR_TYPEDEFS)
/*
 * Windows code (C++) names these structures without `struct`; these
 * typedefs let C do the same. Define PORTRES_NO_SOCKADDR_TYPEDEFS before
 * including this header to leave them out.
 */
typedef struct sockaddr sockaddr;
typedef struct sockaddr_in sockaddr_in;
typedef struct sockaddr_in6 sockaddr_in6;
typedef struct sockaddr_storage sockaddr_storage;
#endif

/* Failure returns (the code values are Windows'). */
#define INVALID_SOCKET (-1)
#define SOCKET_ERROR (-1)

/* WSAIoctl control codes of port reservations (_WSAIOW(IOC_VENDOR, 100..102)). */
#define SIO_ACQUIRE_PORT_RESERVATION 0x98000064u
#define SIO_RELEASE_PORT_RESERVATION 0x98000065u
#define SIO_ASSOCIATE_PORT_RESERVATION 0x98000066u

/* Calling-convention and pointer-size keywords: nothing on Linux. */
#ifndef WINAPI
#define WINAPI
#endif
#ifndef CALLBACK
#define CALLBACK
#endif

/* A WORD from two bytes (WSAStartup's version: MAKEWORD(2, 2)), and back. */
#define MAKEWORD(low, high) \
    ((WORD)(((BYTE)((low) & 0xff)) | (((WORD)((BYTE)((high) & 0xff))) << 8)))
#define LOBYTE(w) ((BYTE)((w) & 0xff))
#define HIBYTE(w) ((BYTE)(((w) >> 8) & 0xff))

/* ---- generated from crates/portres-c/src ---- */
