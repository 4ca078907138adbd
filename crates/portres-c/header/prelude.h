
/* ---- hand-written: crates/portres-c/header/prelude.h ---- */

/*
 * Language levels: C11 or later (the SDK's C shape of
 * INET_PORT_RESERVATION_INSTANCE and OVERLAPPED needs anonymous structure
 * and union members; _Generic and _Static_assert are used below), C++11 or
 * later (static_assert).
 */
#if defined(__cplusplus)
#if __cplusplus < 201103L
#error "portres/winsock.h needs C++11 or later"
#endif
#elif !defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L
#error "portres/winsock.h needs C11 or later (-std=c11, gnu11 or newer)"
#endif

/*
 * Windows' base types, with Windows' widths (LLP64: LONG, ULONG and DWORD
 * are 32 bits, unlike Linux's long). WCHAR is wchar_t, which is 32 bits on
 * Linux (16 on Windows).
 */
typedef unsigned char BYTE, UCHAR, BOOLEAN, *PBYTE, *LPBYTE;
typedef char CHAR;
typedef unsigned short WORD, USHORT, *PUSHORT;
typedef int INT, BOOL, *PBOOL, *LPBOOL;
typedef unsigned int UINT, ULONG, DWORD, *PULONG, *PDWORD, *LPDWORD;
typedef int LONG, HRESULT;
typedef long long LONG64, LONGLONG;
typedef unsigned long long ULONG64, ULONGLONG, UINT64, *PULONG64;
typedef void *PVOID, *LPVOID, *HANDLE;
typedef unsigned long ULONG_PTR, *PULONG_PTR;
typedef wchar_t WCHAR, *PWCHAR, *LPWSTR;
typedef const wchar_t *LPCWSTR;
typedef char *LPSTR;
typedef const char *LPCSTR;
/* Winsock's BSD names, as <sys/types.h> declares them with _DEFAULT_SOURCE
 * (so u_long is 64 bits here, 32 on Windows). */
typedef unsigned char u_char;
typedef unsigned short u_short;
typedef unsigned int u_int;
typedef unsigned long u_long;
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

/* A socket: on Linux, a file descriptor. */
typedef int SOCKET;
/* An event handle of an overlapped operation (unused on Linux). */
typedef HANDLE WSAEVENT;
/* A socket group of WSASocket (only 0, no group, is accepted). */
typedef unsigned int GROUP;
/* WSASocket's protocol information: only NULL is accepted, so the members
 * are not declared. */
typedef struct _WSAPROTOCOL_INFOW WSAPROTOCOL_INFOW, *LPWSAPROTOCOL_INFOW;
typedef struct _WSAPROTOCOL_INFOA WSAPROTOCOL_INFOA, *LPWSAPROTOCOL_INFOA;

/*
 * Anonymous structure members are standard C11 but an extension in C++
 * (GCC and Clang accept them; __extension__ keeps -Wpedantic quiet).
 */
#if defined(__cplusplus) && defined(__GNUC__)
#define PORTRES_ANONYMOUS_STRUCT __extension__ struct
#else
#define PORTRES_ANONYMOUS_STRUCT struct
#endif

/*
 * The overlapped-operation structure, Win64's 32-byte layout. libportres
 * completes every call before it returns and never reads or writes it.
 */
typedef struct _OVERLAPPED {
    ULONG_PTR Internal;
    ULONG_PTR InternalHigh;
    union {
        PORTRES_ANONYMOUS_STRUCT {
            DWORD Offset;
            DWORD OffsetHigh;
        };
        PVOID Pointer;
    };
    HANDLE hEvent;
} OVERLAPPED, *LPOVERLAPPED;
typedef OVERLAPPED WSAOVERLAPPED;
typedef struct _OVERLAPPED *LPWSAOVERLAPPED;

/* Socket address types under their Windows names. */
typedef struct sockaddr SOCKADDR, *PSOCKADDR, *LPSOCKADDR;
typedef struct sockaddr_in SOCKADDR_IN, *PSOCKADDR_IN, *LPSOCKADDR_IN;
typedef struct sockaddr_in6 SOCKADDR_IN6, *PSOCKADDR_IN6, *LPSOCKADDR_IN6;
typedef struct sockaddr_storage SOCKADDR_STORAGE, *PSOCKADDR_STORAGE;
typedef struct in_addr IN_ADDR;
typedef struct in6_addr IN6_ADDR;
typedef unsigned short ADDRESS_FAMILY;

/* An IPv4 or IPv6 socket address (ws2ipdef.h). */
typedef union _SOCKADDR_INET {
    SOCKADDR_IN Ipv4;
    SOCKADDR_IN6 Ipv6;
    ADDRESS_FAMILY si_family;
} SOCKADDR_INET, *PSOCKADDR_INET;

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

/* The token no reservation has. */
#define INVALID_PORT_RESERVATION_TOKEN ((ULONG64)0)

/*
 * WSAIoctl control code construction (winsock2.h). IOC_IN, IOC_OUT and
 * IOC_INOUT are left to Linux's <sys/ioctl.h>, whose values differ
 * (Linux's IOC_IN is Windows' IOC_OUT): build codes with _WSAIOW,
 * _WSAIOR and _WSAIORW, which give Windows' values.
 */
#define IOCPARM_MASK 0x7f
#define IOC_VOID 0x20000000u
#define IOC_UNIX 0x00000000u
#define IOC_WS2 0x08000000u
#define IOC_PROTOCOL 0x10000000u
#define IOC_VENDOR 0x18000000u
#define _WSAIO(x, y) (0x20000000u | (x) | (y))
#define _WSAIOR(x, y) (0x40000000u | (x) | (y))
#define _WSAIOW(x, y) (0x80000000u | (x) | (y))
#define _WSAIORW(x, y) (0xC0000000u | (x) | (y))

/*
 * WSAIoctl control codes. Implemented: the three port reservation codes;
 * SIO_KEEPALIVE_VALS, FIONBIO, FIONREAD, SIO_BASE_HANDLE and
 * SIO_CPU_AFFINITY (each mapped to Linux); SIO_UDP_CONNRESET,
 * SIO_UDP_NETRESET and SIO_LOOPBACK_FAST_PATH (accepted, nothing to do on
 * Linux). Every other code fails with WSAEOPNOTSUPP; the ones below are
 * named so that code using them compiles (see WSAIoctl).
 */
#define SIO_ACQUIRE_PORT_RESERVATION _WSAIOW(IOC_VENDOR, 100)
#define SIO_RELEASE_PORT_RESERVATION _WSAIOW(IOC_VENDOR, 101)
#define SIO_ASSOCIATE_PORT_RESERVATION _WSAIOW(IOC_VENDOR, 102)
#define SIO_KEEPALIVE_VALS _WSAIOW(IOC_VENDOR, 4)
#define SIO_UDP_CONNRESET _WSAIOW(IOC_VENDOR, 12)
#define SIO_UDP_NETRESET _WSAIOW(IOC_VENDOR, 15)
#define SIO_LOOPBACK_FAST_PATH _WSAIOW(IOC_VENDOR, 16)
#define SIO_CPU_AFFINITY _WSAIOW(IOC_VENDOR, 21)
#define SIO_SET_PORT_SHARING_PER_PROC_SOCKET _WSAIOW(IOC_VENDOR, 21)
#define SIO_BASE_HANDLE _WSAIOR(IOC_WS2, 34)
#define SIO_GET_EXTENSION_FUNCTION_POINTER _WSAIORW(IOC_WS2, 6)
#define SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER _WSAIORW(IOC_WS2, 36)
#define SIO_ADDRESS_LIST_QUERY _WSAIOR(IOC_WS2, 22)
#define SIO_ROUTING_INTERFACE_QUERY _WSAIORW(IOC_WS2, 20)
#define SIO_RCVALL _WSAIOW(IOC_VENDOR, 1)
#define SIO_TCP_INFO _WSAIORW(IOC_VENDOR, 39)
/*
 * FIONBIO and FIONREAD are Linux's (<sys/ioctl.h>), so that ioctl() keeps
 * working in the same program; WSAIoctl and ioctlsocket also take
 * Windows' values (0x8004667E, 0x4004667F).
 */

/* Input of SIO_KEEPALIVE_VALS (mstcpip.h): times in milliseconds. */
struct tcp_keepalive {
    ULONG onoff;
    ULONG keepalivetime;
    ULONG keepaliveinterval;
};

/* WSASocket flags. */
#define WSA_FLAG_OVERLAPPED 0x01
#define WSA_FLAG_MULTIPOINT_C_ROOT 0x02
#define WSA_FLAG_MULTIPOINT_C_LEAF 0x04
#define WSA_FLAG_MULTIPOINT_D_ROOT 0x08
#define WSA_FLAG_MULTIPOINT_D_LEAF 0x10
#define WSA_FLAG_ACCESS_SYSTEM_SECURITY 0x40
#define WSA_FLAG_NO_HANDLE_INHERIT 0x80
#define WSA_FLAG_REGISTERED_IO 0x100

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
