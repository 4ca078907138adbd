//! The connection floods of `portres-stress` (`flood`, `unread`,
//! `park-fds`): many connections holding what a client can make the daemon
//! keep (partial requests, unread replies, parked descriptors), each waiting
//! to be killed.

use std::fs::File;
use std::io::Write;

pub(crate) fn flood(n: usize, bytes: usize) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    let socket = std::env::var_os("PORTRES_SOCKET").ok_or("PORTRES_SOCKET unset")?;
    // Room for N descriptors.
    let mut lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current = lim.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, lim);
    let payload = vec![b'x'; bytes];
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = UnixStream::connect(&socket).map_err(|e| format!("connect: {e}"))?;
        if bytes > 0 {
            s.set_write_timeout(Some(Duration::from_secs(5))).ok();
            // A refused connection may be closed before all bytes are in.
            let _ = s.write_all(&payload);
        }
        conns.push(s);
    }
    // Refusals are written at accept: give the daemon a moment, then look.
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for s in &mut conns {
        s.set_nonblocking(true).ok();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf)
            && n > 0
            && String::from_utf8_lossy(&buf[..n]).contains("daemon_unavailable")
        {
            refused += 1;
        }
    }
    println!("opened {} refused {refused}", conns.len());
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}

/// Room for as many descriptors as the hard limit allows.
fn raise_nofile() {
    let mut lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current = lim.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, lim);
}

pub(crate) fn unread(n: usize, bytes: usize) -> Result<(), String> {
    use std::os::unix::net::UnixStream;
    let socket = std::env::var_os("PORTRES_SOCKET").ok_or("PORTRES_SOCKET unset")?;
    raise_nofile();
    // A large reply for a short call: the interface description.
    let call = b"{\"method\":\"org.varlink.service.GetInterfaceDescription\",\"parameters\":{\"interface\":\"io.portres\"}}\0";
    let batch: Vec<u8> = call
        .iter()
        .copied()
        .cycle()
        .take(call.len() * 256)
        .collect();
    let mut conns = Vec::with_capacity(n);
    let mut sent = 0usize;
    for _ in 0..n {
        let s = UnixStream::connect(&socket).map_err(|e| format!("connect: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        conns.push((s, 0usize));
    }
    // Round-robin, so every connection gets its share while the daemon
    // answers into replies nobody reads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut progress = false;
        for (s, done) in &mut conns {
            if *done >= bytes {
                continue;
            }
            let want = batch.len().min(bytes - *done);
            if let Ok(k) = rustix::net::send(&*s, &batch[..want], rustix::net::SendFlags::NOSIGNAL)
                && k > 0
            {
                *done += k;
                sent += k;
                progress = true;
            }
        }
        if conns.iter().all(|(_, d)| *d >= bytes) || std::time::Instant::now() > deadline {
            break;
        }
        if !progress {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    println!("opened {} sent {sent}", conns.len());
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}

pub(crate) fn park_fds(n: usize) -> Result<(), String> {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    let socket = std::env::var_os("PORTRES_SOCKET").ok_or("PORTRES_SOCKET unset")?;
    raise_nofile();
    let files: Vec<File> = (0..4)
        .map(|_| File::open("/dev/null").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(s) = UnixStream::connect(&socket) else {
            break;
        };
        for _ in 0..4 {
            let _ = portres_proto::fdpass::send_with_fds(s.as_fd(), b"{", &fds);
        }
        conns.push(s);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut closed = 0;
    for s in &conns {
        let mut buf = [0u8; 512];
        match rustix::net::recv(s, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => closed += 1,
            Ok(_) => closed += 1, // a parting error: the daemon closes it
            Err(_) => {}
        }
    }
    println!("opened {} closed {closed}", conns.len());
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}
