//! Quick probe (to be grown into the full benchmark).
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use portres::{Client, Protocol};

fn main() {
    if let Some(sock) = std::env::args().nth(1) {
        let c = Client::connect_to(&sock).unwrap();
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(2500) {
            let r = c.acquire(Protocol::Tcp, 0, 1).unwrap();
            let l = r.bind_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
            r.release().unwrap();
            drop(l);
            n += 1;
        }
        println!("{n} ops in 2.5s");
        return;
    }
    portres_kernel::netns::enter_private_netns().expect("netns (run as root)");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let exe = std::env::current_exe().unwrap();
    let portresd = exe.parent().unwrap().join("portresd");
    let mut child = std::process::Command::new(portresd)
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--kernel-sync")
        .arg("on")
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(2));
    }
    {
        let c = Client::connect_to(&sock).unwrap();
        let time = |name: &str, f: &mut dyn FnMut()| {
            let n = 3000;
            let mut v = Vec::new();
            let t0 = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                f();
                v.push(t.elapsed());
            }
            v.sort();
            println!(
                "{name}: mean {:?} p50 {:?} p99 {:?}",
                t0.elapsed() / n,
                v[v.len() / 2],
                v[v.len() * 99 / 100]
            );
        };
        {
            use std::io::{Read, Write};
            let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                loop {
                    if b.read_exact(&mut buf).is_err() {
                        break;
                    }
                    b.write_all(&buf).unwrap();
                }
            });
            let mut buf = [0u8; 16];
            time("raw unix rtt", &mut || {
                a.write_all(&buf.clone()).unwrap();
                a.read_exact(&mut buf).unwrap();
            });
        }
        time("status", &mut || {
            c.status().unwrap();
        });
        time("acquire+release", &mut || {
            c.acquire(Protocol::Tcp, 0, 1).unwrap().release().unwrap();
        });
        time("acquire40000+release", &mut || {
            c.acquire(Protocol::Tcp, 40000, 1)
                .unwrap()
                .release()
                .unwrap();
        });
        let r = c.acquire(Protocol::Tcp, 0, 16).unwrap();
        time("bind", &mut || {
            r.bind_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        });
        time("socket+bind0", &mut || {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        });
    }
    for clients in [1usize, 8] {
        let dur = Duration::from_secs(2);
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let sock = sock.clone();
                std::thread::spawn(move || {
                    let c = Client::connect_to(&sock).unwrap();
                    let mut lat = Vec::new();
                    let start = Instant::now();
                    while start.elapsed() < dur {
                        let t = Instant::now();
                        let r = c.acquire(Protocol::Tcp, 0, 1).unwrap();
                        let l = r.bind_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
                        r.release().unwrap();
                        drop(l);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let n = all.len();
        println!(
            "clients={clients} ops/s={:.0} p50={:?} p99={:?}",
            n as f64 / dur.as_secs_f64(),
            all[n / 2],
            all[n * 99 / 100]
        );
    }
    let _ = child.kill();
}
