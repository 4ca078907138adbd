# examples/c/port-from-windows.sed: the README's source changes for porting
# Windows code that uses the port reservation API, as a GNU sed script:
#     sed -E -f examples/c/port-from-windows.sed prog.cpp > prog.c
# Exactly these edits, nothing else (the test suite applies this script to
# the reference pages' example programs, then builds and runs them):
#
# 1. the Windows headers become <portres/winsock.h>; #pragma comment(lib)
#    lines go.
0,/^#include[[:space:]]*<([Ww]indows\.h\.?|winsock2\.h|mstcpip\.h|ws2ipdef\.h|iphlpapi\.h)>/s//#include <portres\/winsock.h>/
/^#include[[:space:]]*<([Ww]indows\.h\.?|winsock2\.h|mstcpip\.h|ws2ipdef\.h|iphlpapi\.h)>/d
/^[[:space:]]*#pragma[[:space:]]+comment[[:space:]]*\([[:space:]]*lib[[:space:]]*,/d
# 2. wmain(int argc, WCHAR **argv) becomes main(int argc, char **argv);
#    wprintf, _wtoi and L"..." become printf, atoi and "..."; %ws becomes
#    %s; %I64d, %I64u (and %I64x) become %lld, %llu (%llx).
s/\<wmain[[:space:]]*\(([^,()]*),[[:space:]]*(WCHAR|wchar_t)[[:space:]]*\*[[:space:]]*\*[[:space:]]*([A-Za-z_][A-Za-z_0-9]*)[[:space:]]*\)/main(\1, char **\3)/
s/\<wprintf\>/printf/g
s/\<_wtoi\>/atoi/g
s/\<L"/"/g
s/%ws/%s/g
s/%I64([diouxX])/%ll\1/g
