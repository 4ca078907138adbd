/*
 * examples/c/persistent_reservation.c: a persistent TCP port reservation,
 * the way the CreatePersistentTcpPortReservation reference page's example
 * does it on Windows: create the reservation, associate a socket with it,
 * bind the socket to port 0, read the port with getsockname, close the
 * socket, delete the reservation. Must run as an administrator of the
 * portres daemon (root for the system daemon).
 *
 * The page's program itself ports with the README's edits alone
 * (examples/c/port-from-windows.sed; the test suite builds and runs it as
 * it is). This version is a cleaned-up C rendering of it and differs
 * beyond those edits in:
 * - an added step: the token is also looked up with
 *   LookupPersistentTcpPortReservation and compared with the one created;
 * - the error codes printed with %lu and the token with %llu (the page:
 *   %ld, %I64d), `resToken` initialised with 0 rather than { 0 };
 * - the UNICODE/WIN32_LEAN_AND_MEAN defines dropped, the missing newline
 *   of the usage text added, C comments, WSACleanup called once at the end
 *   (the page calls it only when closesocket fails);
 * - a non-zero exit status when any step fails (the page carries on and
 *   returns 0 after a failed WSAStartup, associate, bind or getsockname),
 *   so that the test suite can rely on it.
 * Build:
 *     cc persistent_reservation.c -I include -L target/release -lportres
 * Usage: persistent_reservation <StartingPort> <NumberOfPorts>
 *     e.g. persistent_reservation 5000 20
 */
#include <portres/winsock.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int startPort = 0;          /* host byte order */
    int numPorts = 0;
    USHORT startPortns = 0;     /* network byte order */
    ULONG64 resToken = 0;
    ULONG64 lookedUp = 0;

    unsigned long status = 0;

    WSADATA wsaData = { 0 };
    int iResult = 0;
    int exitCode = 0;

    SOCKET sock = INVALID_SOCKET;
    int iFamily = AF_INET;
    int iType = SOCK_STREAM;
    int iProtocol = IPPROTO_TCP;

    DWORD bytesReturned = 0;

    /* sockaddr_in works only with AF_INET; AF_INET6 needs sockaddr_in6. */
    sockaddr_in service;
    sockaddr_in sockName;
    int nameLen = sizeof(sockName);

    if (argc != 3) {
        printf("usage: %s <Starting Port> <Number of Ports>\n", argv[0]);
        printf("Creates a persistent TCP port reservation\n");
        printf("Example usage:\n");
        printf("   %s 5000 20\n", argv[0]);
        printf("   where StartPort=5000 NumPorts=20\n");
        return 1;
    }

    startPort = atoi(argv[1]);
    if (startPort < 0 || startPort > 65535) {
        printf("Starting point must be either 0 or between 1 and 65,535\n");
        return 1;
    }
    startPortns = htons((USHORT) startPort);

    numPorts = atoi(argv[2]);
    if (numPorts < 0) {
        printf("Number of ports must be a positive number\n");
        return 1;
    }

    status = CreatePersistentTcpPortReservation((USHORT) startPortns, (USHORT) numPorts,
                                                &resToken);
    if (status != NO_ERROR) {
        printf("CreatePersistentTcpPortReservation returned error: %lu\n", status);
        return 1;
    }
    printf("CreatePersistentTcpPortReservation call succeeded\n");
    printf("  Token = %llu\n", resToken);

    status = LookupPersistentTcpPortReservation((USHORT) startPortns, (USHORT) numPorts,
                                                &lookedUp);
    if (status != NO_ERROR) {
        printf("LookupPersistentTcpPortReservation returned error: %lu\n", status);
        exitCode = 1;
    } else {
        printf("LookupPersistentTcpPortReservation call succeeded\n");
        printf("  Token = %llu\n", lookedUp);
        if (lookedUp != resToken) {
            printf("  ... but it differs from the token created\n");
            exitCode = 1;
        }
    }

    iResult = WSAStartup(MAKEWORD(2, 2), &wsaData);
    if (iResult != 0) {
        printf("WSAStartup failed with error = %d\n", iResult);
        exitCode = 1;
    }

    sock = socket(iFamily, iType, iProtocol);
    if (sock == INVALID_SOCKET) {
        printf("socket function failed with error = %d\n", WSAGetLastError());
        exitCode = 1;
    } else {
        printf("socket function succeeded\n");

        iResult = WSAIoctl(sock, SIO_ASSOCIATE_PORT_RESERVATION, (LPVOID) &resToken,
                           sizeof(ULONG64), NULL, 0, &bytesReturned, NULL, NULL);
        if (iResult != 0) {
            printf("WSAIoctl(SIO_ASSOCIATE_PORT_RESERVATION) failed with error = %d\n",
                   WSAGetLastError());
            exitCode = 1;
        } else {
            printf("WSAIoctl(SIO_ASSOCIATE_PORT_RESERVATION) succeeded, bytesReturned = %u\n",
                   bytesReturned);

            service.sin_family = AF_INET;
            service.sin_addr.s_addr = INADDR_ANY;
            service.sin_port = 0;

            iResult = bind(sock, (SOCKADDR *) &service, sizeof(service));
            if (iResult == SOCKET_ERROR) {
                printf("bind failed with error = %d\n", WSAGetLastError());
                exitCode = 1;
            } else {
                printf("bind succeeded\n");
                iResult = getsockname(sock, (SOCKADDR *) &sockName, &nameLen);
                if (iResult == SOCKET_ERROR) {
                    printf("getsockname failed with error = %d\n", WSAGetLastError());
                    exitCode = 1;
                } else {
                    printf("getsockname succeeded\n");
                    printf("Port number allocated = %u\n", ntohs(sockName.sin_port));
                }
            }
        }

        iResult = closesocket(sock);
        if (iResult == SOCKET_ERROR) {
            printf("closesocket failed with error = %d\n", WSAGetLastError());
            exitCode = 1;
        }
    }
    WSACleanup();

    status = DeletePersistentTcpPortReservation((USHORT) startPortns, (USHORT) numPorts);
    if (status != NO_ERROR) {
        printf("DeletePersistentTcpPortReservation returned error: %lu\n", status);
        return 1;
    }
    printf("DeletePersistentTcpPortReservation call succeeded\n");

    return exitCode;
}
