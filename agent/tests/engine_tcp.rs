//! Established TCP connections kept with `--tcp-established`: a program
//! holding a connection over loopback (IPv4, IPv6, v4-mapped) to this test,
//! with unread bytes in its receive queue and bytes the kernel could not
//! send in its send queue, is dumped and killed; the test writes to it
//! while it is gone (the network lock holds the packets off); after the
//! restore both streams go on byte-exact, with no loss, no repeat and no
//! reset; a restore without the flag is refused naming the connection. A
//! dump that leaves the program running lifts the lock and repair mode,
//! and the connection goes on. A half-closed connection is refused naming
//! the fd, the program running on.

mod engine_util;
use engine_util::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// The program: connects to the port, writes its stream until the kernel
/// takes no more, says "ready" and waits for SIGUSR1 (it is dumped there),
/// then reads and checks the test's stream while writing the rest of its
/// own, and writes "OK n" (or "BAD n") once both are done.
const APP: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char out_byte(unsigned long i) { return (unsigned char)(i * 7 + (i >> 8) + 1); }
static unsigned char in_byte(unsigned long i) { return (unsigned char)(i * 13 + (i >> 9) + 5); }
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
/* Queues larger than one image record, of a size known in advance. */
static void bufs(int s) {
    int b = 131072;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &b, sizeof b);
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &b, sizeof b);
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    const char *fam = argv[1];
    int port = atoi(argv[2]);
    unsigned long total_out = strtoul(argv[3], 0, 10), total_in = strtoul(argv[4], 0, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    int s;
    if (fam[0] == '4' || fam[0] == 'h') {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        s = socket(AF_INET, SOCK_STREAM, 0);
        bufs(s);
        if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 3; }
    } else {
        struct sockaddr_in6 a = {0};
        a.sin6_family = AF_INET6;
        a.sin6_port = htons(port);
        inet_pton(AF_INET6, fam[0] == '6' ? "::1" : "::ffff:127.0.0.1", &a.sin6_addr);
        s = socket(AF_INET6, SOCK_STREAM, 0);
        bufs(s);
        if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 3; }
    }
    if (fam[0] == 'h') {
        shutdown(s, SHUT_WR);
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    }
    fcntl(s, F_SETFL, O_NONBLOCK);
    static unsigned char buf[65536];
    unsigned long op = 0, ip = 0;
    for (;;) {
        size_t n = sizeof buf;
        if (n > total_out - op) n = total_out - op;
        for (size_t k = 0; k < n; k++) buf[k] = out_byte(op + k);
        ssize_t w = write(s, buf, n);
        if (w < 0) {
            /* Full: once no room comes for 300 ms, the peer's window is
               closed and the rest waits in the send queue. */
            struct pollfd p = {s, POLLOUT, 0};
            if (errno == EAGAIN && poll(&p, 1, 300) == 0) break;
            if (errno == EAGAIN) continue;
            printf("write error %d\n", errno);
            return 10;
        }
        op += (unsigned long)w;
        if (op == total_out) { printf("stream too short\n"); return 11; }
    }
    printf("ready %lu\n", op);
    fflush(stdout);
    while (!go) pause();
    int bad = 0;
    while (op < total_out || ip < total_in) {
        struct pollfd p = {s, POLLIN | (op < total_out ? POLLOUT : 0), 0};
        if (poll(&p, 1, -1) < 0) continue;
        if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
            ssize_t r = read(s, buf, sizeof buf);
            if (r == 0) { printf("eof at %lu\n", ip); return 12; }
            if (r < 0 && errno != EAGAIN) { printf("read error %d at %lu\n", errno, ip); return 13; }
            for (ssize_t k = 0; k < r; k++)
                if (!bad && buf[k] != in_byte(ip + k)) { bad = 1; printf("mismatch at %lu\n", ip + k); }
            if (r > 0) ip += (unsigned long)r;
            if (ip > total_in) { printf("too much: %lu\n", ip); return 14; }
        }
        if ((p.revents & POLLOUT) && op < total_out) {
            size_t n = sizeof buf;
            if (n > total_out - op) n = total_out - op;
            for (size_t k = 0; k < n; k++) buf[k] = out_byte(op + k);
            ssize_t w = write(s, buf, n);
            if (w < 0 && errno != EAGAIN) { printf("write error %d at %lu\n", errno, op); return 15; }
            if (w > 0) op += (unsigned long)w;
        }
    }
    char t[64];
    int tn = snprintf(t, sizeof t, "%s %lu\n", bad ? "BAD" : "OK", ip);
    fcntl(s, F_SETFL, 0);
    if (write(s, t, tn) != tn) return 16;
    printf("done\n");
    fflush(stdout);
    while (read(s, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

fn out_byte(i: u64) -> u8 {
    i.wrapping_mul(7)
        .wrapping_add(i >> 8)
        .wrapping_add(1)
        .to_le_bytes()[0]
}

fn in_byte(i: u64) -> u8 {
    i.wrapping_mul(13)
        .wrapping_add(i >> 9)
        .wrapping_add(5)
        .to_le_bytes()[0]
}

const TOTAL_OUT: u64 = 8 << 20;
const TOTAL_IN: u64 = 1 << 20;
/// The test's bytes the program has not read at the dump, and those sent
/// while it is gone.
const BEFORE: u64 = 100_000;
const DURING: u64 = 2000;

/// A listener on loopback of `v6` or IPv4 with a small receive buffer, so
/// the program's stream stops in its own send queue.
fn listener(v6: bool) -> TcpListener {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket calls on a socket this test owns, with buffers
    // of the sizes given.
    unsafe {
        let s = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0, "socket");
        let rb: libc::c_int = 16384;
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const rb).cast(),
            4,
        );
        let rc = if v6 {
            let mut a: libc::sockaddr_in6 = std::mem::zeroed();
            a.sin6_family = u16::try_from(libc::AF_INET6).expect("family");
            a.sin6_addr.s6_addr[15] = 1;
            libc::bind(s, (&raw const a).cast(), 28)
        } else {
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = u16::try_from(libc::AF_INET).expect("family");
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::bind(s, (&raw const a).cast(), 16)
        };
        assert_eq!(rc, 0, "bind");
        assert_eq!(libc::listen(s, 1), 0, "listen");
        TcpListener::from_raw_fd(s)
    }
}

fn nft_tables() -> Option<String> {
    let o = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn write_in(s: &mut TcpStream, from: u64, to: u64) {
    let bytes: Vec<u8> = (from..to).map(in_byte).collect();
    s.write_all(&bytes).expect("the test's stream");
}

/// The image's one kept connection (its fd record's state, as JSON) and
/// its queues put together from the `tcp-queue` records, with the number
/// of records each took: (send, receive).
fn kept_connection(img: &std::path::Path) -> (serde_json::Value, [(Vec<u8>, usize); 2]) {
    let o = torpor(&["show", &img.to_string_lossy()]);
    assert!(o.status.success(), "show");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let records = v["records"].as_array().expect("records");
    let conns: Vec<&serde_json::Value> = records
        .iter()
        .filter_map(|r| r["value"]["kind"].get("TcpConnection"))
        .collect();
    assert_eq!(conns.len(), 1, "one kept connection");
    let mut queues = [(Vec::new(), 0), (Vec::new(), 0)];
    for r in records.iter().filter(|r| r["kind"] == "tcp-queue") {
        let q = &r["value"];
        let (bytes, n) = &mut queues[usize::from(q["send"] != true)];
        assert_eq!(
            q["offset"].as_u64(),
            Some(bytes.len() as u64),
            "pieces in order"
        );
        bytes.extend(
            q["bytes"]
                .as_array()
                .expect("bytes")
                .iter()
                .map(|b| u8::try_from(b.as_u64().expect("byte")).expect("a byte")),
        );
        *n += 1;
    }
    (conns[0]["state"].clone(), queues)
}

/// `leave`: the dump leaves the program running (`--leave-running`), and
/// the connection goes on without a restore. `lazy`: the restore is
/// `--lazy`, the program running while its pages arrive.
fn stream_goes_on(kind: &str, leave: bool, lazy: bool) {
    become_subreaper();
    let dir = scratch(&format!(
        "tcp-{kind}{}{}",
        if leave { "-leave" } else { "" },
        if lazy { "-lazy" } else { "" }
    ));
    let bin = compile(&dir, "tcpapp", APP, &[]);
    let lst = listener(kind == "6");
    let port = lst.local_addr().expect("addr").port();
    let out = dir.join("out");
    let mut reaper = Reaper::default();
    let pid = spawn(
        &bin,
        &[
            kind,
            &port.to_string(),
            &TOTAL_OUT.to_string(),
            &TOTAL_IN.to_string(),
        ],
        Some(&out),
    );
    reaper.add(pid);
    let (mut s, app_addr) = lst.accept().expect("accept");
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready "))
    });
    let queued: u64 = lines(&out)[0][6..].parse().expect("count");
    write_in(&mut s, 0, BEFORE);
    // Acknowledged, unread in the program's receive queue.
    std::thread::sleep(Duration::from_millis(200));
    let img = dir.join("img");
    if leave {
        dump(pid, &img, &["--tcp-established", "--leave-running"]);
        assert!(runs(pid, &bin), "the program runs on");
    } else {
        dump(pid, &img, &["--tcp-established"]);
        assert_eq!(
            reap(pid),
            libc::SIGKILL,
            "the program is killed after the dump"
        );
    }
    let (st, [(sendq, send_records), (recvq, recv_records)]) = kept_connection(&img);
    // The test's bytes, all unread, in three records (48 KiB each).
    assert_eq!(st["recv_len"].as_u64(), Some(BEFORE));
    assert_eq!(recvq, (0..BEFORE).map(in_byte).collect::<Vec<u8>>());
    assert_eq!(recv_records, 3);
    // The end of what the program wrote waits in its send queue, more than
    // one record holds, some of it never sent: its first byte is the byte
    // after what the test can read before the restore.
    let n = sendq.len() as u64;
    assert_eq!(st["send_len"].as_u64(), Some(n));
    assert!(n > 48 * 1024 && send_records >= 2, "{n} bytes queued");
    let unsent = st["unsent"].as_u64().expect("unsent");
    assert!(unsent > 0 && unsent <= n, "{unsent} of {n} never sent");
    assert_eq!(
        sendq,
        (queued - n..queued).map(out_byte).collect::<Vec<u8>>()
    );
    let lock = which_nft();
    let table = table_name(app_addr, s.local_addr().expect("addr"));
    let _unlock = Unlock(table.clone());
    if lock {
        let t = nft_tables().unwrap_or_default();
        // Lifted with repair mode when the program runs on.
        assert_eq!(t.contains(&table), !leave, "the lock's table {table}: {t}");
    }
    // While the program is gone (or not reading): the test writes on.
    write_in(&mut s, BEFORE, BEFORE + DURING);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.take_error().expect("SO_ERROR").is_none(), "no reset");
    if !leave {
        restore_kept(&img, app_addr, s.local_addr().expect("addr"), lazy);
    }
    if lock {
        let t = nft_tables().unwrap_or_default();
        assert!(!t.contains(&table), "the lock is lifted: {t}");
    }
    assert!(runs(pid, &bin));
    // SAFETY: signalling the program.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    finish_stream(s, app_addr, queued);
    assert_eq!(reap(pid), 0);
    assert_eq!(
        lines(&out),
        vec![format!("ready {queued}"), "done".to_string()]
    );
    reaper.0.clear();
}

/// Restores the image, which a restore without `--tcp-established`
/// refuses naming the connection, the lock staying; `lazy`: the restore
/// is `--lazy`, and must say it served pages lazily.
fn restore_kept(
    img: &std::path::Path,
    app: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    lazy: bool,
) {
    let o = torpor(&["restore", "--image", &img.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "the image keeps established TCP connections ({} -> {}): restore with --tcp-established",
            mapped_v4(app),
            mapped_v4(peer)
        )),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    if which_nft() {
        let table = table_name(app, peer);
        assert!(nft_tables().unwrap_or_default().contains(&table));
    }
    let img = img.to_string_lossy();
    let mut args = vec!["restore", "--image", &img, "--tcp-established"];
    if lazy {
        args.push("--lazy");
    }
    let o = torpor(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "restore failed: {err}");
    if lazy {
        assert!(
            err.contains("torpor: lazily: ") && !err.contains("unavailable"),
            "the restore was not lazy: {err}"
        );
    }
}

/// A v4-mapped address as the wire carries it.
fn mapped_v4(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a {
        std::net::SocketAddr::V6(v) => v.ip().to_ipv4_mapped().map_or(a, |v4| {
            std::net::SocketAddr::new(std::net::IpAddr::V4(v4), v.port())
        }),
        std::net::SocketAddr::V4(_) => a,
    }
}

/// The rest of both streams once the program goes on: the test reads all
/// of the program's, byte-exact, while writing the rest of its own, then
/// the program's verdict on what it read.
fn finish_stream(mut s: TcpStream, app_addr: std::net::SocketAddr, queued: u64) {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || write_in(&mut w, BEFORE + DURING, TOTAL_IN));
    let mut got = vec![0u8; usize::try_from(TOTAL_OUT).expect("size")];
    s.read_exact(&mut got).expect("the program's whole stream");
    if let Some((_, i)) = got.iter().zip(0u64..).find(|(b, i)| **b != out_byte(*i)) {
        panic!("the program's stream differs at byte {i} (of {queued} before the dump)");
    }
    writer.join().expect("writer");
    let mut trailer = Vec::new();
    let mut b = [0u8; 1];
    while trailer.last() != Some(&b'\n') {
        s.read_exact(&mut b).expect("the trailer");
        trailer.push(b[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&trailer),
        format!("OK {TOTAL_IN}\n")
    );
    // The program still sees the test's address as its peer, and the test
    // its port.
    assert_eq!(s.peer_addr().expect("peer"), app_addr);
}

/// The lock's table of the program's connection: `torpor_`, then its
/// address and port, then its peer's, in hex (IPv4 as the wire has it).
fn table_name(app: std::net::SocketAddr, peer: std::net::SocketAddr) -> String {
    let mut n = String::from("torpor_");
    for a in [app, peer] {
        let ip = match a.ip() {
            std::net::IpAddr::V6(v) => v
                .to_ipv4_mapped()
                .map_or_else(|| v.octets().to_vec(), |v4| v4.octets().to_vec()),
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
        };
        for b in ip.iter().chain(&a.port().to_be_bytes()) {
            n.push_str(&format!("{b:02x}"));
        }
    }
    n
}

/// Deletes the lock's table when dropped, so a test that fails half-way
/// leaves no rule dropping packets on the host.
struct Unlock(String);

impl Drop for Unlock {
    fn drop(&mut self) {
        if which_nft() {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn which_nft() -> bool {
    ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

#[test]
fn ipv4_connection_goes_on_after_restore() {
    stream_goes_on("4", false, false);
}

#[test]
fn ipv6_connection_goes_on_after_restore() {
    stream_goes_on("6", false, false);
}

#[test]
fn v4_mapped_connection_goes_on_after_restore() {
    stream_goes_on("m", false, false);
}

/// A lazy restore: the connection leaves repair mode before the program
/// runs, while its pages are still missing.
#[test]
fn ipv4_connection_goes_on_after_a_lazy_restore() {
    stream_goes_on("4", false, true);
}

#[test]
fn connection_goes_on_after_a_dump_that_leaves_it_running() {
    stream_goes_on("4", true, false);
}

#[test]
fn half_closed_connection_is_refused_naming_the_fd() {
    become_subreaper();
    let dir = scratch("tcp-half");
    let bin = compile(&dir, "tcpapp", APP, &[]);
    let lst = listener(false);
    let port = lst.local_addr().expect("addr").port();
    let out = dir.join("out");
    let mut reaper = Reaper::default();
    let pid = spawn(&bin, &["h", &port.to_string(), "0", "0"], Some(&out));
    reaper.add(pid);
    let (_s, _) = lst.accept().expect("accept");
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    std::thread::sleep(Duration::from_millis(100));
    let img = dir.join("img");
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        &img.to_string_lossy(),
        "--tcp-established",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("fd 3 of process {pid}"))
            && err.contains("in state FIN_WAIT2, which torpor keeps only when ESTABLISHED"),
        "{err}"
    );
    assert!(runs(pid, &bin), "the program runs on");
    if which_nft() {
        let table = table_name(
            _s.peer_addr().expect("peer"),
            _s.local_addr().expect("addr"),
        );
        assert!(!nft_tables().unwrap_or_default().contains(&table));
    }
}
