# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_portres_global_optspecs
    string join \n socket= json h/help V/version
end

function __fish_portres_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_portres_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_portres_using_subcommand
    set -l cmd (__fish_portres_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c portres -n "__fish_portres_needs_command" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_needs_command" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_needs_command" -s V -l version -d 'Print version'
complete -c portres -n "__fish_portres_needs_command" -f -a "acquire" -d 'Acquire a runtime reservation and hold it: until SIGINT/SIGTERM and the end of standard input, or as --hold, --pid, --timeout say'
complete -c portres -n "__fish_portres_needs_command" -f -a "exec" -d 'Hold a runtime reservation while a command runs, handing it the ports'
complete -c portres -n "__fish_portres_needs_command" -f -a "release" -d 'Release a runtime reservation (inside `exec`: uses the inherited session capability)'
complete -c portres -n "__fish_portres_needs_command" -f -a "create" -d 'Create a persistent reservation (administrators)'
complete -c portres -n "__fish_portres_needs_command" -f -a "delete" -d 'Delete the persistent reservation of exactly this block (administrators)'
complete -c portres -n "__fish_portres_needs_command" -f -a "lookup" -d 'Show the token of the persistent reservation of exactly this block (administrators and its owner)'
complete -c portres -n "__fish_portres_needs_command" -f -a "list" -d 'List reservations, with the ports bound right now'
complete -c portres -n "__fish_portres_needs_command" -f -a "status" -d 'Show the daemon\'s mode, kernel sync, counts and limits, and who answered on which socket'
complete -c portres -n "__fish_portres_needs_command" -f -a "reload" -d 'Re-read the daemon\'s portres.d files and apply them (administrators; as SIGHUP to portresd)'
complete -c portres -n "__fish_portres_needs_command" -f -a "import-sysctl" -d 'Print net.ipv4.ip_local_reserved_ports as a portres.d file'
complete -c portres -n "__fish_portres_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c portres -n "__fish_portres_using_subcommand acquire" -s s -l start -d 'First port, or the whole block as START-END; 0 or absent: any free block in the kernel\'s dynamic range' -r
complete -c portres -n "__fish_portres_using_subcommand acquire" -s c -l count -d 'How many consecutive ports [default: 1, or the size of START-END]' -r
complete -c portres -n "__fish_portres_using_subcommand acquire" -l label -d 'Free text shown in `list`' -r
complete -c portres -n "__fish_portres_using_subcommand acquire" -l pid -d 'Hold until process PID exits (or a signal); standard input is not read' -r
complete -c portres -n "__fish_portres_using_subcommand acquire" -l timeout -d 'Hold for DURATION (90, 90s, 5m, 1h30m, 500ms; a bare number is seconds), or until a signal; with --pid, whichever comes first' -r
complete -c portres -n "__fish_portres_using_subcommand acquire" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand acquire" -l hold -d 'Hold until SIGINT or SIGTERM; standard input is not read (for `portres acquire ... --hold &` in scripts)'
complete -c portres -n "__fish_portres_using_subcommand acquire" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand acquire" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_using_subcommand exec" -s s -l start -d 'First port, or the whole block as START-END; 0 or absent: any free block in the kernel\'s dynamic range' -r
complete -c portres -n "__fish_portres_using_subcommand exec" -s c -l count -d 'How many consecutive ports [default: 1, or the size of START-END]' -r
complete -c portres -n "__fish_portres_using_subcommand exec" -l label -d 'Free text shown in `list`' -r
complete -c portres -n "__fish_portres_using_subcommand exec" -l listen -d 'Bind one socket per port of the block on ADDRESS (an IP address: 127.0.0.1, ::1, 0.0.0.0, ::) and pass them systemd-style: descriptors 3, 4, … (TCP listening, UDP bound; by port), LISTEN_FDS=N, LISTEN_PID=the command\'s pid, LISTEN_FDNAMES=the ports joined by \':\'' -r
complete -c portres -n "__fish_portres_using_subcommand exec" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand exec" -l persistent -d 'Hand out an existing persistent reservation (you are an administrator or its owner) instead of acquiring one: `exec --persistent PROTOCOL START [COUNT] --listen ADDRESS -- CMD`; needs --listen'
complete -c portres -n "__fish_portres_using_subcommand exec" -l strict-daemon -d 'If the daemon stops while the command runs (the reservation has ended), end the command: SIGTERM, SIGKILL 5 s later, then exit 2'
complete -c portres -n "__fish_portres_using_subcommand exec" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand exec" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_using_subcommand release" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand release" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand release" -s h -l help -d 'Print help'
complete -c portres -n "__fish_portres_using_subcommand create" -l owner -d 'A user (name or uid) or @group (name or gid) who may look it up and bind into it without being an administrator' -r
complete -c portres -n "__fish_portres_using_subcommand create" -l label -d 'Free text shown in `list`' -r
complete -c portres -n "__fish_portres_using_subcommand create" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand create" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand create" -s h -l help -d 'Print help'
complete -c portres -n "__fish_portres_using_subcommand delete" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand delete" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand delete" -s h -l help -d 'Print help'
complete -c portres -n "__fish_portres_using_subcommand lookup" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand lookup" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand lookup" -s h -l help -d 'Print help'
complete -c portres -n "__fish_portres_using_subcommand list" -l kind -d 'Only runtime or only persistent reservations' -r -f -a "runtime\t''
persistent\t''"
complete -c portres -n "__fish_portres_using_subcommand list" -l port -d 'Only the reservation holding port N' -r
complete -c portres -n "__fish_portres_using_subcommand list" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand list" -l mine -d 'Only yours: runtime reservations you hold, persistent ones delegated to you or to one of your groups'
complete -c portres -n "__fish_portres_using_subcommand list" -s w -l wide -d 'Do not shorten anything to fit the terminal'
complete -c portres -n "__fish_portres_using_subcommand list" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_using_subcommand status" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand status" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand status" -s h -l help -d 'Print help'
complete -c portres -n "__fish_portres_using_subcommand reload" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand reload" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand reload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_using_subcommand import-sysctl" -l label -d 'The label of every line [default: "from ip_local_reserved_ports"]' -r
complete -c portres -n "__fish_portres_using_subcommand import-sysctl" -l socket -d 'The daemon\'s socket, used whoever runs the daemon (`status` says who) [env: PORTRES_SOCKET; default: your user daemon\'s socket if one runs and passes the trust checks, else /run/portres/portres.sock]' -r -F
complete -c portres -n "__fish_portres_using_subcommand import-sysctl" -l baseline -d 'The daemon\'s recorded baseline instead of the kernel\'s current value'
complete -c portres -n "__fish_portres_using_subcommand import-sysctl" -l json -d 'Print JSON: one line; a reservation object (see `portres --help`), `list` an array'
complete -c portres -n "__fish_portres_using_subcommand import-sysctl" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "acquire" -d 'Acquire a runtime reservation and hold it: until SIGINT/SIGTERM and the end of standard input, or as --hold, --pid, --timeout say'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "exec" -d 'Hold a runtime reservation while a command runs, handing it the ports'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "release" -d 'Release a runtime reservation (inside `exec`: uses the inherited session capability)'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "create" -d 'Create a persistent reservation (administrators)'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "delete" -d 'Delete the persistent reservation of exactly this block (administrators)'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "lookup" -d 'Show the token of the persistent reservation of exactly this block (administrators and its owner)'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "list" -d 'List reservations, with the ports bound right now'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "status" -d 'Show the daemon\'s mode, kernel sync, counts and limits, and who answered on which socket'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "reload" -d 'Re-read the daemon\'s portres.d files and apply them (administrators; as SIGHUP to portresd)'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "import-sysctl" -d 'Print net.ipv4.ip_local_reserved_ports as a portres.d file'
complete -c portres -n "__fish_portres_using_subcommand help; and not __fish_seen_subcommand_from acquire exec release create delete lookup list status reload import-sysctl help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
