/*
 * examples/c/runtime_reservation.c: a runtime port reservation, the way the
 * SIO_ACQUIRE_PORT_RESERVATION reference page's example does it on
 * Windows: acquire a block on one socket, associate a second socket with
 * the reservation, bind it to port 0, read the port with getsockname,
 * release the reservation, close both sockets.
 *
 * The page's program itself ports with the README's edits alone
 * (examples/c/port-from-windows.sed; the test suite builds and runs it as
 * it is). This version is a cleaned-up C rendering of it and differs
 * beyond those edits in:
 * - the page's bug: it associates and binds the acquiring socket `sock`
 *   and never uses the second socket `sockRes`; here `sockRes` is the one
 *   associated and bound, as the page's text describes;
 * - C's shape of INET_PORT_RESERVATION_INSTANCE (portRes.StartPort,
 *   portRes.NumberOfPorts, portRes.Token as a ULONG64, as the Windows SDK
 *   declares it for C; the page is C++: portRes.Reservation.StartPort),
 *   the token printed with %llu, StartPort converted with ntohs (the page
 *   uses htons, which computes the same);
 * - the unused `status` and the UNICODE/WIN32_LEAN_AND_MEAN defines
 *   dropped, the surplus printf argument and the missing newline of the
 *   usage text fixed, C comments, flatter error handling;
 * - a non-zero exit status when any step fails (the page returns 0 after
 *   most failures), so that the test suite can rely on it.
 * Build:
 *     cc runtime_reservation.c -I include -L target/release -lportres
 * Usage: runtime_reservation <family> <type> <protocol> <StartingPort> <NumberOfPorts>
 *     e.g. runtime_reservation 2 2 17 5000 20    (AF_INET, SOCK_DGRAM, UDP)
 *          runtime_reservation 2 1 6 0 5         (AF_INET, SOCK_STREAM, TCP, any block)
 */
#include <portres/winsock.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int startPort = 0;          /* host byte order */
    int numPorts = 0;
    USHORT startPortns = 0;     /* network byte order */

    INET_PORT_RANGE portRange = { 0 };
    INET_PORT_RESERVATION_INSTANCE portRes = { 0 };

    WSADATA wsaData = { 0 };
    int iResult = 0;
    int exitCode = 0;

    SOCKET sock = INVALID_SOCKET;
    int iFamily = AF_INET;
    int iType = 0;
    int iProtocol = 0;

    SOCKET sockRes = INVALID_SOCKET;

    DWORD bytesReturned = 0;

    /* sockaddr_in works only with AF_INET; AF_INET6 needs sockaddr_in6. */
    sockaddr_in service;
    sockaddr_in sockName;
    int nameLen = sizeof(sockName);

    if (argc != 6) {
        printf("usage: %s <addressfamily> <type> <protocol> <StartingPort> <NumberOfPorts>\n",
               argv[0]);
        printf("Opens a socket for the specified family, type, & protocol\n");
        printf("and then acquires a runtime port reservation for the protocol specified\n");
        printf("%s example usage\n", argv[0]);
        printf("   %s 2 2 17 5000 20\n", argv[0]);
        printf("   where AF_INET=2 SOCK_DGRAM=2 IPPROTO_UDP=17 StartPort=5000 NumPorts=20\n");
        return 1;
    }

    iFamily = atoi(argv[1]);
    iType = atoi(argv[2]);
    iProtocol = atoi(argv[3]);

    startPort = atoi(argv[4]);
    if (startPort < 0 || startPort > 65535) {
        printf("Starting point must be either 0 or between 1 and 65,535\n");
        return 1;
    }
    startPortns = htons((USHORT) startPort);

    numPorts = atoi(argv[5]);
    if (numPorts < 0) {
        printf("Number of ports must be a positive number\n");
        return 1;
    }

    portRange.StartPort = startPortns;
    portRange.NumberOfPorts = (USHORT) numPorts;

    iResult = WSAStartup(MAKEWORD(2, 2), &wsaData);
    if (iResult != 0) {
        printf("WSAStartup failed with error = %d\n", iResult);
        return 1;
    }

    sock = socket(iFamily, iType, iProtocol);
    if (sock == INVALID_SOCKET) {
        printf("socket function failed with error = %d\n", WSAGetLastError());
        WSACleanup();
        return 1;
    }
    printf("socket function succeeded\n");

    iResult = WSAIoctl(sock, SIO_ACQUIRE_PORT_RESERVATION, (LPVOID) &portRange,
                       sizeof(INET_PORT_RANGE), (LPVOID) &portRes,
                       sizeof(INET_PORT_RESERVATION_INSTANCE), &bytesReturned, NULL, NULL);
    if (iResult != 0) {
        printf("WSAIoctl(SIO_ACQUIRE_PORT_RESERVATION) failed with error = %d\n",
               WSAGetLastError());
        closesocket(sock);
        WSACleanup();
        return 1;
    }
    printf("WSAIoctl(SIO_ACQUIRE_PORT_RESERVATION) succeeded, bytesReturned = %u\n",
           bytesReturned);
    printf("  Starting port=%d,  Number of Ports=%d, Token=%llu\n",
           ntohs(portRes.StartPort),
           portRes.NumberOfPorts, portRes.Token);

    /* A second socket takes its port from the reservation. */
    sockRes = socket(iFamily, iType, iProtocol);
    if (sockRes == INVALID_SOCKET) {
        printf("socket function for second socket failed with error = %d\n",
               WSAGetLastError());
        exitCode = 1;
    } else {
        printf("socket function for second socket succeeded\n");

        iResult = WSAIoctl(sockRes, SIO_ASSOCIATE_PORT_RESERVATION,
                           (LPVOID) &portRes.Token, sizeof(ULONG64), NULL, 0,
                           &bytesReturned, NULL, NULL);
        if (iResult != 0) {
            printf("WSAIoctl(SIO_ASSOCIATE_PORT_RESERVATION) failed with error = %d\n",
                   WSAGetLastError());
            exitCode = 1;
        } else {
            printf("WSAIoctl(SIO_ASSOCIATE_PORT_RESERVATION) succeeded, bytesReturned = %u\n",
                   bytesReturned);

            service.sin_family = (ADDRESS_FAMILY) iFamily;
            service.sin_addr.s_addr = INADDR_ANY;
            service.sin_port = 0;

            iResult = bind(sockRes, (SOCKADDR *) &service, sizeof(service));
            if (iResult == SOCKET_ERROR) {
                printf("bind failed with error = %d\n", WSAGetLastError());
                exitCode = 1;
            } else {
                printf("bind succeeded\n");
                iResult = getsockname(sockRes, (SOCKADDR *) &sockName, &nameLen);
                if (iResult == SOCKET_ERROR) {
                    printf("getsockname failed with error = %d\n", WSAGetLastError());
                    exitCode = 1;
                } else {
                    printf("getsockname succeeded\n");
                    printf("Port number allocated = %u\n", ntohs(sockName.sin_port));
                }
            }
        }
    }

    iResult = WSAIoctl(sock, SIO_RELEASE_PORT_RESERVATION, (LPVOID) &portRes.Token,
                       sizeof(ULONG64), NULL, 0, &bytesReturned, NULL, NULL);
    if (iResult != 0) {
        printf("WSAIoctl(SIO_RELEASE_PORT_RESERVATION) failed with error = %d\n",
               WSAGetLastError());
        exitCode = 1;
    } else {
        printf("WSAIoctl(SIO_RELEASE_PORT_RESERVATION) succeeded, bytesReturned = %u\n",
               bytesReturned);
    }

    if (sockRes != INVALID_SOCKET) {
        iResult = closesocket(sockRes);
        if (iResult == SOCKET_ERROR) {
            printf("closesocket for second socket failed with error = %d\n",
                   WSAGetLastError());
            exitCode = 1;
        }
    }
    if (sock != INVALID_SOCKET) {
        iResult = closesocket(sock);
        if (iResult == SOCKET_ERROR) {
            printf("closesocket for first socket failed with error = %d\n",
                   WSAGetLastError());
            exitCode = 1;
        }
    }

    WSACleanup();

    return exitCode;
}
