//! A ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) comes back bound to its
//! echo id and still pings; with a reply waiting on it, it is refused.

mod engine_util;
use engine_util::*;

use std::path::Path;

/// Pings 127.0.0.1 once ("pong 1 id=N seq=1"), then, once the file named
/// by its first argument exists, once more ("pong 2 id=N seq=2"). With a
/// second argument, it leaves the second reply unread before waiting
/// ("sent 2").
const PINGER: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static struct sockaddr_in to;
static int s;
static void ping(int seq) {
    struct icmphdr h;
    memset(&h, 0, sizeof h);
    h.type = ICMP_ECHO;
    h.un.echo.sequence = htons(seq);
    if (sendto(s, &h, sizeof h, 0, (struct sockaddr *)&to, sizeof to) != sizeof h) {
        printf("FAIL sendto\n");
        _exit(2);
    }
}
static void pong(int n) {
    struct icmphdr r;
    if (recv(s, &r, sizeof r, 0) < (ssize_t)sizeof r || r.type != ICMP_ECHOREPLY) {
        printf("FAIL no reply %d\n", n);
        _exit(2);
    }
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(s, (struct sockaddr *)&me, &len);
    printf("pong %d id=%u seq=%u reply-id=%u\n", n, ntohs(me.sin_port), ntohs(r.un.echo.sequence),
           ntohs(r.un.echo.id));
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    s = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (s < 0 || dup2(s, 7) != 7) {
        printf("FAIL socket\n");
        return 2;
    }
    close(s);
    s = 7;
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ping(1);
    pong(1);
    if (argc < 2)
        return 2;
    if (argc > 2) {
        ping(2);
        usleep(100000);
        printf("sent 2\n");
    }
    while (access(argv[1], F_OK) != 0)
        usleep(20000);
    if (argc > 2)
        return 0;
    ping(2);
    pong(2);
    return 0;
}
"#;

/// Lets gid 0 make ping sockets while it lives, then puts the range back.
struct PingRange(String);

impl PingRange {
    const PATH: &'static str = "/proc/sys/net/ipv4/ping_group_range";

    fn allow_root() -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("ping_group_range");
        std::fs::write(Self::PATH, "0 0").expect("set ping_group_range");
        PingRange(old)
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim().replace('\t', " "));
    }
}

fn start(bin: &Path, args: &[&str], out: &Path, wait: &str) -> (i32, Reaper) {
    let pid = spawn(bin, args, Some(out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for(wait, || lines(out).iter().any(|l| l.starts_with(wait)));
    (pid, reaper)
}

#[test]
fn a_ping_socket_keeps_its_echo_id_and_pings_again() {
    become_subreaper();
    let _range = PingRange::allow_root();
    let dir = scratch("ping");
    let bin = compile(&dir, "pinger", PINGER, &[]);

    let out = dir.join("out.txt");
    let again = dir.join("again");
    let again_arg = again.to_str().expect("utf8");
    let (pid, _reaper) = start(&bin, &[again_arg], &out, "pong 1");
    let first = lines(&out)[0].clone();
    let id = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .expect("an id")
        .to_string();
    assert_eq!(first, format!("pong 1 id={id} seq=1 reply-id={id}"));
    let img = dir.join("ping.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    std::fs::write(&again, b"").expect("again");
    wait_for("the second reply", || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out),
        [first, format!("pong 2 id={id} seq=2 reply-id={id}")]
    );

    // A reply waiting on the socket cannot be queued again: refused, and
    // the program runs on.
    let _ = std::fs::remove_file(&again);
    let out = dir.join("out-waiting.txt");
    let (pid, _reaper) = start(&bin, &[again_arg, "wait"], &out, "sent 2");
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        dir.join("waiting.img").to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let link = std::fs::read_link(format!("/proc/{pid}/fd/7")).expect("fd 7");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or(""),
        format!(
            "torpor: error: files {pid}: fd 7 of process {pid} ({}): an internet socket: datagrams wait on a ping socket; torpor cannot queue them again",
            link.display()
        )
    );
    assert!(alive(pid));
    std::fs::write(&again, b"").expect("again");
    assert_eq!(reap(pid), 0);
}
