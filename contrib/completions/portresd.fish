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
complete -c portresd -l enforce -d 'Strict mode: the kernel refuses an explicit bind() into a reserved block (EACCES) to everyone but the daemon, the persistent reservation\'s owner and the exec command holding a runtime one. auto = when the bind hooks can be attached (root or CAP_BPF + CAP_NET_ADMIN, cgroup v2, BPF), else off with a warning; strict = refuse to start otherwise; off = never [env: PORTRES_ENFORCE]' -r -f -a "auto\t''
strict\t''
off\t''"
complete -c portresd -l enforce-cgroup -d 'The cgroup v2 directory strict mode\'s bind hooks attach to: they judge sockets made in it and below [default: the cgroup v2 root, i.e. every process of the machine]. `portres exec` commands run in a cgroup portresd makes below the caller\'s own' -r -F
complete -c portresd -l config-dir -d 'A portres.d directory of declared reservations (*.conf files, one reservation per line); repeat it, lowest precedence first: a file in a later directory replaces the same name in an earlier one, a symlink to /dev/null masks the name. Replaces the defaults (/usr/lib/portres.d /run/portres.d /etc/portres.d; user mode $XDG_CONFIG_HOME/portres.d). Read at start and at SIGHUP or `portres reload`' -r -F
complete -c portresd -s v -l verbose -d 'Log more (-v: debug, -vv: trace); RUST_LOG overrides'
complete -c portresd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c portresd -s V -l version -d 'Print version'
