//! Established TCP connections kept with `--tcp-established`: a program
//! holding a connection over loopback (IPv4, IPv6, v4-mapped) to this test,
//! with unread bytes in its receive queue and bytes the kernel could not
//! send in its send queue, is dumped and killed; the test writes to it
//! while it is gone (the network lock holds the packets off); after the
//! restore both streams go on byte-exact, with no loss, no repeat and no
//! reset; a restore without the flag is refused naming the connection. A
//! dump that leaves the program running lifts the lock and repair mode,
//! and the connection goes on. Half-closed and closing connections
//! (CLOSE_WAIT and FIN_WAIT2 over IPv4 and IPv6, FIN_WAIT1 and LAST_ACK
//! with bytes never sent, CLOSING) come back in their state, each end
//! going on to a normal close with every byte exact. A connection still in
//! its handshake, and CLOSING with bytes never sent, are refused naming
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
    kept_as(img, "TcpConnection")
}

/// [`kept_connection`] for a connection recorded as the `FdKind`
/// `variant`.
fn kept_as(img: &std::path::Path, variant: &str) -> (serde_json::Value, [(Vec<u8>, usize); 2]) {
    let o = torpor(&["show", &img.to_string_lossy()]);
    assert!(o.status.success(), "show");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let records = v["records"].as_array().expect("records");
    let conns: Vec<&serde_json::Value> = records
        .iter()
        .filter_map(|r| r["value"]["kind"].get(variant))
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

/// The program of the half-closed and closing connections: connects to
/// the port and, by its mode, reads the test's bytes up to the test's FIN
/// (`cw`, `la`), fills its send queue until the kernel takes no more
/// (`fw1`, `la`), shuts its sending side down (`fw1`, `fw2`, `la`), says
/// "ready READ WRITTEN STATE" and waits for SIGUSR1 (it is dumped there).
/// Then it says its state again and, by mode: `cw` reads once (EOF again),
/// writes COUNT bytes and closes; `fw2` reads the test's bytes to EOF;
/// `fw1` waits for its FIN to be acknowledged, then reads to EOF; `la`
/// waits for the connection to close. `syn` connects to a listener that
/// does not answer and says "ready STATE".
const CLOSING_APP: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char app_byte(unsigned long i) { return (unsigned char)(i * 11 + (i >> 8) + 3); }
static unsigned char peer_byte(unsigned long i) { return (unsigned char)(i * 5 + (i >> 7) + 9); }
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static int state(int s) {
    struct tcp_info i;
    socklen_t l = sizeof i;
    memset(&i, 0, sizeof i);
    if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &i, &l)) return -1;
    return i.tcpi_state;
}
/* Waits up to 10 s for the state `want`. */
static int wait_state(int s, int want) {
    for (int k = 0; k < 1000 && state(s) != want; k++) usleep(10000);
    return state(s);
}
/* Reads to EOF, checking the test's bytes; 0 if they are right. */
static int read_all(int s, unsigned long *n) {
    static unsigned char buf[65536];
    int bad = 0;
    for (;;) {
        ssize_t r = read(s, buf, sizeof buf);
        if (r == 0) return bad;
        if (r < 0) { if (errno == EINTR) continue; printf("read error %d\n", errno); return 1; }
        for (ssize_t k = 0; k < r; k++)
            if (buf[k] != peer_byte(*n + k)) bad = 1;
        *n += (unsigned long)r;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    const char *mode = argv[1];
    unsigned long count = strtoul(argv[3], 0, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    struct sockaddr_in a4 = {0};
    struct sockaddr_in6 a6 = {0};
    struct sockaddr *a = (struct sockaddr *)&a4;
    socklen_t alen = sizeof a4;
    int family = AF_INET;
    if (argv[4][0] == '6') {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(atoi(argv[2]));
        inet_pton(AF_INET6, "::1", &a6.sin6_addr);
        a = (struct sockaddr *)&a6;
        alen = sizeof a6;
        family = AF_INET6;
    } else {
        a4.sin_family = AF_INET;
        a4.sin_port = htons(atoi(argv[2]));
        inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
    }
    int s = socket(family, SOCK_STREAM, 0);
    if (!strcmp(mode, "syn")) {
        fcntl(s, F_SETFL, O_NONBLOCK);
        if (connect(s, a, alen) == 0 || errno != EINPROGRESS) return 3;
        printf("ready %d\n", state(s));
        fflush(stdout);
        for (;;) pause();
    }
    int b = 131072;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &b, sizeof b);
    if (connect(s, a, alen)) { perror("connect"); return 3; }
    int cw = !strcmp(mode, "cw"), fw1 = !strcmp(mode, "fw1"), fw2 = !strcmp(mode, "fw2"), la = !strcmp(mode, "la");
    int cl = !strcmp(mode, "cl");
    if (cl) {
        /* The test holds this end's packets off, then says go: the FIN
           sent here is lost, the test's crosses it. */
        while (!go) pause();
        go = 0;
        shutdown(s, SHUT_WR);
        wait_state(s, TCP_CLOSING);
    }
    unsigned long got = 0, out = 0;
    if ((cw || la) && read_all(s, &got)) { printf("bad bytes before the dump\n"); return 4; }
    static unsigned char buf[65536];
    if (fw1 || la) {
        fcntl(s, F_SETFL, O_NONBLOCK);
        for (;;) {
            for (size_t k = 0; k < sizeof buf; k++) buf[k] = app_byte(out + k);
            ssize_t w = write(s, buf, sizeof buf);
            if (w < 0) {
                /* Full: once no room comes for 300 ms, the rest waits. */
                struct pollfd p = {s, POLLOUT, 0};
                if (errno == EAGAIN && poll(&p, 1, 300) == 0) break;
                if (errno == EAGAIN) continue;
                printf("write error %d\n", errno);
                return 5;
            }
            out += (unsigned long)w;
        }
        fcntl(s, F_SETFL, 0);
    }
    if (fw1 || fw2 || la) shutdown(s, SHUT_WR);
    if (fw2) wait_state(s, TCP_FIN_WAIT2);
    printf("ready %lu %lu %d\n", got, out, state(s));
    fflush(stdout);
    while (!go) pause();
    printf("state %d\n", state(s));
    fflush(stdout);
    if (cw) {
        ssize_t r = read(s, buf, sizeof buf);
        printf("read %zd\n", r);
        for (unsigned long i = 0; i < count; i++) buf[i % sizeof buf] = app_byte(i);
        if (write(s, buf, count) != (ssize_t)count) { printf("write error %d\n", errno); return 6; }
        if (close(s)) return 7;
    } else if (fw2 || fw1) {
        if (fw1) {
            printf("acknowledged %d\n", wait_state(s, TCP_FIN_WAIT2));
            fflush(stdout);
        }
        got = 0;
        int bad = read_all(s, &got);
        printf("got %lu %s\n", got, bad ? "BAD" : "OK");
    } else if (la || cl) {
        printf("closed %d\n", wait_state(s, TCP_CLOSE));
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
"#;

fn app_byte(i: u64) -> u8 {
    i.wrapping_mul(11)
        .wrapping_add(i >> 8)
        .wrapping_add(3)
        .to_le_bytes()[0]
}

fn peer_byte(i: u64) -> u8 {
    i.wrapping_mul(5)
        .wrapping_add(i >> 7)
        .wrapping_add(9)
        .to_le_bytes()[0]
}

const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// `tcpi_state` of the test's end.
fn tcp_state(s: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    let mut i = [0u8; 8];
    let mut len: libc::socklen_t = 8;
    // SAFETY: getsockopt writes at most `len` bytes into `i`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            i.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    i[0]
}

fn peer_bytes(n: u64) -> Vec<u8> {
    (0..n).map(peer_byte).collect()
}

/// Reads the program's bytes to EOF and checks them: `n` of them.
fn read_app_to_eof(s: &mut TcpStream, n: u64) {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the program's bytes and its FIN");
    assert_eq!(got.len() as u64, n, "bytes before EOF");
    if let Some((_, i)) = got.iter().zip(0u64..).find(|(b, i)| **b != app_byte(*i)) {
        panic!("the program's bytes differ at byte {i}");
    }
}

/// A program in `mode` (see [`CLOSING_APP`]) with a connection to the
/// test that `before` brings to its state, dumped with the connection
/// kept, killed and restored; returns what the restored program and the
/// test's end go on with, once the program is told to go on.
struct Closing {
    pid: i32,
    out: std::path::PathBuf,
    s: TcpStream,
    /// READ WRITTEN of the program's "ready" line.
    read: u64,
    written: u64,
    _unlock: Unlock,
    reaper: Reaper,
}

fn closing(
    (mode, v6): (&str, bool),
    count: u64,
    before: impl FnOnce(&mut TcpStream, i32) -> Option<Unlock>,
    state: u8,
    peer_state: u8,
) -> Closing {
    become_subreaper();
    let family = if v6 { "6" } else { "4" };
    let dir = scratch(&format!("tcp-closing-{mode}-{family}"));
    let bin = compile(&dir, "closingapp", CLOSING_APP, &[]);
    let lst = listener(v6);
    let port = lst.local_addr().expect("addr").port();
    let out = dir.join("out");
    let mut reaper = Reaper::default();
    let pid = spawn(
        &bin,
        &[mode, &port.to_string(), &count.to_string(), family],
        Some(&out),
    );
    reaper.add(pid);
    let (mut s, app_addr) = lst.accept().expect("accept");
    let block = before(&mut s, pid);
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready "))
    });
    let ready = lines(&out)[0].clone();
    let f: Vec<u64> = ready[6..]
        .split(' ')
        .map(|x| x.parse().expect("number"))
        .collect();
    assert_eq!(f.len(), 3, "{ready}");
    assert_eq!(
        f[2],
        u64::from(state),
        "the program's state before the dump"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        tcp_state(&s),
        peer_state,
        "the test's state before the dump"
    );
    let img = dir.join("img");
    let table = table_name(app_addr, s.local_addr().expect("addr"));
    let unlock = Unlock(table.clone());
    dump(pid, &img, &["--tcp-established"]);
    assert_eq!(reap(pid), libc::SIGKILL, "killed after the dump");
    // The dump's lock holds the packets off from now on.
    drop(block);
    let (st, [(sendq, _), (recvq, _)]) = kept_as(&img, "TcpClosing");
    assert_eq!(st["socket"]["tcp_state"].as_u64(), Some(u64::from(state)));
    assert_eq!(st["send_len"].as_u64(), Some(sendq.len() as u64));
    assert_eq!(st["recv_len"].as_u64(), Some(0));
    assert!(recvq.is_empty(), "the program had read everything");
    // What the program wrote and the test has not read: the end of it.
    let n = sendq.len() as u64;
    assert_eq!(sendq, (f[1] - n..f[1]).map(app_byte).collect::<Vec<u8>>());
    // The test's end sees nothing of it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.take_error().expect("SO_ERROR").is_none(), "no reset");
    assert_eq!(
        tcp_state(&s),
        peer_state,
        "the test's state while it is gone"
    );
    restore_kept(&img, app_addr, s.local_addr().expect("addr"), false);
    if which_nft() {
        let t = nft_tables().unwrap_or_default();
        assert!(!t.contains(&table), "the lock is lifted: {t}");
    }
    assert!(runs(pid, &bin));
    assert_eq!(
        tcp_state(&s),
        peer_state,
        "the test's state after the restore"
    );
    // SAFETY: signalling the program.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("state", || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        format!("state {state}"),
        "the program's state after the restore"
    );
    Closing {
        pid,
        out,
        s,
        read: f[0],
        written: f[1],
        _unlock: unlock,
        reaper,
    }
}

impl Closing {
    /// The program exits 0 having said `rest` after its state.
    fn ends_with(mut self, rest: &[&str]) {
        assert_eq!(reap(self.pid), 0);
        let l = lines(&self.out);
        assert_eq!(&l[2..], rest, "{l:?}");
        self.reaper.0.clear();
    }
}

/// CLOSE_WAIT: the test sends bytes and its FIN; the program reads them
/// to EOF. Restored, it reads EOF again, writes bytes the test receives
/// exactly, and its close ends the connection (the test sees EOF).
#[test]
fn close_wait_connection_goes_on_after_restore() {
    close_wait(false);
}

#[test]
fn ipv6_close_wait_connection_goes_on_after_restore() {
    close_wait(true);
}

fn close_wait(v6: bool) {
    let c = closing(
        ("cw", v6),
        3000,
        |s, _| {
            s.write_all(&peer_bytes(1000)).expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            None
        },
        CLOSE_WAIT,
        FIN_WAIT2,
    );
    assert_eq!((c.read, c.written), (1000, 0));
    let mut s = c.s.try_clone().expect("clone");
    read_app_to_eof(&mut s, 3000);
    c.ends_with(&["read 0", "done"]);
}

/// FIN_WAIT2: the program shut its sending side down and the test has
/// read its FIN. Restored, the program reads the test's bytes exactly,
/// then EOF.
#[test]
fn fin_wait2_connection_goes_on_after_restore() {
    fin_wait2(false);
}

#[test]
fn ipv6_fin_wait2_connection_goes_on_after_restore() {
    fin_wait2(true);
}

fn fin_wait2(v6: bool) {
    let c = closing(
        ("fw2", v6),
        0,
        |s, _| {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).expect("read"), 0, "the program's FIN");
            None
        },
        FIN_WAIT2,
        CLOSE_WAIT,
    );
    assert_eq!((c.read, c.written), (0, 0));
    let mut s = c.s.try_clone().expect("clone");
    s.write_all(&peer_bytes(5000)).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    c.ends_with(&["got 5000 OK", "done"]);
}

/// FIN_WAIT1: the program shut its sending side down with bytes never
/// sent (the test does not read). Restored, the test reads all of them
/// exactly, then the FIN; the program sees its FIN acknowledged, then
/// reads the test's bytes to EOF.
#[test]
fn fin_wait1_connection_with_unsent_bytes_goes_on_after_restore() {
    let c = closing(("fw1", false), 0, |_, _| None, FIN_WAIT1, ESTABLISHED);
    assert!(c.written > 0);
    let mut s = c.s.try_clone().expect("clone");
    read_app_to_eof(&mut s, c.written);
    // The program sees FIN_WAIT2 before the test's FIN ends it.
    wait_for("acknowledged", || lines(&c.out).len() >= 3);
    assert_eq!(lines(&c.out)[2], "acknowledged 5");
    s.write_all(&peer_bytes(700)).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    c.ends_with(&["acknowledged 5", "got 700 OK", "done"]);
}

/// LAST_ACK: the test sent its FIN; the program then wrote more than the
/// test takes and shut down. Restored, the test reads all of it exactly
/// and the FIN; its acknowledgement closes the program's end.
#[test]
fn last_ack_connection_goes_on_after_restore() {
    let c = closing(
        ("la", false),
        0,
        |s, _| {
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            None
        },
        LAST_ACK,
        FIN_WAIT2,
    );
    assert_eq!(c.read, 0);
    assert!(c.written > 0);
    let mut s = c.s.try_clone().expect("clone");
    read_app_to_eof(&mut s, c.written);
    c.ends_with(&["closed 7", "done"]);
}

/// CLOSING: the program's FIN is lost on the way (a table of the test's
/// drops the program's packets), the test's FIN crosses it, so neither is
/// acknowledged. Restored, the program's FIN goes out again, the test
/// acknowledges it and both ends close.
#[test]
fn closing_connection_goes_on_after_restore() {
    if !which_nft() {
        eprintln!("no nft: the test cannot lose the program's FIN");
        return;
    }
    let c = closing(
        ("cl", false),
        0,
        |s, pid| {
            let app = s.peer_addr().expect("peer").port();
            let me = s.local_addr().expect("addr").port();
            let table = format!("tcptest_closing_{app}");
            let script = format!(
                "table inet {table} {{ chain out {{ type filter hook output priority -150; policy accept; tcp sport {app} tcp dport {me} drop\n}}\n}}\n"
            );
            let mut nft = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            nft.stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())
                .expect("script");
            assert!(nft.wait().expect("nft").success(), "the test's table");
            let block = Unlock(table);
            // SAFETY: signalling the program.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
            std::thread::sleep(Duration::from_millis(200));
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            Some(block)
        },
        CLOSING,
        FIN_WAIT1,
    );
    assert_eq!((c.read, c.written), (0, 0));
    let mut s = c.s.try_clone().expect("clone");
    read_app_to_eof(&mut s, 0);
    c.ends_with(&["closed 7", "done"]);
}

/// CLOSING with the program's FIN behind bytes never sent (the test does
/// not read, then sends its own FIN) is refused naming the fd, the program
/// running on and no lock left.
#[test]
fn closing_connection_with_unsent_bytes_is_refused_naming_the_fd() {
    become_subreaper();
    let dir = scratch("tcp-closing-unsent");
    let bin = compile(&dir, "closingapp", CLOSING_APP, &[]);
    let lst = listener(false);
    let port = lst.local_addr().expect("addr").port();
    let out = dir.join("out");
    let mut reaper = Reaper::default();
    let pid = spawn(&bin, &["fw1", &port.to_string(), "0", "4"], Some(&out));
    reaper.add(pid);
    let (s, app_addr) = lst.accept().expect("accept");
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready "))
    });
    assert!(
        lines(&out)[0].ends_with(" 4"),
        "FIN_WAIT1: {:?}",
        lines(&out)
    );
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    std::thread::sleep(Duration::from_millis(200));
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        &dir.join("img").to_string_lossy(),
        "--tcp-established",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("fd 3 of process {pid}"))
            && err.contains("a TCP connection in state CLOSING with ")
            && err.contains(" bytes never sent before its FIN, which torpor cannot keep"),
        "{err}"
    );
    assert!(runs(pid, &bin), "the program runs on");
    if which_nft() {
        let table = table_name(app_addr, s.local_addr().expect("addr"));
        assert!(!nft_tables().unwrap_or_default().contains(&table));
    }
}

/// A connection whose handshake has not completed (SYN_SENT: the
/// listener's queue is full, so its SYN goes unanswered) is refused naming
/// the fd and the state, the program running on and no lock left.
#[test]
fn connecting_socket_is_refused_naming_the_fd_and_state() {
    become_subreaper();
    let dir = scratch("tcp-syn");
    let bin = compile(&dir, "closingapp", CLOSING_APP, &[]);
    let lst = listener(false);
    let addr = lst.local_addr().expect("addr");
    // Backlog 1: two connections fill the queue.
    let _queued = [
        TcpStream::connect(addr).expect("first"),
        TcpStream::connect(addr).expect("second"),
    ];
    let out = dir.join("out");
    let mut reaper = Reaper::default();
    let pid = spawn(
        &bin,
        &["syn", &addr.port().to_string(), "0", "4"],
        Some(&out),
    );
    reaper.add(pid);
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready"))
    });
    assert_eq!(lines(&out)[0], "ready 2", "SYN_SENT");
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
            && err.contains(
                "a TCP connection in state SYN_SENT, which torpor does not keep (its handshake is not complete"
            ),
        "{err}"
    );
    assert!(runs(pid, &bin), "the program runs on");
    if which_nft() {
        // No table names the listener as the peer.
        let peer = format!("7f000001{:04x}\n", addr.port());
        let t = nft_tables().unwrap_or_default().replace(" {", "\n");
        assert!(!t.contains(&peer), "{t}");
    }
}
