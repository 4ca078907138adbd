//! Real-kernel tests of the bind guard (strict mode's cgroup bind hooks).
//!
//! Each test enters a private network namespace (its own thread) and makes
//! a private child cgroup under the cgroup v2 mount,
//! `portres-test-<pid>-<n>`, attaches a fresh guard there — never to the
//! machine's root cgroup — and removes the cgroup afterwards. The binders
//! are forked children that move themselves into a cgroup first: the
//! hooks judge a socket by the cgroup it was created in. Children run
//! only async-signal-safe calls (the test process has many threads), and
//! close every inherited descriptor but their channel at once, so a child
//! of one test never keeps another test's links alive for long. "Binds
//! work again" is polled with a generous deadline all the same.
//!
//! Without root the tests print a SKIPPED line and pass, unless
//! PORTRES_REQUIRE_PRIVILEGED_TESTS=1.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portres_core::{Block, Protocol};
use portres_kernel::bindguard::{
    self, AllowedBinders, BindGuard, CgroupRef, DenyErrno, GuardError,
};
use portres_kernel::netns::enter_private_netns;
use portres_kernel::sock::current_netns_cookie;

const EACCES: i32 = libc::EACCES;

fn require_privileges() -> bool {
    std::env::var_os("PORTRES_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1")
}

/// Enters a private network namespace, or says why the test is skipped.
fn private_netns(test: &str) -> bool {
    match enter_private_netns() {
        Ok(()) => true,
        Err(e) => {
            if require_privileges() {
                panic!(
                    "{test}: cannot enter a private network namespace ({e}) and PORTRES_REQUIRE_PRIVILEGED_TESTS=1"
                );
            }
            eprintln!("SKIPPED {test}: needs root for a private network namespace: {e}");
            false
        }
    }
}

/// A private network namespace, a private cgroup and a loaded guard, or
/// a skip (or a failure under PORTRES_REQUIRE_PRIVILEGED_TESTS=1).
macro_rules! setup_or_skip {
    ($test:literal) => {{
        if !private_netns($test) {
            return;
        }
        match BindGuard::load() {
            Ok(guard) => (guard, TestCgroup::new()),
            Err(e) => {
                if require_privileges() {
                    panic!("{}: cannot load the bind guard: {e}", $test);
                }
                eprintln!("SKIPPED {}: the bind guard cannot load here: {e}", $test);
                return;
            }
        }
    }};
}

// ---------------------------------------------------------------- cgroups

static NEXT_CGROUP: AtomicU32 = AtomicU32::new(0);

/// A cgroup directory this test made; removed (after its sub-cgroups)
/// on drop.
struct TestCgroup {
    path: PathBuf,
    children: Vec<PathBuf>,
}

impl TestCgroup {
    fn new() -> TestCgroup {
        let root = bindguard::cgroup2_mount().expect("cgroup2 mount");
        let n = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("portres-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).expect("create the test cgroup");
        TestCgroup {
            path,
            children: Vec::new(),
        }
    }

    /// A sub-cgroup `rel` (e.g. "a" or "a/b": parents first).
    fn child(&mut self, rel: &str) -> PathBuf {
        let path = self.path.join(rel);
        std::fs::create_dir(&path).expect("create a sub-cgroup");
        self.children.push(path.clone());
        path
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first. A cgroup whose last process was just reaped may
        // still be busy for a moment.
        for path in self.children.iter().rev().chain([&self.path]) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = std::fs::remove_dir(path) {
                if Instant::now() > deadline {
                    eprintln!("cannot remove {}: {e}", path.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------- binders

#[derive(Clone, Copy, Debug)]
enum Addr {
    V4,
    V6,
    Mapped,
    Any6,
    Any4,
}

#[derive(Clone, Copy, Debug)]
struct Attempt {
    protocol: Protocol,
    addr: Addr,
    port: u16,
    reuseaddr: bool,
    reuseport: bool,
    /// An MPTCP socket (IPPROTO_MPTCP) instead of plain TCP.
    mptcp: bool,
}

impl Attempt {
    fn new(protocol: Protocol, addr: Addr, port: u16) -> Attempt {
        Attempt {
            protocol,
            addr,
            port,
            reuseaddr: false,
            reuseport: false,
            mptcp: false,
        }
    }

    fn socket_addr(&self) -> SocketAddr {
        let ip = match self.addr {
            Addr::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Addr::Any4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Addr::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Addr::Mapped => IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            Addr::Any6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// What a forked child does, in order.
#[derive(Clone, Debug)]
enum Step {
    /// Make a socket, set the options, bind; report 0 or the errno.
    Bind(Attempt),
    /// Make an unbound socket of this protocol and family (v6 when true)
    /// and send it to the parent over the channel.
    SendSocket(Protocol, bool),
}

/// Everything a child needs, built before fork (no allocation after).
struct Prepared {
    cgroup_procs: Option<CString>,
    new_netns: bool,
    ids: Option<(u32, u32)>,
    steps: Vec<(Step, socket2::SockAddr)>,
}

/// A forked binder: its channel (a Unix stream socket) and pid.
struct Child {
    pid: libc::pid_t,
    channel: OwnedFd,
}

/// Runs `steps` in a forked child placed in `cgroup` (if any), in a new
/// network namespace (if `new_netns`), as `ids` = (uid, gid) (if any).
fn spawn(cgroup: Option<&Path>, new_netns: bool, ids: Option<(u32, u32)>, steps: &[Step]) -> Child {
    let prepared = Prepared {
        cgroup_procs: cgroup.map(|c| {
            CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
                .expect("no NUL")
        }),
        new_netns,
        ids,
        steps: steps
            .iter()
            .map(|s| {
                let addr = match s {
                    Step::Bind(a) => a.socket_addr(),
                    Step::SendSocket(..) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                };
                (s.clone(), socket2::SockAddr::from(addr))
            })
            .collect(),
    };
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into the live array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: fork in a multi-threaded process: the child calls only
    // async-signal-safe functions (raw system calls through libc) on data
    // prepared before the fork, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: in the child, see child_main.
        unsafe { child_main(&prepared, pair[1]) }
    }
    // SAFETY: pair[0] is ours; pair[1] is the child's end, closed here.
    let channel = unsafe {
        libc::close(pair[1]);
        OwnedFd::from_raw_fd(pair[0])
    };
    Child { pid, channel }
}

/// The forked child. Only async-signal-safe calls; never returns.
///
/// # Safety
/// Must be called only in a freshly forked child, with `channel` its end
/// of the socketpair.
unsafe fn child_main(p: &Prepared, channel: RawFd) -> ! {
    // SAFETY: raw system calls on descriptors and buffers that are live
    // in this child (all prepared before fork); the child is single
    // threaded and exits with _exit, so no Rust state is relied upon.
    unsafe {
        // Keep only the channel, as fd 3: no other test's descriptors
        // (links of other guards) stay alive in this child.
        if libc::dup2(channel, 3) < 0 {
            libc::_exit(101);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        if let Some(procs) = &p.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(102);
            }
            libc::close(fd);
        }
        if p.new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
            libc::_exit(103);
        }
        if let Some((uid, gid)) = p.ids {
            // Raw system calls: glibc's wrappers broadcast to threads.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::_exit(104);
            }
        }
        for (step, addr) in &p.steps {
            match step {
                Step::Bind(a) => {
                    let fd = new_socket(a.protocol, addr.is_ipv6(), a.mptcp);
                    let one: libc::c_int = 1;
                    let opt = |name| {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            name,
                            (&raw const one).cast(),
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    if a.reuseaddr {
                        opt(libc::SO_REUSEADDR);
                    }
                    if a.reuseport {
                        opt(libc::SO_REUSEPORT);
                    }
                    let rc = libc::bind(fd, addr.as_ptr().cast(), addr.len());
                    let result: i32 = if rc == 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                    libc::close(fd);
                    libc::write(3, (&raw const result).cast(), 4);
                }
                Step::SendSocket(protocol, v6) => {
                    let fd = new_socket(*protocol, *v6, false);
                    send_fd(3, fd);
                    libc::close(fd);
                }
            }
        }
        libc::_exit(0)
    }
}

/// socket(2) for `protocol`; -1 is reported by the bind that follows.
///
/// # Safety
/// Async-signal-safe; callable in a forked child.
unsafe fn new_socket(protocol: Protocol, v6: bool, mptcp: bool) -> RawFd {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let ty = match protocol {
        Protocol::Tcp => libc::SOCK_STREAM,
        Protocol::Udp => libc::SOCK_DGRAM,
    };
    let proto = if mptcp { libc::IPPROTO_MPTCP } else { 0 };
    // SAFETY: socket(2) takes no pointers.
    unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) }
}

/// Sends `fd` over the Unix socket `channel` (SCM_RIGHTS, one data byte).
///
/// # Safety
/// Async-signal-safe; callable in a forked child.
unsafe fn send_fd(channel: RawFd, fd: RawFd) {
    let mut space = Cmsg([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = one_byte_iov(&mut byte);
    // SAFETY: the control buffer is 64 aligned bytes, more than
    // CMSG_SPACE(4); the header and descriptor written are within it.
    unsafe {
        let msg = msghdr(&mut iov, &mut space, libc::CMSG_SPACE(4) as usize);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(channel, &msg, 0);
    }
}

/// A control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg([u8; 64]);

fn one_byte_iov(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A msghdr over one iovec and `controllen` bytes of `space`.
/// Async-signal-safe (no allocation).
fn msghdr(iov: &mut libc::iovec, space: &mut Cmsg, controllen: usize) -> libc::msghdr {
    // SAFETY: msghdr is plain data (pointers and integers); all-zero is a
    // valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.0.as_mut_ptr().cast();
    msg.msg_controllen = controllen.min(space.0.len());
    msg
}

impl Child {
    /// The next bind result: 0 or an errno.
    fn result(&self) -> i32 {
        let mut v = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            // SAFETY: reads into the live buffer's remaining bytes.
            let n = unsafe {
                libc::read(
                    self.channel.as_raw_fd(),
                    v[got..].as_mut_ptr().cast(),
                    4 - got,
                )
            };
            assert!(
                n > 0,
                "the child died before reporting (see its exit status)"
            );
            got += n as usize;
        }
        i32::from_ne_bytes(v)
    }

    /// The next socket the child sent.
    fn socket(&self) -> socket2::Socket {
        let mut space = Cmsg([0; 64]);
        let mut byte = [0u8; 1];
        let mut iov = one_byte_iov(&mut byte);
        let mut msg = msghdr(&mut iov, &mut space, 64);
        // SAFETY: the kernel writes at most msg_controllen bytes of
        // control data into `space` and one byte into `byte`; the
        // descriptor read from a SCM_RIGHTS message is new and ours.
        unsafe {
            let n = libc::recvmsg(self.channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            assert_eq!(n, 1, "recvmsg");
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null(), "a descriptor came");
            assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            socket2::Socket::from_raw_fd(fd)
        }
    }

    /// Waits for the child; panics unless it exited 0.
    fn wait(self) {
        let mut status = 0;
        // SAFETY: waits for our own child; writes its status.
        let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(rc, self.pid, "waitpid");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed with status {status:#x} (101 dup2, 102 cgroup.procs, 103 unshare, 104 ids)"
        );
    }
}

/// The results of `attempts`, each bound by a fresh forked child in
/// `cgroup` (one child for all).
fn binds(cgroup: &Path, ids: Option<(u32, u32)>, attempts: &[Attempt]) -> Vec<i32> {
    let steps: Vec<Step> = attempts.iter().copied().map(Step::Bind).collect();
    let child = spawn(Some(cgroup), false, ids, &steps);
    let results = attempts.iter().map(|_| child.result()).collect();
    child.wait();
    results
}

fn bind_one(cgroup: &Path, ids: Option<(u32, u32)>, attempt: Attempt) -> i32 {
    binds(cgroup, ids, &[attempt])[0]
}

/// Polls until a bind of `attempt` from `cgroup` succeeds (links are
/// released when their last descriptor closes; a forked child of another
/// test may hold one for a moment).
fn eventually_binds(cgroup: &Path, attempt: Attempt, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = bind_one(cgroup, None, attempt);
        if r == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: bind still fails with errno {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn every_way(protocol: Protocol, port: u16) -> Vec<Attempt> {
    let mut out = Vec::new();
    for addr in [Addr::V4, Addr::V6, Addr::Mapped, Addr::Any6, Addr::Any4] {
        for (reuseaddr, reuseport) in [(false, false), (true, false), (false, true), (true, true)] {
            out.push(Attempt {
                protocol,
                addr,
                port,
                reuseaddr,
                reuseport,
                mptcp: false,
            });
        }
    }
    out
}

fn cookie() -> u64 {
    current_netns_cookie().expect("netns cookie")
}

fn daemon_only() -> AllowedBinders {
    AllowedBinders {
        tgid: Some(std::process::id()),
        ..Default::default()
    }
}

const BLOCK: (u16, u16) = (40000, 40009);

fn block() -> Block {
    Block::from_range(BLOCK.0, BLOCK.1)
}

// ---------------------------------------------------------------- tests

#[test]
fn probe_says_enforcement_is_possible_as_root() {
    if !private_netns("probe_says_enforcement_is_possible_as_root") {
        return;
    }
    match bindguard::probe() {
        Ok(capable) => {
            assert_eq!(capable.cgroup2, bindguard::cgroup2_mount().expect("mount"));
            assert_eq!(
                capable.deny,
                DenyErrno::Eacces,
                "kernel 6.18 has set_retval"
            );
        }
        Err(e) => {
            assert!(!require_privileges(), "probe failed as root: {e}");
            eprintln!("SKIPPED probe_says_enforcement_is_possible_as_root: {e}");
        }
    }
}

/// Not a test of its own: the body the next test runs as uid 65534.
#[test]
fn probe_child_entry() {
    if std::env::var_os("PORTRES_BINDGUARD_PROBE_CHILD").is_none() {
        return;
    }
    match bindguard::probe() {
        Ok(_) => println!("PROBE-RESULT: ok"),
        Err(e @ GuardError::NotPermitted(_)) => println!("PROBE-RESULT: {e}"),
        Err(e) => println!("PROBE-RESULT: another reason: {e}"),
    }
}

#[test]
fn probe_says_why_not_when_unprivileged() {
    if !private_netns("probe_says_why_not_when_unprivileged") {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .args([
            "--exact",
            "probe_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PORTRES_BINDGUARD_PROBE_CHILD", "1")
        .output()
        .expect("run setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE-RESULT:").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        line.trim_start().starts_with("not permitted")
            && line.contains("CAP_BPF")
            && line.contains("CAP_NET_ADMIN"),
        "{line}"
    );
}

#[test]
fn foreign_binds_into_guarded_ports_get_eacces_every_way() {
    let (mut guard, cg) = setup_or_skip!("foreign_binds_into_guarded_ports_get_eacces_every_way");
    guard.attach(&cg.path).expect("attach");
    let cookie = cookie();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(block(), protocol, cookie, &daemon_only())
            .expect("insert");
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for port in [BLOCK.0, 40005, BLOCK.1] {
            let attempts = every_way(protocol, port);
            let results = binds(&cg.path, None, &attempts);
            for (a, r) in attempts.iter().zip(results) {
                assert_eq!(r, EACCES, "{a:?}");
            }
        }
    }
    // Just outside the block, and port 0: untouched, every way.
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for port in [BLOCK.0 - 1, BLOCK.1 + 1, 0] {
            for a in every_way(protocol, port) {
                // One child per attempt: a successful bind holds nothing
                // after the child closes it, but reuse flags differ.
                assert_eq!(bind_one(&cg.path, None, a), 0, "{a:?}");
            }
        }
    }
    // A TCP block leaves UDP alone.
    let tcp_only = Block::from_range(41000, 41000);
    guard
        .insert(tcp_only, Protocol::Tcp, cookie, &daemon_only())
        .expect("insert");
    assert_eq!(
        bind_one(&cg.path, None, Attempt::new(Protocol::Udp, Addr::V4, 41000)),
        0
    );
    assert_eq!(
        bind_one(&cg.path, None, Attempt::new(Protocol::Tcp, Addr::V4, 41000)),
        EACCES
    );
}

#[test]
fn mptcp_binds_count_as_tcp() {
    let (mut guard, cg) = setup_or_skip!("mptcp_binds_count_as_tcp");
    guard.attach(&cg.path).expect("attach");
    guard
        .insert(block(), Protocol::Tcp, cookie(), &daemon_only())
        .expect("insert");
    for addr in [Addr::V4, Addr::V6, Addr::Any6] {
        let mut a = Attempt::new(Protocol::Tcp, addr, 40006);
        a.mptcp = true;
        let r = bind_one(&cg.path, None, a);
        if r == libc::EPROTONOSUPPORT || r == libc::ENOPROTOOPT || r == libc::EBADF {
            eprintln!("SKIPPED mptcp_binds_count_as_tcp: no MPTCP here (errno {r})");
            return;
        }
        assert_eq!(r, EACCES, "{a:?}");
        a.port = 40010;
        assert_eq!(bind_one(&cg.path, None, a), 0, "outside the block: {a:?}");
    }
}

#[test]
fn the_allowed_tgid_binds_a_socket_made_inside_the_cgroup() {
    let (mut guard, cg) = setup_or_skip!("the_allowed_tgid_binds_a_socket_made_inside_the_cgroup");
    guard.attach(&cg.path).expect("attach");
    let cookie = cookie();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(block(), protocol, cookie, &daemon_only())
            .expect("insert");
    }
    let sends = [
        Step::SendSocket(Protocol::Tcp, false),
        Step::SendSocket(Protocol::Tcp, true),
        Step::SendSocket(Protocol::Udp, false),
        Step::SendSocket(Protocol::Udp, true),
        // The child's own bind of the same kind of socket is refused.
        Step::Bind(Attempt::new(Protocol::Tcp, Addr::V4, 40003)),
    ];
    let child = spawn(Some(&cg.path), false, None, &sends);
    let tcp4 = child.socket();
    let tcp6 = child.socket();
    let udp4 = child.socket();
    let udp6 = child.socket();
    assert_eq!(child.result(), EACCES, "the child's own bind");
    child.wait();
    let v4 = |p| socket2::SockAddr::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
    let v6 = |p| socket2::SockAddr::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p));
    tcp4.bind(&v4(40003)).expect("the daemon binds TCP v4");
    tcp6.bind(&v6(40003)).expect("the daemon binds TCP v6");
    udp4.bind(&v4(40004)).expect("the daemon binds UDP v4");
    udp6.bind(&v6(40004)).expect("the daemon binds UDP v6");
}

#[test]
fn an_owner_uid_binds_port_80_without_privileges() {
    let (mut guard, cg) = setup_or_skip!("an_owner_uid_binds_port_80_without_privileges");
    guard.attach(&cg.path).expect("attach");
    let cookie = cookie();
    let owner = AllowedBinders {
        tgid: Some(std::process::id()),
        uid: Some(65534),
        skip_bind_service_cap: true,
        ..Default::default()
    };
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(Block::from_range(80, 80), protocol, cookie, &owner)
            .expect("insert");
    }
    let nobody = Some((65534, 65534));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for addr in [Addr::V4, Addr::V6, Addr::Any6] {
            let a = Attempt::new(protocol, addr, 80);
            assert_eq!(bind_one(&cg.path, nobody, a), 0, "the owner: {a:?}");
            assert_eq!(
                bind_one(&cg.path, Some((65533, 65533)), a),
                EACCES,
                "another uid: {a:?}"
            );
            assert_eq!(
                bind_one(&cg.path, None, a),
                EACCES,
                "root is not the owner: {a:?}"
            );
        }
        // Without an entry, the kernel's own rule stands: port 81 needs
        // CAP_NET_BIND_SERVICE, which uid 65534 lacks.
        let a = Attempt::new(protocol, Addr::V4, 81);
        assert_eq!(bind_one(&cg.path, nobody, a), EACCES, "{a:?}");
    }
    // A group owner: the primary gid.
    let group = AllowedBinders {
        gid: Some(65534),
        skip_bind_service_cap: true,
        ..Default::default()
    };
    guard
        .insert(Block::from_range(8080, 8080), Protocol::Tcp, cookie, &group)
        .expect("insert");
    let a = Attempt::new(Protocol::Tcp, Addr::V4, 8080);
    assert_eq!(
        bind_one(&cg.path, Some((1000, 65534)), a),
        0,
        "primary gid 65534"
    );
    assert_eq!(
        bind_one(&cg.path, Some((65534, 1000)), a),
        EACCES,
        "another gid"
    );
}

#[test]
fn an_exec_cgroup_and_its_descendants_bind_and_siblings_do_not() {
    let (mut guard, mut cg) =
        setup_or_skip!("an_exec_cgroup_and_its_descendants_bind_and_siblings_do_not");
    let session = cg.child("session");
    let nested = cg.child("session/inner");
    let sibling = cg.child("other");
    guard.attach(&cg.path).expect("attach");
    let cookie = cookie();
    let session_ref = CgroupRef::of_dir(&session).expect("cgroup ref");
    assert_eq!(
        session_ref.level,
        CgroupRef::of_dir(&cg.path).expect("ref").level + 1
    );
    let exec = AllowedBinders {
        tgid: Some(std::process::id()),
        cgroup: Some(session_ref),
        ..Default::default()
    };
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(block(), protocol, cookie, &exec)
            .expect("insert");
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for addr in [Addr::V4, Addr::V6, Addr::Mapped, Addr::Any6] {
            let a = Attempt::new(protocol, addr, 40002);
            assert_eq!(bind_one(&session, None, a), 0, "the session: {a:?}");
            assert_eq!(bind_one(&nested, None, a), 0, "a nested cgroup: {a:?}");
            assert_eq!(bind_one(&sibling, None, a), EACCES, "a sibling: {a:?}");
            assert_eq!(bind_one(&cg.path, None, a), EACCES, "the parent: {a:?}");
        }
    }
}

#[test]
fn another_network_namespace_is_untouched() {
    let (mut guard, cg) = setup_or_skip!("another_network_namespace_is_untouched");
    guard.attach(&cg.path).expect("attach");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(block(), protocol, cookie(), &daemon_only())
            .expect("insert");
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for addr in [Addr::Any4, Addr::Any6] {
            let a = Attempt::new(protocol, addr, 40001);
            let child = spawn(Some(&cg.path), true, None, &[Step::Bind(a)]);
            assert_eq!(child.result(), 0, "in a new netns: {a:?}");
            child.wait();
            assert_eq!(
                bind_one(&cg.path, None, a),
                EACCES,
                "in the guarded netns: {a:?}"
            );
        }
    }
}

#[test]
fn binds_work_again_after_remove_and_after_the_guard_drops() {
    let (mut guard, cg) = setup_or_skip!("binds_work_again_after_remove_and_after_the_guard_drops");
    guard.attach(&cg.path).expect("attach");
    let cookie = cookie();
    guard
        .insert(block(), Protocol::Tcp, cookie, &daemon_only())
        .expect("insert");
    guard
        .insert(block(), Protocol::Udp, cookie, &daemon_only())
        .expect("insert");
    let tcp = Attempt::new(Protocol::Tcp, Addr::V4, 40007);
    let udp = Attempt::new(Protocol::Udp, Addr::V6, 40007);
    assert_eq!(bind_one(&cg.path, None, tcp), EACCES);
    // Removing part, then the whole: absent ports are skipped, not errors.
    let part = guard.remove(Block::from_range(40001, 40002), Protocol::Tcp, cookie);
    assert_eq!(part.expect("remove part"), 2);
    let one = guard.remove(Block::from_range(40005, 40005), Protocol::Tcp, cookie);
    assert_eq!(one.expect("remove one"), 1);
    let rest = guard.remove(block(), Protocol::Tcp, cookie);
    assert_eq!(rest.expect("remove the rest"), 7);
    let again = guard.remove(block(), Protocol::Tcp, cookie);
    assert_eq!(again.expect("remove again"), 0);
    assert!(
        guard
            .allowed(40007, Protocol::Tcp, cookie)
            .expect("lookup")
            .is_none()
    );
    assert_eq!(bind_one(&cg.path, None, tcp), 0, "after remove");
    assert_eq!(
        bind_one(&cg.path, None, udp),
        EACCES,
        "UDP is still guarded"
    );
    assert_eq!(
        guard.allowed(40007, Protocol::Udp, cookie).expect("lookup"),
        Some(daemon_only())
    );
    guard.close();
    eventually_binds(&cg.path, udp, "after the guard closed");
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (0, 0)
    );
}

#[test]
fn binds_work_again_after_the_holding_process_is_killed() {
    let (mut guard, cg) = setup_or_skip!("binds_work_again_after_the_holding_process_is_killed");
    guard.attach(&cg.path).expect("attach");
    guard
        .insert(block(), Protocol::Tcp, cookie(), &daemon_only())
        .expect("insert");
    // A child inherits the guard's descriptors (fork keeps them; the
    // child never execs), then this process lets go of its own: the
    // child is now the only holder, like a daemon.
    // SAFETY: the child only calls pause() until it is killed.
    let holder = unsafe { libc::fork() };
    assert!(holder >= 0, "fork");
    if holder == 0 {
        loop {
            // SAFETY: pause(2) takes nothing; async-signal-safe.
            unsafe { libc::pause() };
        }
    }
    drop(guard);
    let a = Attempt::new(Protocol::Tcp, Addr::V4, 40008);
    assert_eq!(
        bind_one(&cg.path, None, a),
        EACCES,
        "the child still holds the links"
    );
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (1, 1)
    );
    // SAFETY: kills and reaps our own child.
    unsafe {
        libc::kill(holder, libc::SIGKILL);
        libc::waitpid(holder, std::ptr::null_mut(), 0);
    }
    eventually_binds(&cg.path, a, "after SIGKILL of the holder");
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (0, 0)
    );
}

#[test]
fn guards_in_sequence_do_not_stack() {
    let (mut first, cg) = setup_or_skip!("guards_in_sequence_do_not_stack");
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (0, 0)
    );
    first.attach(&cg.path).expect("attach");
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (1, 1)
    );
    assert!(matches!(
        first.attach(&cg.path),
        Err(GuardError::AlreadyAttached(_))
    ));
    // Detach and attach again: still one each, and the entries stayed.
    first
        .insert(block(), Protocol::Tcp, cookie(), &daemon_only())
        .expect("insert");
    first.detach();
    eventually_binds(
        &cg.path,
        Attempt::new(Protocol::Tcp, Addr::V4, 40000),
        "detached",
    );
    first.attach(&cg.path).expect("attach again");
    assert_eq!(
        bindguard::attached_bind_programs(&cg.path).expect("query"),
        (1, 1)
    );
    assert_eq!(
        bind_one(&cg.path, None, Attempt::new(Protocol::Tcp, Addr::V4, 40000)),
        EACCES,
        "attached again"
    );
    drop(first);
    // A restart: a new guard, new links.
    let mut second = BindGuard::load().expect("load again");
    second.attach(&cg.path).expect("attach again");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = bindguard::attached_bind_programs(&cg.path).expect("query");
        if counts == (1, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "programs stacked: {counts:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(second.attached_to(), Some(cg.path.as_path()));
    second
        .insert(block(), Protocol::Udp, cookie(), &daemon_only())
        .expect("insert");
    assert_eq!(
        bind_one(&cg.path, None, Attempt::new(Protocol::Udp, Addr::V4, 40000)),
        EACCES,
        "the second guard enforces"
    );
}

#[test]
fn a_whole_port_space_fits_and_leaves_again() {
    let (guard, _cg) = setup_or_skip!("a_whole_port_space_fits_and_leaves_again");
    let all = Block::from_range(1, 65535);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        guard
            .insert(all, protocol, cookie(), &daemon_only())
            .expect("every port of both protocols fits");
    }
    let last = guard.allowed(65535, Protocol::Udp, cookie());
    assert_eq!(last.expect("lookup"), Some(daemon_only()));
    // Another holder replaces the entries in place.
    let owner = AllowedBinders {
        uid: Some(1000),
        ..Default::default()
    };
    guard
        .insert(
            Block::from_range(8000, 8009),
            Protocol::Tcp,
            cookie(),
            &owner,
        )
        .expect("replace");
    let replaced = guard.allowed(8005, Protocol::Tcp, cookie());
    assert_eq!(replaced.expect("lookup"), Some(owner));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        assert_eq!(
            guard.remove(all, protocol, cookie()).expect("remove"),
            65535
        );
    }
}

#[test]
fn a_failed_attach_names_the_cgroup() {
    let (mut guard, cg) = setup_or_skip!("a_failed_attach_names_the_cgroup");
    let missing = cg.path.join("no-such-cgroup");
    let err = guard.attach(&missing).expect_err("no such directory");
    assert!(err.to_string().contains("no-such-cgroup"), "{err}");
    assert!(guard.attached_to().is_none());
}
