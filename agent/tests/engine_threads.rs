//! A process with five threads, each with its own TLS values and a counter,
//! blocked in futex and nanosleep at the dump, comes back with the same
//! thread ids and every thread continues its own sequence.

mod engine_util;
use engine_util::*;

const THREADS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static __thread long tls_val;
static __thread char tls_name[32];

static void *worker(void *arg) {
    long idx = (long)arg;
    tls_val = idx * 1000000;
    snprintf(tls_name, sizeof tls_name, "worker-%ld", idx);
    pid_t tid = syscall(SYS_gettid);
    for (long i = 0;; i++) {
        char want[32];
        snprintf(want, sizeof want, "worker-%ld", idx);
        int ok = tls_val == idx * 1000000 + i && strcmp(tls_name, want) == 0
                 && syscall(SYS_gettid) == tid;
        char line[96];
        int n = snprintf(line, sizeof line, "%ld %ld %d %s\n", idx, i, (int)tid, ok ? "ok" : "FAIL");
        write(1, line, n);
        tls_val++;
        usleep(10000 + idx * 3000);
    }
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    pthread_join(t[0], NULL);
    return 0;
}
"#;

/// (thread index, sequence number, tid, ok)
fn parse(path: &std::path::Path) -> Vec<(u32, u64, i32, bool)> {
    lines(path)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "bad line {l:?}");
            (
                f[0].parse().expect("idx"),
                f[1].parse().expect("seq"),
                f[2].parse().expect("tid"),
                f[3] == "ok",
            )
        })
        .collect()
}

fn tids(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn five_threads_keep_tids_tls_and_sequences() {
    become_subreaper();
    let dir = scratch("threads");
    let bin = compile(&dir, "threads", THREADS, &["-pthread"]);
    let out = dir.join("out.txt");
    let img = dir.join("threads.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("every worker to print", || {
        parse(&out).iter().filter(|l| l.1 >= 2).count() >= 4
    });
    let before_tids = tids(pid);
    assert_eq!(before_tids.len(), 5);

    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let before = parse(&out);
    let max_before: Vec<u64> = (1..=4)
        .map(|i| {
            before
                .iter()
                .filter(|l| l.0 == i)
                .map(|l| l.1)
                .max()
                .expect("seq")
        })
        .collect();

    restore(&img);
    assert_eq!(tids(pid), before_tids, "same thread ids");
    wait_for("every worker to advance", || {
        let now = parse(&out);
        (1..=4u32).all(|i| {
            now.iter()
                .filter(|l| l.0 == i)
                .map(|l| l.1)
                .max()
                .unwrap_or(0)
                >= max_before[i as usize - 1] + 5
        })
    });
    kill_and_reap(pid);

    let all = parse(&out);
    assert!(
        all.iter().all(|l| l.3),
        "every TLS check passed: {:?}",
        all.iter().find(|l| !l.3)
    );
    for i in 1..=4u32 {
        let seq: Vec<u64> = all.iter().filter(|l| l.0 == i).map(|l| l.1).collect();
        let want: Vec<u64> = (0..seq.len() as u64).collect();
        assert_eq!(seq, want, "worker {i} continues without gap or repeat");
        let tid: Vec<i32> = all.iter().filter(|l| l.0 == i).map(|l| l.2).collect();
        assert!(tid.iter().all(|t| *t == tid[0] && before_tids.contains(t)));
    }
}
