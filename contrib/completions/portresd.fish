complete -c portresd -l socket -d 'Unix socket to listen on [env: PORTRES_SOCKET; default by mode, see above]. Its directory must exist (only the default\'s is created), owned by portresd\'s uid and not writable by others unless sticky' -r -F
complete -c portresd -l state-dir -d 'Directory for the database portres.db [env: PORTRES_STATE_DIR; default by mode]. One portresd per state directory: a second one exits at once, naming the first (portres.lock)' -r -F
complete -c portresd -l kernel-sync -d 'Keep net.ipv4.ip_local_reserved_ports in sync: auto = when writable (root, or a network namespace you own) and no other portresd keeps it in this network namespace, on = refuse to start otherwise, off = never touch it' -r -f -a "auto\t''
on\t''
off\t''"
complete -c portresd -l admin-group -d 'Members of this group (name or gid) may create and delete persistent reservations, besides root' -r
complete -c portresd -l quota -d 'Most runtime ports one user may hold at once, over all sessions (root is exempt)' -r
complete -c portresd -l max-connections -d 'Most client connections at once' -r
complete -c portresd -l max-connections-per-user -d 'Most client connections one (non-root) user may hold at once' -r
complete -c portresd -l workers -d 'Threads serving client connections: "auto" (one per CPU portresd may use) or 1-1024. A connection is served by one worker at a time: the least busy when it connects, then one on the CPU its client runs on (clients say which, see docs/wire.md)' -r
complete -c portresd -l pin-workers -d 'Pin workers round-robin to the CPUs portresd may use (on), or let the kernel place them (off). With pinning, a connection moves to a worker on its client\'s CPU, so a request and its reply rarely cross CPUs' -r -f -a "on\t''
off\t''"
complete -c portresd -l reset-baseline -d 'Record PORTS (kernel list form, e.g. "999,5000-5009"; empty for none) as the admin\'s baseline of the store in --state-dir, print the old and new value, and exit. Without a value: the kernel\'s current list less the store\'s persistent blocks. The baseline is read from the kernel at the first start on a store and kept for good; reset it when that value held blocks of another portres daemon (after a crash, or one on another state directory). Refused while a daemon runs on the state directory: stop it first; its next start writes baseline + persistent blocks. `portres status` and the log at every start say where the baseline came from' -r
complete -c portresd -l portserver -d 'Also serve portpicker\'s portserver protocol on ADDRESS: a socket path (its directory must exist, as for --socket), or @NAME for an abstract socket of this network namespace (portpicker\'s PORTSERVER_ADDRESS form, e.g. @unittest-portserver). Repeatable: one listener per address. Each request "<pid>\\n" is answered "<port>\\n": a port of the dynamic range reserved on both TCP and UDP for process <pid> (the peer itself or a process of its uid; root may name any) until that process exits; refusals get no answer. See docs/wire.md' -r
complete -c portresd -s v -l verbose -d 'Log more (-v: debug, -vv: trace); RUST_LOG overrides'
complete -c portresd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portresd -s V -l version -d 'Print version'
