"""Drives portresd with the official python varlink package's Client, the
way any generic varlink program would, and checks the daemon answers in
varlink's own terms. Run by hardening_proto.rs as
`python client_check.py unix:/path/to/portres.sock`; prints one "ok ..."
line per check and exits non-zero (with a traceback) on the first failure.
"""

import sys

import varlink


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok", what)


def expect_error(call, exc_type, name):
    """Runs `call`, which must raise `exc_type` whose varlink error is `name`;
    returns the error's parameters."""
    try:
        call()
    except exc_type as e:
        check(e.error() == name, "%s raised %s" % (name, type(e).__name__))
        return e.parameters()
    raise AssertionError("expected %s, the call succeeded" % name)


def main(address):
    with varlink.Client(address=address) as client:
        # GetInfo and the interface list.
        interfaces = client.get_interfaces()
        check("io.portres" in interfaces and "org.varlink.service" in interfaces,
              "GetInfo lists io.portres and org.varlink.service")
        check(client.info["url"] == "" or "example.invalid" not in client.info["url"],
              "GetInfo has a real url or none")

        # The IDL of both interfaces parses with the package's own parser.
        service = client.get_interface("org.varlink.service")
        check(service.name == "org.varlink.service",
              "org.varlink.service description parses")
        portres = client.get_interface("io.portres")
        check("Acquire" in portres.members and "Status" in portres.members,
              "io.portres description parses")

        # Typed calls through the parsed interface (replies are checked
        # against the IDL by the package).
        with client.open("io.portres") as con:
            status = con.Status()
            check(status["wire_version"] == 1, "io.portres.Status")
            r = con.Acquire(protocol="tcp", count=2, label="varlink python")["reservation"]
            check(r["count"] == 2 and r["kind"] == "runtime", "io.portres.Acquire")
            listed = con.List()["reservations"]
            check(any(x.get("token") == r["token"] for x in listed), "io.portres.List")
            # "more" on a method that does not stream: exactly one reply.
            replies = list(con.Status(_more=True))
            check(len(replies) == 1 and replies[0]["wire_version"] == 1,
                  "Status with more gets one reply")
            # Bad parameters, refused by the daemon (the package sends them:
            # it checks names, not values).
            params = expect_error(lambda: con.Release(token="0"),
                                  varlink.InvalidParameter, "org.varlink.service.InvalidParameter")
            check(params["parameter"] == "token", "InvalidParameter names token")
            params = expect_error(lambda: con.Acquire(protocol="sctp"),
                                  varlink.InvalidParameter, "org.varlink.service.InvalidParameter")
            check(params["parameter"] == "protocol", "InvalidParameter names protocol")
            con.Release(token=r["token"])
            check(True, "io.portres.Release")

        # A method the daemon does not have: the package knows the
        # interface only as we describe it here, so it sends the call.
        client.add_interface(varlink.Interface(
            "interface io.portres\nmethod Frobnicate() -> ()\n"))
        with client.open("io.portres") as con:
            # varlink 31.0.0 maps MethodNotFound to its base VarlinkError.
            params = expect_error(con.Frobnicate, varlink.VarlinkError,
                                  "org.varlink.service.MethodNotFound")
            check(params["method"] == "io.portres.Frobnicate", "MethodNotFound names the method")

        # An interface the daemon does not serve.
        params = expect_error(lambda: client.open("com.example.nothing"),
                              varlink.InterfaceNotFound, "org.varlink.service.InterfaceNotFound")
        check(params["interface"] == "com.example.nothing", "InterfaceNotFound names the interface")
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
