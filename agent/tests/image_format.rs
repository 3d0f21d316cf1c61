//! The checked-in images of `tests/images/`: one per format version the
//! reader accepts, read back to the exact value of every record, and one of
//! an older layout that must be refused.
//!
//! Every value below is distinct from its neighbours, so a field moved,
//! retyped, added or removed in a record type, or an enum variant moved,
//! makes a record of the checked-in image decode to something else (or not
//! at all) and a test here fail. That is the point: such a change needs a
//! new major format version (see "Versions" in `torpor::image`).
//!
//! The images are made by the writer from the fixtures in this file, with a
//! fixed header (no host, boot id or time). After a deliberate format change,
//! bump the version, add the new version's fixture and rewrite the files:
//!
//! ```text
//! TORPOR_WRITE_IMAGES=1 cargo test -p torpor --test image_format
//! ```
//!
//! which also rewrites the fuzzer's seeds (`fuzz/seeds/image_reader/`).

use std::path::PathBuf;
use std::process::Command;

use torpor::image::records::*;
use torpor::image::{
    verify, Arch, FormatVersion, Header, ImageError, ImageReader, ImageWriter, Record, FORMAT,
    MAGIC,
};

fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images")
}

fn image_path(v: FormatVersion) -> PathBuf {
    images_dir().join(format!("format-{v}.img"))
}

fn read_image(v: FormatVersion) -> Vec<u8> {
    let path = image_path(v);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const V2_0: FormatVersion = FormatVersion { major: 2, minor: 0 };
const V2_1: FormatVersion = FormatVersion { major: 2, minor: 1 };
const V2_2: FormatVersion = FormatVersion { major: 2, minor: 2 };
const V2_3: FormatVersion = FormatVersion { major: 2, minor: 3 };
const V2_4: FormatVersion = FormatVersion { major: 2, minor: 4 };
const V2_5: FormatVersion = FormatVersion { major: 2, minor: 5 };
const V2_6: FormatVersion = FormatVersion { major: 2, minor: 6 };
const V2_7: FormatVersion = FormatVersion { major: 2, minor: 7 };
const V1_1: FormatVersion = FormatVersion { major: 1, minor: 1 };

/// The header of every checked-in image: nothing from the host or the clock.
fn fixed_header(version: FormatVersion) -> Header {
    Header {
        magic: MAGIC,
        version,
        arch: Arch::X86_64,
        page_size: 4096,
        kernel_release: "6.1.21+".into(),
        boot_id: "0a1b2c3d-0000-4000-8000-00000000cafe".into(),
        host_name: "fixture".into(),
        created_ns: 1_700_000_000_000_000_123,
        torpor_version: "fixture".into(),
    }
}

/// What a record of the image must read back as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A state record, by its kind and the `Debug` form of its value (every
    /// field, nested ones included).
    State(Kind, String),
    Pages {
        vaddr: u64,
        pages: u32,
        codec: Codec,
        data: Vec<u8>,
    },
}

/// Writes records and notes what each must read back as.
struct Fixture {
    w: ImageWriter<Vec<u8>>,
    expect: Vec<Expect>,
}

impl Fixture {
    fn new(header: &Header) -> Fixture {
        Fixture {
            w: ImageWriter::new(Vec::new(), header).expect("writer"),
            expect: Vec::new(),
        }
    }

    fn put<T: StateRecord>(&mut self, value: T) {
        self.w.write(&value).expect("record");
        self.expect
            .push(Expect::State(T::KIND, format!("{value:?}")));
    }

    /// Pages that the writer stores in one record with `codec`.
    fn pages(&mut self, vaddr: u64, data: Vec<u8>, codec: Codec) {
        self.w.pages(vaddr, &data).expect("pages");
        let pages = u32::try_from(data.len() / 4096).expect("pages");
        self.expect.push(Expect::Pages {
            vaddr,
            pages,
            codec,
            data,
        });
    }

    fn finish(self) -> (Vec<u8>, Vec<Expect>) {
        (self.w.finish().expect("finish").0, self.expect)
    }
}

fn page(f: impl FnMut(usize) -> u8) -> Vec<u8> {
    (0..4096).map(f).collect()
}

/// A page LZ4 cannot shrink: xorshift output.
fn noise_page() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    page(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()[3]
    })
}

fn file_id(path: &str, n: u64) -> FileId {
    FileId {
        path: path.into(),
        dev: 0x0803 + n,
        inode: 131_072 + n,
        size: 90_112 + n,
        mtime_ns: 1_690_000_000_000_000_000 + i64::try_from(n).expect("small"),
    }
}

fn sock_opts(n: i32) -> SockOpts {
    SockOpts {
        rcvbuf: 212_992 + n,
        sndbuf: 425_984 + n,
        reuseaddr: true,
        reuseport: false,
        keepalive: true,
        passcred: false,
        rcvtimeo_us: 1_500_000,
        sndtimeo_us: 2_500_000,
        nodelay: true,
    }
}

/// Format 2.0: at least one record of every kind, with fds, mappings and
/// objects of several variants.
fn format_2_0() -> (Vec<u8>, Vec<Expect>) {
    let mut f = Fixture::new(&fixed_header(V2_0));
    f.put(Clocks {
        monotonic_ns: 86_400_000_000_123,
        boottime_ns: 90_000_000_000_456,
        realtime_ns: 1_700_000_001_000_000_789,
        monotonic_offset_ns: -5_000_000_001,
        boottime_offset_ns: 7_000_000_002,
        own_namespace: true,
        kernel_timens: false,
    });
    f.put(PipeData {
        id: 3,
        capacity: 65_536,
        bytes: b"unread pipe bytes".to_vec(),
    });
    f.put(ExternalPipe {
        id: 3,
        inode: 48_879,
        outside: PipeEnd::Write,
    });
    f.put(TmpfsFile {
        path: "/dev/shm/fixture".into(),
        mode: 0o100_600,
        uid: 1001,
        gid: 1002,
        size: 12_288,
        offset: 4096,
        bytes: b"tmpfs contents".to_vec(),
    });
    f.put(MemfdObject {
        id: 90_001,
        name: "fixture-memfd".into(),
        size: 20_480,
        seals: 0x0f,
        mode: 0o100_640,
        uid: 1003,
        gid: 1004,
    });
    f.put(ObjectData {
        object: ObjectRef::Memfd(90_001),
        offset: 8192,
        bytes: b"memfd contents".to_vec(),
    });
    f.put(SysvShm {
        shmid: 32_769,
        key: 0x1234,
        size: 16_384,
        mode: 0o660,
        uid: 1005,
        gid: 1006,
        cuid: 1007,
        cgid: 1008,
        cpid: 321,
        removed: true,
        created_key: 0x5678,
    });
    f.put(ObjectData {
        object: ObjectRef::Sysv(32_769),
        offset: 0,
        bytes: b"sysv contents".to_vec(),
    });
    f.put(UnlinkedObject {
        inode: 777_777,
        path: "/var/tmp/gone".into(),
        size: 30_000,
        mode: 0o100_644,
        uid: 1009,
        gid: 1010,
    });
    f.put(ObjectData {
        object: ObjectRef::Unlinked(777_777),
        offset: 12_288,
        bytes: b"unlinked contents".to_vec(),
    });
    f.put(Task {
        pid: 412,
        ppid: 1,
        pgid: 410,
        sid: 400,
        comm: "sensor-logger".into(),
        creds: Creds {
            uid: 2001,
            euid: 2002,
            suid: 2003,
            fsuid: 2004,
            gid: 3001,
            egid: 3002,
            sgid: 3003,
            fsgid: 3004,
            groups: vec![20, 44, 100],
            cap_inheritable: 0x11,
            cap_permitted: 0x22,
            cap_effective: 0x33,
            cap_bounding: 0x1ff_ffff_ffff,
            cap_ambient: 0x44,
            securebits: 0x2f,
            no_new_privs: true,
        },
        umask: 0o027,
        cwd: "/var/lib/logger".into(),
        root: "/srv/root".into(),
        exe: RawPath(b"/usr/bin/logger\xff".to_vec()),
        rlimits: vec![Rlimit {
            resource: 7,
            cur: 1024,
            max: 4096,
        }],
        sigactions: vec![SigAction {
            signo: 15,
            handler: 0x1_0450,
            flags: 0x0400_0000,
            restorer: 0x7f00_0000_1234,
            mask: 1 << 13,
        }],
        sigmask: 1 << 9,
        pending: vec![SigInfo {
            signo: 10,
            errno: 11,
            code: -6,
            raw: vec![0xa5; 128],
        }],
        itimers: ITimers {
            real: ITimer {
                interval_ns: 1_000_000_001,
                value_ns: 250_000_002,
            },
            virt: ITimer {
                interval_ns: 3,
                value_ns: 4,
            },
            prof: ITimer {
                interval_ns: 5,
                value_ns: 6,
            },
        },
        personality: 0x0080_0000,
        posix_timers: vec![PosixTimer {
            id: 2,
            clock: 1,
            notify: 4,
            tid: 413,
            signo: 34,
            value: 0xdead_beef,
            interval_ns: 10_000_000,
            value_ns: 3_000_000,
        }],
        exit_status: None,
        ctty: 0x8801,
        locks: vec![FileLock {
            fd: 5,
            kind: LockKind::Ofd,
            write: true,
            start: 100,
            end: Some(199),
        }],
        stopped: true,
    });
    f.put(MmFields {
        start_code: 0x40_0000,
        end_code: 0x40_1000,
        start_data: 0x60_0000,
        end_data: 0x60_1000,
        start_brk: 0x70_0000,
        brk: 0x72_1000,
        start_stack: 0x7ffe_0000_0000,
        arg_start: 0x7ffe_0000_1000,
        arg_end: 0x7ffe_0000_1100,
        env_start: 0x7ffe_0000_1100,
        env_end: 0x7ffe_0000_1fe0,
        auxv: vec![6, 4096, 16, 0xbfeb_fbff, 0, 0],
    });
    f.put(Thread {
        tid: 413,
        regs: Regs {
            arch: Arch::X86_64,
            gpr: (1..=27).collect(),
            fpu: (100..=131).collect(),
        },
        tls: 0x7f00_1234_5678,
        sigmask: 1 << 2,
        altstack: AltStack {
            sp: 0x7f00_0001_0000,
            flags: 2,
            size: 8192,
        },
        pending: vec![SigInfo {
            signo: 12,
            errno: 0,
            code: -1,
            raw: vec![0x5a; 128],
        }],
        tid_address: 0x7f00_0002_0000,
        robust_list: RobustList {
            head: 0x7f00_0003_0000,
            len: 24,
        },
        comm: "logger-io".into(),
        rseq: Some(Rseq {
            addr: 0x7f00_0004_0000,
            len: 32,
            sig: 0x5305_3053,
        }),
    });
    f.put(Vma {
        start: 0x40_0000,
        end: 0x40_2000,
        prot: 5,
        flags: 2,
        offset: 0x1000,
        kind: VmaKind::PrivateFile,
        file: Some(file_id("/usr/bin/logger", 1)),
    });
    f.put(Vma {
        start: 0x7f10_0000_0000,
        end: 0x7f10_0000_5000,
        prot: 3,
        flags: 1,
        offset: 0,
        kind: VmaKind::Memfd { may_write: true },
        file: Some(file_id("/memfd:fixture-memfd (deleted)", 2)),
    });
    f.put(Vma {
        start: 0x7ffe_0000_0000,
        end: 0x7ffe_0002_1000,
        prot: 3,
        flags: 0x0100,
        offset: 0,
        kind: VmaKind::Stack,
        file: None,
    });
    f.put(Fd {
        fd: 0,
        fd_flags: 0,
        ofd: 11,
        kind: FdKind::Tty {
            path: "/dev/pts/3".into(),
            rdev: 0x8803,
            flags: 0o2,
        },
    });
    f.put(Fd {
        fd: 3,
        fd_flags: 1,
        ofd: 12,
        kind: FdKind::Regular {
            file: file_id("/var/log/sensor.log", 3),
            flags: 0o2101,
            offset: 65_537,
        },
    });
    f.put(Fd {
        fd: 4,
        fd_flags: 0,
        ofd: 13,
        kind: FdKind::Pipe {
            id: 3,
            end: PipeEnd::Read,
            flags: 0o4000,
        },
    });
    f.put(Fd {
        fd: 5,
        fd_flags: 1,
        ofd: 14,
        kind: FdKind::Unix {
            flags: 0o2,
            state: UnixSocket {
                sock_type: 5,
                inode: 51_001,
                peer: 51_002,
                connected: true,
                listening: false,
                backlog: 0,
                name: RawPath(b"\0fixture".to_vec()),
                bind_path: "/run/fixture.sock".into(),
                peer_name: "/run/peer.sock".into(),
                shutdown: 2,
                queue: vec![b"one".to_vec(), b"two".to_vec()],
                opts: sock_opts(1),
            },
        },
    });
    f.put(Fd {
        fd: 6,
        fd_flags: 0,
        ofd: 15,
        kind: FdKind::Inet {
            flags: 0o4002,
            state: InetSocket {
                family: 10,
                sock_type: 2,
                protocol: 17,
                local: vec![10, 0, 0x1f, 0x90, 1, 2, 3, 4],
                peer: vec![],
                listening: false,
                backlog: 7,
                tcp_state: 0,
                v6only: true,
                opts: sock_opts(2),
                dropped: false,
                error_pending: true,
                queue: vec![b"datagram".to_vec()],
            },
        },
    });
    f.put(Fd {
        fd: 7,
        fd_flags: 1,
        ofd: 16,
        kind: FdKind::EventFd {
            flags: 0o4000,
            state: EventFd {
                count: 42,
                semaphore: true,
            },
        },
    });
    f.put(Fd {
        fd: 8,
        fd_flags: 0,
        ofd: 17,
        kind: FdKind::MemfdFile {
            flags: 0o2,
            state: MemfdRef {
                id: 90_001,
                offset: 4097,
            },
        },
    });
    f.put(Fd {
        fd: 9,
        fd_flags: 1,
        ofd: 18,
        kind: FdKind::UnlinkedFile {
            flags: 0o1,
            offset: 333,
            inode: 777_777,
        },
    });
    f.put(FileSigIo {
        ofd: 15,
        sigio: SigIo {
            owner_kind: 1,
            owner_pid: 412,
            signal: 29,
        },
    });
    f.put(SeccompFilter {
        flags: 2,
        program: (0..16).map(|i| 0xf0 ^ i).collect(),
    });
    f.pages(0x40_0000, noise_page(), Codec::Raw);
    let mut text = page(|i| b"torpor fixture "[i % 15]);
    text.extend(page(|i| u8::try_from(i / 64).expect("small")));
    f.pages(0x60_0000, text, Codec::Lz4);
    f.pages(0x70_0000, vec![0; 3 * 4096], Codec::Zero);
    f.finish()
}

/// Format 2.1: the records of 2.0 and the two kinds 2.1 adds, the
/// identity and owner of the paths a restore opens (`file-owner`) and the
/// user the checkpoint was taken for (`requested-by`).
fn format_2_1() -> (Vec<u8>, Vec<Expect>) {
    let (img20, expect20) = format_2_0();
    let mut f = Fixture::new(&fixed_header(V2_1));
    f.put(RequestedBy {
        uid: 4001,
        gid: 4002,
        groups: vec![4003, 4004],
    });
    // The 2.0 records again, in order, with the new kinds among them.
    let mut r = ImageReader::inspect(&img20[..]).expect("2.0 image");
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0;
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
        if rec.kind() == Kind::Fd && i == 0 {
            f.put(FileOwner {
                path: "/var/log/sensor.log".into(),
                dev: 0x0806,
                inode: 131_075,
                mode: 0o100_640,
                uid: 2004,
                gid: 3004,
            });
            f.put(FileOwner {
                path: RawPath(b"/var/lib/logger/fifo\xfe".to_vec()),
                dev: 0x0807,
                inode: 131_076,
                mode: 0o010_620,
                uid: 2005,
                gid: 3005,
            });
            i += 1;
        }
    }
    assert_eq!(
        f.expect.len(),
        expect20.len() + 3,
        "every 2.0 record copied"
    );
    f.finish()
}

/// Format 2.2: the records of 2.1 and the kind 2.2 adds, the trees of an
/// image of several (`tree`: root and application name), first.
fn format_2_2() -> (Vec<u8>, Vec<Expect>) {
    let (img21, expect21) = format_2_1();
    let mut f = Fixture::new(&fixed_header(V2_2));
    f.put(Tree {
        root: 412,
        name: "sensor-logger".into(),
    });
    f.put(Tree {
        root: 9_413,
        name: "mqtt bridge \u{e9}".into(),
    });
    let mut r = ImageReader::inspect(&img21[..]).expect("2.1 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(
        f.expect.len(),
        expect21.len() + 2,
        "every 2.1 record copied"
    );
    f.finish()
}

/// The pseudo-terminal pair 2.3 adds: the master's and the slave's fds.
fn pty_fds() -> [Fd; 2] {
    [
        Fd {
            fd: 10,
            fd_flags: 1,
            ofd: 19,
            kind: FdKind::PtyMaster {
                flags: 0o4002,
                state: PtyMaster {
                    index: 7,
                    termios: Termios {
                        iflag: 0o2406,
                        oflag: 0o5,
                        cflag: 0o277,
                        lflag: 0o105073,
                        line: 2,
                        cc: (1..=19).collect(),
                    },
                    winsize: [33, 91, 640, 480],
                    packet: true,
                    locked: false,
                    output: b"n=41\r\n".to_vec(),
                    slave_uid: 2006,
                    slave_gid: 5,
                    slave_mode: 0o620,
                    foreground: 9_413,
                },
            },
        },
        Fd {
            fd: 11,
            fd_flags: 0,
            ofd: 20,
            kind: FdKind::PtySlave {
                flags: 0o2,
                state: PtySlave {
                    index: 7,
                    rdev: 0x8807,
                },
            },
        },
    ]
}

/// Format 2.3: the records of 2.2, then the fds of a pseudo-terminal pair
/// (the `FdKind` variants 2.3 appends).
fn format_2_3() -> (Vec<u8>, Vec<Expect>) {
    let (img22, expect22) = format_2_2();
    let mut f = Fixture::new(&fixed_header(V2_3));
    let mut r = ImageReader::inspect(&img22[..]).expect("2.2 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(f.expect.len(), expect22.len(), "every 2.2 record copied");
    for fd in pty_fds() {
        f.put(fd);
    }
    f.finish()
}

/// The fds 2.4 adds: process 9413's pidfd of its child 9417, and its
/// child's `/proc/9417/status`, read 37 bytes in.
fn late_fds() -> [Fd; 2] {
    [
        Fd {
            fd: 12,
            fd_flags: 1,
            ofd: 21,
            kind: FdKind::Pidfd {
                flags: 0o4002,
                state: Pidfd { pid: 9_417 },
            },
        },
        Fd {
            fd: 13,
            fd_flags: 0,
            ofd: 22,
            kind: FdKind::ProcFile {
                flags: 0o100000,
                state: ProcFile {
                    pid: 9_417,
                    path: RawPath::from("status"),
                    offset: 37,
                },
            },
        },
    ]
}

/// The kept TCP connection 2.4 adds: an IPv4 connection with bytes in
/// both queues (in the `tcp-queue` records of [`tcp_queues`]), the last
/// three of its send queue never sent.
fn tcp_fd() -> Fd {
    let mut local = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
    local.resize(16, 0);
    let mut peer = vec![2u8, 0, 0xc3, 0x51, 127, 0, 0, 1];
    peer.resize(16, 0);
    Fd {
        fd: 14,
        fd_flags: 1,
        ofd: 23,
        kind: FdKind::TcpConnection {
            flags: 0o4002,
            state: TcpConnection {
                socket: InetSocket {
                    family: 2,
                    sock_type: 1,
                    protocol: 6,
                    local,
                    peer,
                    listening: false,
                    backlog: 0,
                    tcp_state: 1,
                    v6only: false,
                    opts: SockOpts {
                        rcvbuf: 131_072,
                        sndbuf: 16_384,
                        nodelay: true,
                        ..SockOpts::default()
                    },
                    dropped: false,
                    error_pending: false,
                    queue: Vec::new(),
                },
                snd_seq: 0xfedc_ba98,
                rcv_seq: 0x0123_4567,
                send_len: 13,
                unsent: 3,
                recv_len: 6,
                mss: 65_483,
                options: 7,
                snd_wscale: 7,
                rcv_wscale: 9,
                timestamp: 0x5eed_0001,
                window: [0x0123_4560, 512, 65_535, 1_024, 0x0123_4500],
                send_queue: Vec::new(),
                recv_queue: Vec::new(),
            },
        },
    }
}

/// The queues of [`tcp_fd`]'s connection, as the records after its fd
/// carry them: the send queue in two pieces, then the receive queue.
fn tcp_queues() -> [TcpQueue; 3] {
    [
        TcpQueue {
            ofd: 23,
            send: true,
            offset: 0,
            bytes: b"sent, ".to_vec(),
        },
        TcpQueue {
            ofd: 23,
            send: true,
            offset: 6,
            bytes: b"unacked".to_vec(),
        },
        TcpQueue {
            ofd: 23,
            send: false,
            offset: 0,
            bytes: b"unread".to_vec(),
        },
    ]
}

/// Format 2.4: the records of 2.3, then a pidfd and a file of /proc, the
/// fd of a kept TCP connection (the `FdKind` variants 2.4 appends) and its
/// queues (the `tcp-queue` kind 2.4 adds).
fn format_2_4() -> (Vec<u8>, Vec<Expect>) {
    let (img23, expect23) = format_2_3();
    let mut f = Fixture::new(&fixed_header(V2_4));
    let mut r = ImageReader::inspect(&img23[..]).expect("2.3 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(f.expect.len(), expect23.len(), "every 2.3 record copied");
    for fd in late_fds() {
        f.put(fd);
    }
    f.put(tcp_fd());
    for q in tcp_queues() {
        f.put(q);
    }
    f.finish()
}

/// The task attributes 2.5 adds: every field set, two threads, three
/// advised mappings.
fn task_attrs() -> TaskAttrs {
    TaskAttrs {
        child_subreaper: true,
        dumpable: 0,
        thp_disable: true,
        oom_score_adj: 317,
        loginuid: 2_006,
        threads: vec![
            ThreadAttrs {
                tid: 9_413,
                policy: 3,
                reset_on_fork: true,
                rt_priority: 0,
                nice: 7,
                pdeathsig: 15,
            },
            ThreadAttrs {
                tid: 9_415,
                policy: 2,
                reset_on_fork: false,
                rt_priority: 42,
                nice: -6,
                pdeathsig: 0,
            },
        ],
        advice: vec![
            VmaAdvice {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0000_4000,
                flags: VmaAdvice::DONTFORK | VmaAdvice::WIPEONFORK,
            },
            VmaAdvice {
                start: 0x7f00_0001_0000,
                end: 0x7f00_0001_1000,
                flags: VmaAdvice::DONTDUMP,
            },
            VmaAdvice {
                start: 0x7f00_0020_0000,
                end: 0x7f00_0060_0000,
                flags: VmaAdvice::HUGEPAGE | VmaAdvice::MERGEABLE,
            },
        ],
    }
}

/// The half-closed TCP connection 2.5 adds: an IPv4 connection in
/// CLOSE_WAIT (8) whose peer's FIN came after two bytes the app has not
/// read (in the `tcp-queue` record of [`closing_queues`]).
fn closing_fd() -> Fd {
    let mut local = vec![2u8, 0, 0x1f, 0x91, 127, 0, 0, 1];
    local.resize(16, 0);
    let mut peer = vec![2u8, 0, 0xc3, 0x52, 127, 0, 0, 1];
    peer.resize(16, 0);
    Fd {
        fd: 15,
        fd_flags: 1,
        ofd: 24,
        kind: FdKind::TcpClosing {
            flags: 0o2,
            state: TcpConnection {
                socket: InetSocket {
                    family: 2,
                    sock_type: 1,
                    protocol: 6,
                    local,
                    peer,
                    listening: false,
                    backlog: 0,
                    tcp_state: 8,
                    v6only: false,
                    opts: SockOpts::default(),
                    dropped: false,
                    error_pending: false,
                    queue: Vec::new(),
                },
                snd_seq: 0x0000_1000,
                rcv_seq: 0x8000_0003,
                send_len: 0,
                unsent: 0,
                recv_len: 2,
                mss: 1_460,
                options: 2,
                snd_wscale: 0,
                rcv_wscale: 0,
                timestamp: 0,
                window: [0x8000_0003, 4_096, 8_192, 2_048, 0x8000_0003],
                send_queue: Vec::new(),
                recv_queue: Vec::new(),
            },
        },
    }
}

fn closing_queues() -> [TcpQueue; 1] {
    [TcpQueue {
        ofd: 24,
        send: false,
        offset: 0,
        bytes: b"ok".to_vec(),
    }]
}

/// Descriptors in flight 2.5 adds: the second queued message ("two") of
/// the UNIX socket at description 14 passes descriptions 15 and 14.
fn unix_rights() -> UnixRights {
    UnixRights {
        ofd: 14,
        message: 1,
        files: vec![15, 14],
    }
}

/// Socket options 2.5 adds, of the UNIX socket at description 14: its
/// peek offset and a one-instruction filter.
fn sock_extra() -> SockExtra {
    SockExtra {
        ofd: 14,
        opts: vec![
            RawSockOpt {
                level: 1,
                opt: 42,
                value: 2i32.to_le_bytes().to_vec(),
            },
            RawSockOpt {
                level: 1,
                opt: 26,
                value: vec![6, 0, 0, 0, 0, 0, 0, 0],
            },
        ],
    }
}

/// Format 2.5: the records of 2.4, then the `task-attrs` of the last task
/// (a kind 2.5 adds), the fd of a connection kept half-closed (the `FdKind`
/// variant 2.5 appends) with its queue, and a `unix-rights` and a
/// `sock-opts` record (the other kinds 2.5 adds).
fn format_2_5() -> (Vec<u8>, Vec<Expect>) {
    let (img24, expect24) = format_2_4();
    let mut f = Fixture::new(&fixed_header(V2_5));
    let mut r = ImageReader::inspect(&img24[..]).expect("2.4 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(f.expect.len(), expect24.len(), "every 2.4 record copied");
    f.put(task_attrs());
    f.put(closing_fd());
    for q in closing_queues() {
        f.put(q);
    }
    f.put(unix_rights());
    f.put(sock_extra());
    f.finish()
}

/// The description in flight 2.6 adds: an eventfd (count 5, semaphore,
/// `O_RDWR|O_NONBLOCK`) that only a queued message holds, as description 30.
fn flight_file() -> FlightFile {
    FlightFile {
        ofd: 30,
        kind: FdKind::EventFd {
            flags: 0o4002,
            state: EventFd {
                count: 5,
                semaphore: true,
            },
        },
    }
}

/// The waiting connections 2.6 adds: two on the listener at description
/// 14, from the clients at descriptions 31 and 15, in that order.
fn unix_waiting() -> UnixWaiting {
    UnixWaiting {
        ofd: 14,
        clients: vec![31, 15],
    }
}

/// The netlink socket 2.6 adds: a `NETLINK_ROUTE` socket bound to port id
/// 0x5e00_1234, in groups 5, 18 and 33, connected to group 1, with
/// `NETLINK_PKTINFO` and `NETLINK_GET_STRICT_CHK`.
fn netlink_fd() -> Fd {
    Fd {
        fd: 16,
        fd_flags: 1,
        ofd: 25,
        kind: FdKind::Netlink {
            flags: 0o4002,
            state: NetlinkSocket {
                sock_type: 3,
                protocol: 0,
                portid: 0x5e00_1234,
                groups: vec![0x0002_0010, 0x0000_0001],
                dst_portid: 0,
                dst_groups: 1,
                options: vec![3, 12],
                opts: SockOpts {
                    rcvbuf: 196_608,
                    sndbuf: 212_992,
                    ..SockOpts::default()
                },
            },
        },
    }
}

/// The packet socket 2.6 adds: `SOCK_DGRAM`, `ETH_P_IP` on interface 1
/// (`lo`), with `PACKET_VERSION` 1 and `PACKET_AUXDATA`.
fn packet_fd() -> Fd {
    Fd {
        fd: 17,
        fd_flags: 0,
        ofd: 26,
        kind: FdKind::Packet {
            flags: 0o2,
            state: PacketSocket {
                sock_type: 2,
                protocol: 0x0800,
                ifindex: 1,
                ifname: "lo".into(),
                options: vec![(10, 1), (8, 1)],
                opts: SockOpts::default(),
            },
        },
    }
}

/// Format 2.6: the records of 2.5, then the fds of a netlink socket and a
/// packet socket (the `FdKind` variants 2.6 appends), a `flight-file` and a
/// `unix-waiting` record (the kinds it adds).
fn format_2_6() -> (Vec<u8>, Vec<Expect>) {
    let (img25, expect25) = format_2_5();
    let mut f = Fixture::new(&fixed_header(V2_6));
    let mut r = ImageReader::inspect(&img25[..]).expect("2.5 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(f.expect.len(), expect25.len(), "every 2.5 record copied");
    f.put(netlink_fd());
    f.put(packet_fd());
    f.put(flight_file());
    f.put(unix_waiting());
    f.finish()
}

/// A strict thread, and a thread with a filter of its own.
fn thread_seccomps() -> [ThreadSeccomp; 2] {
    [
        ThreadSeccomp {
            tid: 100,
            own: OwnSeccomp::Strict,
        },
        ThreadSeccomp {
            tid: 101,
            own: OwnSeccomp::Filter(SeccompFilter {
                flags: 0,
                // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
                program: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
            }),
        },
    ]
}

/// The cgroup 2.7 adds: `/srv/app` with processes 100 and 101, its memory
/// and pids limits.
fn cgroup() -> Cgroup {
    Cgroup {
        path: "/srv/app".into(),
        pids: vec![100, 101],
        settings: vec![
            CgroupSetting {
                file: "memory.max".into(),
                value: "8388608".into(),
            },
            CgroupSetting {
                file: "pids.max".into(),
                value: "max".into(),
            },
        ],
    }
}

/// The AIO ring 2.7 adds: one page at 0x7e10_2000 (127 events), its
/// head at 126 and tail at 1, so its two completions wrap round its end.
fn aio_ring() -> AioRing {
    AioRing {
        start: 0x7e10_2000,
        size: 4096,
        id: 3,
        nr: 127,
        head: 126,
        tail: 1,
        magic: 0xa10a_10a1,
        compat_features: 1,
        incompat_features: 0,
        header_length: 32,
        first: 0,
        events: vec![
            IoEvent {
                data: 0x1234_abcd_5678_ef01,
                obj: 0x5500_0000_1040,
                res: 512,
                res2: 0,
            },
            IoEvent {
                data: 7,
                obj: 0x5500_0000_1080,
                res: -11,
                res2: 2,
            },
        ],
    }
}

/// The `membarrier` registrations 2.7 adds: private expedited (16) and
/// private expedited rseq (256).
fn membarrier() -> Membarrier {
    Membarrier {
        registered: Membarrier::PRIVATE_EXPEDITED | Membarrier::PRIVATE_EXPEDITED_RSEQ,
    }
}

/// The credentials 2.7 adds: message 2 of the socket at description 14,
/// sent by process 4102 as uid 1000, gid 100.
fn unix_creds() -> UnixCreds {
    UnixCreds {
        ofd: 14,
        message: 2,
        pid: 4102,
        uid: 1000,
        gid: 100,
    }
}

/// The fanotify group 2.7 adds: `FAN_CLASS_NOTIF` with `FAN_CLOEXEC` and
/// `FAN_NONBLOCK` (0x3), events opened `O_RDONLY|O_LARGEFILE`, an inode
/// mark of `FAN_MODIFY|FAN_CLOSE_WRITE` ignoring `FAN_OPEN`, and a mount
/// mark of `FAN_OPEN`, the newest first.
fn fanotify_fd() -> Fd {
    Fd {
        fd: 18,
        fd_flags: 1,
        ofd: 33,
        kind: FdKind::Fanotify {
            flags: 0o4000,
            state: Fanotify {
                flags: 0x3,
                event_flags: 0o100000,
                marks: vec![
                    FanotifyMark {
                        object: FanotifyObject::Mount,
                        flags: 0,
                        mask: 0x20,
                        ignored_mask: 0,
                        path: RawPath(b"/srv".to_vec()),
                    },
                    FanotifyMark {
                        object: FanotifyObject::Inode,
                        flags: 0,
                        mask: 0xa,
                        ignored_mask: 0x20,
                        path: RawPath(b"/srv/watched".to_vec()),
                    },
                ],
            },
        },
    }
}

/// Format 2.7: the records of 2.6, then the fd of a fanotify group (the
/// `FdKind` variant 2.7 appends) and the kinds it adds: two
/// `thread-seccomp` records, a `cgroup`, an `aio-ring`, a `membarrier`
/// and a `unix-creds` record.
fn format_2_7() -> (Vec<u8>, Vec<Expect>) {
    let (img26, expect26) = format_2_6();
    let mut f = Fixture::new(&fixed_header(V2_7));
    let mut r = ImageReader::inspect(&img26[..]).expect("2.6 image");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            f.pages(info.vaddr, buf[..info.len].to_vec(), info.codec);
        } else {
            rec.kind()
                .visit(Again(&rec, &mut f))
                .expect("a state record");
        }
    }
    assert_eq!(f.expect.len(), expect26.len(), "every 2.6 record copied");
    f.put(fanotify_fd());
    for t in thread_seccomps() {
        f.put(t);
    }
    f.put(cgroup());
    f.put(aio_ring());
    f.put(membarrier());
    f.put(unix_creds());
    f.finish()
}

/// Writes a decoded record again, as a fixture record.
struct Again<'r, 'a, 'f>(&'r Record<'a>, &'f mut Fixture);

impl KindVisitor for Again<'_, '_, '_> {
    type Output = ();

    fn visit<T: StateRecord>(self) {
        let v: T = self.0.decode().expect("decode");
        self.1.w.write(&v).expect("record");
        self.1.expect.push(Expect::State(T::KIND, format!("{v:?}")));
    }
}

/// An image of format 1.1: a header of that version and one record, as
/// torpor 1.x wrote them (the 1.x framing is the same).
fn format_1_1() -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new(), &fixed_header(V1_1)).expect("writer");
    w.write(&PipeData {
        id: 1,
        capacity: 4096,
        bytes: b"old".to_vec(),
    })
    .expect("pipe");
    w.finish().expect("finish").0
}

/// Decodes a state record to the `Debug` form of its kind's payload.
struct Shown<'r, 'a>(&'r Record<'a>);

impl KindVisitor for Shown<'_, '_> {
    type Output = String;

    fn visit<T: StateRecord>(self) -> String {
        let v: T = self
            .0
            .decode()
            .unwrap_or_else(|e| panic!("{} record: {e}", self.0.kind()));
        format!("{v:?}")
    }
}

/// Reads an image back as the list [`Fixture`] writes.
fn read_back(img: &[u8]) -> (Header, Vec<Expect>) {
    let mut r = ImageReader::inspect(img).expect("image opens");
    let header = r.header().clone();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        let kind = rec.kind();
        if kind == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            got.push(Expect::Pages {
                vaddr: info.vaddr,
                pages: info.pages,
                codec: info.codec,
                data: buf[..info.len].to_vec(),
            });
        } else {
            let shown = kind.visit(Shown(&rec)).expect("a state record");
            got.push(Expect::State(kind, shown));
        }
    }
    assert!(r.summary().is_some(), "trailer checked");
    (header, got)
}

#[test]
fn format_2_0_image_reads_back_every_record_exactly() {
    let img = read_image(V2_0);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_0));
    let (_, expect) = format_2_0();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.0 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 31);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

/// A few fields spelled out, independent of the fixture code: what a
/// misread layout would most likely garble first.
#[test]
fn format_2_0_image_spot_values() {
    let img = read_image(V2_0);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 0 });
    assert_eq!(r.header().created_ns, 1_700_000_000_000_000_123);
    let mut seen = 0;
    while let Some(rec) = r.next_record().expect("record") {
        match rec.kind() {
            Kind::Clocks => {
                let c: Clocks = rec.decode().expect("clocks");
                assert_eq!(c.realtime_ns, 1_700_000_001_000_000_789);
                assert_eq!(c.monotonic_offset_ns, -5_000_000_001);
                assert!(c.own_namespace && !c.kernel_timens);
                seen += 1;
            }
            Kind::Task => {
                let t: Task = rec.decode().expect("task");
                assert_eq!((t.pid, t.ppid, t.pgid, t.sid), (412, 1, 410, 400));
                assert_eq!(t.creds.fsgid, 3004);
                assert_eq!(t.ctty, 0x8801);
                assert_eq!(t.locks[0].end, Some(199));
                assert!(t.stopped);
                seen += 1;
            }
            Kind::SysvShm => {
                let s: SysvShm = rec.decode().expect("sysv");
                assert_eq!((s.cpid, s.created_key), (321, 0x5678));
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 3);
}

#[test]
fn format_2_1_image_reads_back_every_record_exactly() {
    let img = read_image(V2_1);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_1));
    let (_, expect) = format_2_1();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.1 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 34);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

#[test]
fn format_2_2_image_reads_back_every_record_exactly() {
    let img = read_image(V2_2);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_2));
    let (_, expect) = format_2_2();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.2 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 36);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

#[test]
fn format_2_3_image_reads_back_every_record_exactly() {
    let img = read_image(V2_3);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_3));
    let (_, expect) = format_2_3();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.3 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 38);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

/// The late fds 2.4 adds, and the bytes of their records.
#[test]
fn format_2_4_late_fds_spot_values() {
    let img = read_image(V2_4);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 4 });
    let mut late = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::Pidfd { .. } | FdKind::ProcFile { .. }) {
                late.push(fd);
            }
        }
    }
    assert_eq!(late, late_fds());
    // The pidfd: fd 12 (zigzag 24), fd_flags 1, ofd 21, the variant's index
    // 21 (the 22nd), flags 0o4002 (varint 0x82 0x10), pid 9417 (zigzag
    // 18834, varint 0x92 0x93 0x01).
    let pidfd = [24u8, 1, 21, 21, 0x82, 0x10, 0x92, 0x93, 0x01];
    assert!(
        img.windows(pidfd.len()).any(|w| w == pidfd),
        "the pidfd's record bytes"
    );
    // The /proc file: fd 13 (26), fd_flags 0, ofd 22, variant 22, flags
    // 0o100000 (varint 0x80 0x80 0x02), pid 9417, the path's length 6 and
    // bytes, offset 37.
    let mut proc_file = vec![26u8, 0, 22, 22, 0x80, 0x80, 0x02, 0x92, 0x93, 0x01, 6];
    proc_file.extend_from_slice(b"status");
    proc_file.push(37);
    assert!(
        img.windows(proc_file.len()).any(|w| w == proc_file),
        "the /proc file's record bytes"
    );
}

/// The values of the variants 2.3 adds, spelled out, and the bytes of the
/// slave's record.
#[test]
fn format_2_3_image_spot_values() {
    let img = read_image(V2_3);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 3 });
    let mut ptys = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::PtyMaster { .. } | FdKind::PtySlave { .. }) {
                ptys.push(fd);
            }
        }
    }
    assert_eq!(ptys, pty_fds());
    let FdKind::PtyMaster { state: m, .. } = &ptys[0].kind else {
        panic!("a master first")
    };
    assert_eq!((m.index, m.winsize), (7, [33, 91, 640, 480]));
    assert_eq!(m.termios.cc.len(), 19);
    assert_eq!(m.output, b"n=41\r\n");
    // The slave's fd record: fd 11 (zigzag 22), fd_flags 0, ofd 20, the
    // variant's index 20 (the 21st), flags 0o2, index 7, rdev 0x8807
    // (varint 0x87 0x90 0x02).
    let payload = [22u8, 0, 20, 20, 2, 7, 0x87, 0x90, 0x02];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the slave's record bytes"
    );
}

#[test]
fn format_2_4_image_reads_back_every_record_exactly() {
    let img = read_image(V2_4);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_4));
    let (_, expect) = format_2_4();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.4 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 44);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

/// The kept TCP connection 2.4 adds, spelled out.
#[test]
fn format_2_4_tcp_spot_values() {
    let img = read_image(V2_4);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 4 });
    let mut tcp = Vec::new();
    let mut queues = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::TcpConnection { .. }) {
                tcp.push(fd);
            }
        }
        if rec.kind() == Kind::TcpQueue {
            queues.push(rec.decode::<TcpQueue>().expect("tcp-queue"));
        }
    }
    assert_eq!(tcp, [tcp_fd()]);
    assert_eq!(queues, tcp_queues());
    let FdKind::TcpConnection { state: c, .. } = &tcp[0].kind else {
        panic!("a kept connection")
    };
    assert_eq!((c.snd_seq, c.rcv_seq), (0xfedc_ba98, 0x0123_4567));
    assert_eq!((c.send_len, c.unsent, c.recv_len), (13, 3, 6));
    assert_eq!(
        (c.mss, c.options, c.snd_wscale, c.rcv_wscale),
        (65_483, 7, 7, 9)
    );
    assert_eq!(c.socket.local[2..8], [0x1f, 0x90, 127, 0, 0, 1]);
    // The fd record starts: fd 14 (zigzag 28), fd_flags 1, ofd 23, the
    // variant's index 23 (the 24th), flags 0o4002 (varint 0x82 0x10),
    // family 2 (zigzag 4), type 1 (2), protocol 6 (12).
    let payload = [28u8, 1, 23, 23, 0x82, 0x10, 4, 2, 12];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the connection's record bytes"
    );
}

#[test]
fn format_2_5_image_reads_back_every_record_exactly() {
    let img = read_image(V2_5);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_5));
    let (_, expect) = format_2_5();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.5 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 49);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

#[test]
fn format_2_6_image_reads_back_every_record_exactly() {
    let img = read_image(V2_6);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_6));
    let (_, expect) = format_2_6();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.6 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 53);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

#[test]
fn format_2_7_image_reads_back_every_record_exactly() {
    let img = read_image(V2_7);
    let (header, got) = read_back(&img);
    assert_eq!(header, fixed_header(V2_7));
    let (_, expect) = format_2_7();
    assert_eq!(got.len(), expect.len(), "record count");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "record {i} of the 2.7 image");
    }
    let s = verify(&img[..]).expect("verify");
    assert_eq!(s.records, 60);
    assert_eq!(s.pages, 6);
    assert_eq!(s.bytes, img.len() as u64);
}

/// The thread-seccomp records 2.7 adds, and their bytes.
#[test]
fn format_2_7_thread_seccomp_spot_values() {
    let img = read_image(V2_7);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, V2_7);
    let mut threads = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::ThreadSeccomp {
            threads.push(rec.decode::<ThreadSeccomp>().expect("thread-seccomp"));
        }
    }
    assert_eq!(threads, thread_seccomps());
    assert_eq!(threads[0].tid, 100);
    assert_eq!(threads[0].own, OwnSeccomp::Strict);
    let OwnSeccomp::Filter(f) = &threads[1].own else {
        panic!("a filter")
    };
    assert_eq!((threads[1].tid, f.flags, f.program.len()), (101, 0, 8));
    // The kind byte 28, then tid 100 (zigzag: 200, 0xc8 0x01), variant 0
    // (`Strict`).
    let strict = [28u8, 0xc8, 0x01, 0];
    // Tid 101 (202), variant 1 (`Filter`), flags 0, 8 program bytes.
    let filter = [28u8, 0xca, 0x01, 1, 0, 8, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
    for (what, payload) in [("strict", &strict[..]), ("filter", &filter[..])] {
        assert!(
            img.windows(payload.len()).any(|w| w == payload),
            "the {what} thread-seccomp record's bytes"
        );
    }
}

/// The AIO ring and `membarrier` registrations 2.7 adds, and the bytes of
/// their records.
#[test]
fn format_2_7_aio_ring_and_membarrier_spot_values() {
    let img = read_image(V2_7);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 7 });
    let (mut rings, mut barriers) = (Vec::new(), Vec::new());
    while let Some(rec) = r.next_record().expect("record") {
        match rec.kind() {
            Kind::AioRing => rings.push(rec.decode::<AioRing>().expect("aio-ring")),
            Kind::Membarrier => barriers.push(rec.decode::<Membarrier>().expect("membarrier")),
            _ => {}
        }
    }
    assert_eq!(rings, [aio_ring()]);
    assert_eq!(rings[0].pending(), 2);
    assert_eq!(rings[0].events[1].res, -11);
    assert_eq!(barriers, [membarrier()]);
    assert_eq!(barriers[0].registered, 272);
    // The kind byte 30, then start 0x7e10_2000 (varint 0x80 0xc0 0xc0
    // 0xf0 0x07), size 4096 (0x80 0x20), id 3, nr 127, head 126, tail 1.
    let ring = [
        30u8, 0x80, 0xc0, 0xc0, 0xf0, 0x07, 0x80, 0x20, 3, 127, 126, 1,
    ];
    assert!(
        img.windows(ring.len()).any(|w| w == ring),
        "the aio-ring record's bytes"
    );
    // The kind byte 31, then 272 (0x90 0x02).
    let barrier = [31u8, 0x90, 0x02];
    assert!(
        img.windows(barrier.len()).any(|w| w == barrier),
        "the membarrier record's bytes"
    );
}

/// The fanotify group 2.7 adds, and the first bytes of its fd record.
#[test]
fn format_2_7_fanotify_spot_values() {
    let img = read_image(V2_7);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    let mut groups = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let f = rec.decode::<Fd>().expect("fd");
            if matches!(f.kind, FdKind::Fanotify { .. }) {
                groups.push(f);
            }
        }
    }
    assert_eq!(groups, [fanotify_fd()]);
    let FdKind::Fanotify { state, .. } = &groups[0].kind else {
        panic!("a fanotify group")
    };
    assert_eq!((state.flags, state.marks.len()), (3, 2));
    assert_eq!(state.marks[1].path, RawPath(b"/srv/watched".to_vec()));
    // The kind byte 5 (fd), fd 18 (zigzag 36), fd flags 1, ofd 33, the
    // `FdKind` variant's index 27 (`Fanotify`), flags 0o4000 (2048: 0x80
    // 0x10), group flags 3, event flags 0o100000 (32768: 0x80 0x80 0x02),
    // two marks.
    let payload = [5u8, 36, 1, 33, 27, 0x80, 0x10, 3, 0x80, 0x80, 0x02, 2];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the fanotify fd record's bytes"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_7_image() {
    assert!(
        format_2_7().0 == read_image(V2_7),
        "the writer's 2.7 image differs from tests/images/format-2.7.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

/// The description in flight 2.6 adds, and the bytes of its record.
#[test]
fn format_2_6_flight_file_spot_values() {
    let img = read_image(V2_6);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 6 });
    let mut flight = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::FlightFile {
            flight.push(rec.decode::<FlightFile>().expect("flight-file"));
        }
    }
    assert_eq!(flight, [flight_file()]);
    let FdKind::EventFd { flags, state } = &flight[0].kind else {
        panic!("an eventfd")
    };
    assert_eq!((*flags, state.count, state.semaphore), (0o4002, 5, true));
    // The kind byte 26, then ofd 30, the `FdKind` variant's index 8
    // (`EventFd`), flags 0o4002 (2050: 0x82 0x10), count 5, semaphore.
    let payload = [26u8, 30, 8, 0x82, 0x10, 5, 1];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the flight-file record's bytes"
    );
}

/// The waiting connections 2.6 adds, and the bytes of their record.
#[test]
fn format_2_6_unix_waiting_spot_values() {
    let img = read_image(V2_6);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    let mut waiting = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::UnixWaiting {
            waiting.push(rec.decode::<UnixWaiting>().expect("unix-waiting"));
        }
    }
    assert_eq!(waiting, [unix_waiting()]);
    assert_eq!(waiting[0].clients, [31, 15]);
    // The kind byte 27, then ofd 14, two clients: 31 and 15.
    let payload = [27u8, 14, 2, 31, 15];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the unix-waiting record's bytes"
    );
}

/// The cgroup 2.7 adds, and the bytes of its record.
#[test]
fn format_2_7_cgroup_spot_values() {
    let img = read_image(V2_7);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 7 });
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Cgroup {
            got.push(rec.decode::<Cgroup>().expect("cgroup"));
        }
    }
    assert_eq!(got, [cgroup()]);
    assert_eq!(got[0].settings[0].value, "8388608");
    // The kind byte 29, the path (8 bytes), two pids (100; 101 as the
    // zigzag varint 202 = 0xca 0x01), two settings, the first
    // "memory.max" (10 bytes).
    let mut payload = vec![29u8, 8];
    payload.extend_from_slice(b"/srv/app");
    payload.extend_from_slice(&[2, 0xc8, 0x01, 0xca, 0x01, 2, 10]);
    payload.extend_from_slice(b"memory.max");
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the cgroup record's bytes"
    );
}

/// The credentials 2.7 adds, and the bytes of their record.
#[test]
fn format_2_7_unix_creds_spot_values() {
    let img = read_image(V2_7);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 7 });
    let mut creds = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::UnixCreds {
            creds.push(rec.decode::<UnixCreds>().expect("unix-creds"));
        }
    }
    assert_eq!(creds, [unix_creds()]);
    assert_eq!(
        (creds[0].pid, creds[0].uid, creds[0].gid),
        (4102, 1000, 100)
    );
    // The kind byte 32, then ofd 14, message 2, pid 4102 (zigzag 8204:
    // 0x8c 0x40), uid 1000 (0xe8 0x07), gid 100.
    let payload = [32u8, 14, 2, 0x8c, 0x40, 0xe8, 0x07, 100];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the unix-creds record's bytes"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_6_image() {
    assert!(
        format_2_6().0 == read_image(V2_6),
        "the writer's 2.6 image differs from tests/images/format-2.6.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

/// The values of the record 2.5 adds, spelled out, and its first bytes.
#[test]
fn format_2_5_image_spot_values() {
    let img = read_image(V2_5);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 5 });
    let mut attrs = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::TaskAttrs {
            attrs.push(rec.decode::<TaskAttrs>().expect("task-attrs"));
        }
    }
    assert_eq!(attrs, [task_attrs()]);
    let a = &attrs[0];
    assert_eq!((a.dumpable, a.oom_score_adj, a.loginuid), (0, 317, 2_006));
    assert_eq!(a.threads[1].policy, 2);
    assert_eq!(a.threads[1].rt_priority, 42);
    assert_eq!(a.threads[1].nice, -6);
    assert_eq!(a.advice[2].flags, 40);
    // subreaper 1, dumpable 0, thp 1, oom 317 (zigzag 634: 0xfa 0x04),
    // loginuid 2006 (0xd6 0x0f), two threads, tid 9413 (zigzag 18826:
    // 0x8a 0x93 0x01), policy 3, reset 1, priority 0, nice 7 (zigzag 14),
    // signal 15 (zigzag 30).
    let payload = [
        1u8, 0, 1, 0xfa, 0x04, 0xd6, 0x0f, 2, 0x8a, 0x93, 0x01, 3, 1, 0, 14, 30,
    ];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the task-attrs record's bytes"
    );
}

/// The half-closed connection 2.5 adds, spelled out.
#[test]
fn format_2_5_closing_tcp_spot_values() {
    let img = read_image(V2_5);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 5 });
    let mut tcp = Vec::new();
    let mut queues = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::TcpClosing { .. }) {
                tcp.push(fd);
            }
        }
        if rec.kind() == Kind::TcpQueue {
            let q = rec.decode::<TcpQueue>().expect("tcp-queue");
            if q.ofd == 24 {
                queues.push(q);
            }
        }
    }
    assert_eq!(tcp, [closing_fd()]);
    assert_eq!(queues, closing_queues());
    let FdKind::TcpClosing { state: c, .. } = &tcp[0].kind else {
        panic!("a half-closed connection")
    };
    assert_eq!(c.socket.tcp_state, 8);
    assert_eq!((c.snd_seq, c.rcv_seq), (0x1000, 0x8000_0003));
    assert_eq!((c.send_len, c.unsent, c.recv_len), (0, 0, 2));
    // The fd record starts: fd 15 (zigzag 30), fd_flags 1, ofd 24, the
    // variant's index 24 (the 25th), flags 0o2, family 2 (zigzag 4), type
    // 1 (2), protocol 6 (12).
    let payload = [30u8, 1, 24, 24, 2, 4, 2, 12];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the connection's record bytes"
    );
    // ... and its state byte 8 after the local and peer addresses (16
    // bytes each, with their lengths), not listening, backlog 0.
    let mut state = vec![16u8, 2, 0, 0x1f, 0x91, 127, 0, 0, 1];
    state.extend_from_slice(&[0; 8]);
    state.extend_from_slice(&[16, 2, 0, 0xc3, 0x52, 127, 0, 0, 1]);
    state.extend_from_slice(&[0; 8]);
    state.extend_from_slice(&[0, 0, 8]);
    assert!(
        img.windows(state.len()).any(|w| w == state),
        "the connection's addresses and state"
    );
}

/// The descriptors in flight 2.5 adds, and the bytes of their record.
#[test]
fn format_2_5_unix_rights_spot_values() {
    let img = read_image(V2_5);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    let mut rights = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::UnixRights {
            rights.push(rec.decode::<UnixRights>().expect("unix-rights"));
        }
    }
    assert_eq!(rights, [unix_rights()]);
    assert_eq!(rights[0].files, [15, 14]);
    // The kind byte 24, then ofd 14, message 1, two files: 15 and 14.
    let payload = [24u8, 14, 1, 2, 15, 14];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the unix-rights record's bytes"
    );
}

/// The socket options 2.5 adds, and the bytes of their record.
#[test]
fn format_2_5_sock_opts_spot_values() {
    let img = read_image(V2_5);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    let mut extra = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::SockExtra {
            extra.push(rec.decode::<SockExtra>().expect("sock-opts"));
        }
    }
    assert_eq!(extra, [sock_extra()]);
    // The kind byte 25, ofd 14, two options: level 1 (zigzag 2), name 42
    // (zigzag 84), 4 bytes of 2; level 1, name 26 (zigzag 52), the 8 bytes
    // of `ret #0`.
    let payload = [
        25u8, 14, 2, 2, 84, 4, 2, 0, 0, 0, 2, 52, 8, 6, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the sock-opts record's bytes"
    );
}

/// The netlink socket 2.6 adds, spelled out, and its record's bytes.
#[test]
fn format_2_6_netlink_spot_values() {
    let img = read_image(V2_6);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 6 });
    let mut fds = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::Netlink { .. }) {
                fds.push(fd);
            }
        }
    }
    assert_eq!(fds, [netlink_fd()]);
    let FdKind::Netlink { state: n, .. } = &fds[0].kind else {
        panic!("a netlink socket")
    };
    assert_eq!((n.sock_type, n.protocol, n.portid), (3, 0, 0x5e00_1234));
    assert_eq!(n.groups, [0x0002_0010, 1]);
    assert_eq!((n.dst_portid, n.dst_groups), (0, 1));
    assert_eq!(n.options, [3, 12]);
    // The fd record: fd 16 (zigzag 32), fd_flags 1, ofd 25, the variant's
    // index 25 (the 26th), flags 0o4002 (varint 0x82 0x10), type 3
    // (zigzag 6), protocol 0, port id 0x5e001234 (varint 0xb4 0xa4 0x80
    // 0xf0 0x05), two group words 0x20010 (0x90 0x80 0x08) and 1, no
    // destination port, groups 1, options 3 and 12 (zigzag 6 and 24).
    let payload = [
        32u8, 1, 25, 25, 0x82, 0x10, 6, 0, 0xb4, 0xa4, 0x80, 0xf0, 0x05, 2, 0x90, 0x80, 0x08, 1, 0,
        1, 2, 6, 24,
    ];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the netlink socket's record bytes"
    );
}

/// The packet socket 2.6 adds, spelled out, and its record's bytes.
#[test]
fn format_2_6_packet_spot_values() {
    let img = read_image(V2_6);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    let mut fds = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Fd {
            let fd = rec.decode::<Fd>().expect("fd");
            if matches!(fd.kind, FdKind::Packet { .. }) {
                fds.push(fd);
            }
        }
    }
    assert_eq!(fds, [packet_fd()]);
    let FdKind::Packet { state: p, .. } = &fds[0].kind else {
        panic!("a packet socket")
    };
    assert_eq!((p.sock_type, p.protocol, p.ifindex), (2, 0x0800, 1));
    assert_eq!(p.ifname, "lo");
    assert_eq!(p.options, [(10, 1), (8, 1)]);
    // The fd record: fd 17 (zigzag 34), fd_flags 0, ofd 26, the variant's
    // index 26 (the 27th), flags 0o2, type 2 (zigzag 4), protocol 0x800
    // (varint 0x80 0x10), ifindex 1 (zigzag 2), "lo", two options: 10
    // and 1 (zigzag 20, 2), 8 and 1 (16, 2).
    let payload = [
        34u8, 0, 26, 26, 2, 4, 0x80, 0x10, 2, 2, b'l', b'o', 2, 20, 2, 16, 2,
    ];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the packet socket's record bytes"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_5_image() {
    assert!(
        format_2_5().0 == read_image(V2_5),
        "the writer's 2.5 image differs from tests/images/format-2.5.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_4_image() {
    assert!(
        format_2_4().0 == read_image(V2_4),
        "the writer's 2.4 image differs from tests/images/format-2.4.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_3_image() {
    assert!(
        format_2_3().0 == read_image(V2_3),
        "the writer's 2.3 image differs from tests/images/format-2.3.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

/// The values of the kind 2.2 adds, spelled out.
#[test]
fn format_2_2_image_spot_values() {
    let img = read_image(V2_2);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 2 });
    let mut trees = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Tree {
            trees.push(rec.decode::<Tree>().expect("tree"));
        }
    }
    assert_eq!(
        trees,
        [
            Tree {
                root: 412,
                name: "sensor-logger".into()
            },
            Tree {
                root: 9_413,
                name: "mqtt bridge \u{e9}".into()
            }
        ]
    );
    // The record's bytes: the root as a zigzag varint, the name as a
    // length and its UTF-8.
    let (kind, payload) = (21u8, [0x8a, 0x93, 0x01, 14]);
    let at = img
        .windows(5)
        .position(|w| w[0] == kind && w[1..] == payload)
        .expect("the second tree record's kind and payload");
    assert_eq!(&img[at + 5..at + 19], "mqtt bridge \u{e9}".as_bytes());
}

#[test]
fn the_writer_still_makes_the_checked_in_2_2_image() {
    assert!(
        format_2_2().0 == read_image(V2_2),
        "the writer's 2.2 image differs from tests/images/format-2.2.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

/// The values of the kinds 2.1 adds, spelled out.
#[test]
fn format_2_1_image_spot_values() {
    let img = read_image(V2_1);
    let mut r = ImageReader::inspect(&img[..]).expect("image opens");
    assert_eq!(r.header().version, FormatVersion { major: 2, minor: 1 });
    let mut owners = Vec::new();
    let mut asked = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        match rec.kind() {
            Kind::FileOwner => owners.push(rec.decode::<FileOwner>().expect("file-owner")),
            Kind::RequestedBy => asked.push(rec.decode::<RequestedBy>().expect("requested-by")),
            _ => {}
        }
    }
    assert_eq!(
        asked,
        [RequestedBy {
            uid: 4001,
            gid: 4002,
            groups: vec![4003, 4004]
        }]
    );
    assert_eq!(owners.len(), 2);
    assert_eq!(owners[0].path, RawPath(b"/var/log/sensor.log".to_vec()));
    assert_eq!(
        (owners[0].dev, owners[0].inode, owners[0].mode),
        (0x0806, 131_075, 0o100_640)
    );
    assert_eq!((owners[0].uid, owners[0].gid), (2004, 3004));
    assert_eq!(
        owners[1].path,
        RawPath(b"/var/lib/logger/fifo\xfe".to_vec())
    );
    assert_eq!(
        (owners[1].dev, owners[1].inode, owners[1].mode),
        (0x0807, 131_076, 0o010_620)
    );
    assert_eq!((owners[1].uid, owners[1].gid), (2005, 3005));
}

#[test]
fn the_writer_still_makes_the_checked_in_2_1_image() {
    assert!(
        format_2_1().0 == read_image(V2_1),
        "the writer's 2.1 image differs from tests/images/format-2.1.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

#[test]
fn the_writer_still_makes_the_checked_in_2_0_image() {
    assert!(
        format_2_0().0 == read_image(V2_0),
        "the writer's 2.0 image differs from tests/images/format-2.0.img: a \
         record type changed shape (a new major version, see the module doc) \
         or the fixture changed (rewrite the files, see the module doc)"
    );
}

#[test]
fn every_accepted_version_has_an_image_and_the_current_one_every_kind() {
    assert_eq!(
        FORMAT, V2_7,
        "a new format needs its image and fixture here"
    );
    let (_, got) = read_back(&read_image(FORMAT));
    let mut kinds: Vec<Kind> = got
        .iter()
        .map(|e| match e {
            Expect::State(k, _) => *k,
            Expect::Pages { .. } => Kind::Pages,
        })
        .chain([Kind::Header, Kind::Trailer])
        .collect();
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    assert_eq!(kinds, Kind::ALL);
    let codecs: Vec<Codec> = got
        .iter()
        .filter_map(|e| match e {
            Expect::Pages { codec, .. } => Some(*codec),
            Expect::State(..) => None,
        })
        .collect();
    assert_eq!(codecs, [Codec::Raw, Codec::Lz4, Codec::Zero]);
}

#[test]
fn format_1_1_image_is_refused_naming_both_versions() {
    let img = read_image(V1_1);
    assert_eq!(img, format_1_1(), "tests/images/format-1.1.img changed");
    let message = "image format 1.1 is not supported (this torpor reads format 2.7)";
    let e = ImageReader::inspect(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::UnsupportedVersion { found, supported }
            if found == V1_1 && supported == V2_7),
        "{e:?}"
    );
    assert_eq!(e.to_string(), message);
    assert_eq!(verify(&img[..]).unwrap_err().to_string(), message);

    let out = Command::new(env!("CARGO_BIN_EXE_torpor"))
        .arg("show")
        .arg(image_path(V1_1))
        .output()
        .expect("run torpor show");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no partial output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(message), "{stderr}");
}

/// The checked-in images and the fuzzer's seeds are what the fixtures make.
/// After a deliberate format change, `TORPOR_WRITE_IMAGES=1 cargo test -p
/// torpor --test image_format` rewrites them first.
#[test]
fn checked_in_images_and_seeds_are_the_fixtures() {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/image_reader");
    let (full, _) = format_2_7();
    let empty = ImageWriter::new(Vec::new(), &fixed_header(FORMAT))
        .and_then(|w| w.finish())
        .expect("empty image")
        .0;
    let files = [
        (image_path(V2_0), format_2_0().0),
        (image_path(V2_1), format_2_1().0),
        (image_path(V2_2), format_2_2().0),
        (image_path(V2_3), format_2_3().0),
        (image_path(V2_4), format_2_4().0),
        (image_path(V2_5), format_2_5().0),
        (image_path(V2_6), format_2_6().0),
        (image_path(V2_7), full.clone()),
        (image_path(V1_1), format_1_1()),
        (seeds.join("empty"), empty),
        (seeds.join("full"), full),
    ];
    if std::env::var_os("TORPOR_WRITE_IMAGES").is_some() {
        std::fs::create_dir_all(images_dir()).expect("images dir");
        std::fs::create_dir_all(&seeds).expect("seeds dir");
        for (path, bytes) in &files {
            std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    for (path, bytes) in &files {
        let on_disk = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == *bytes,
            "{} differs from its fixture; after a deliberate format change run \
             TORPOR_WRITE_IMAGES=1 cargo test -p torpor --test image_format",
            path.display()
        );
    }
}
