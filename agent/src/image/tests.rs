use super::records::*;
use super::*;

fn header() -> Header {
    Header {
        magic: MAGIC,
        version: FORMAT,
        arch: Arch::host(),
        page_size: host_page_size(),
        kernel_release: "6.1.0-rpi7-rpi-v6".into(),
        boot_id: "0f6c1c52-94b1-4b8f-a6f1-3e0e4e3f2a11".into(),
        host_name: "zero".into(),
        created_ns: 1_700_000_000_123_456_789,
        torpor_version: crate::VERSION.into(),
    }
}

fn task() -> Task {
    Task {
        pid: 412,
        ppid: 1,
        pgid: 412,
        sid: 400,
        comm: "sensor-logger".into(),
        creds: Creds {
            uid: 1000,
            euid: 1000,
            suid: 1000,
            fsuid: 1000,
            gid: 100,
            egid: 100,
            sgid: 100,
            fsgid: 100,
            groups: vec![20, 44, 100],
            cap_bounding: 0x1ff_ffff_ffff,
            ..Creds::default()
        },
        umask: 0o022,
        cwd: "/var/lib/logger".into(),
        root: "/".into(),
        exe: RawPath(b"/usr/bin/logger\xff".to_vec()),
        rlimits: vec![
            Rlimit {
                resource: 7,
                cur: 1024,
                max: 4096,
            },
            Rlimit {
                resource: 3,
                cur: 8 << 20,
                max: u64::MAX,
            },
        ],
        sigactions: vec![SigAction {
            signo: 15,
            handler: 0x1_0450,
            flags: 0x0400_0000,
            restorer: 0xb6f0_1234,
            mask: 1 << 13,
        }],
        sigmask: 1 << 9,
        pending: vec![SigInfo {
            signo: 10,
            errno: 0,
            code: 0,
            raw: vec![10; 128],
        }],
        itimers: ITimers {
            real: ITimer {
                interval_ns: 1_000_000_000,
                value_ns: 250_000_000,
            },
            ..ITimers::default()
        },
        personality: 0x0080_0000,
        posix_timers: vec![],
        exit_status: None,
        ctty: 0,
        locks: vec![],
        stopped: false,
    }
}

fn thread() -> Thread {
    Thread {
        tid: 413,
        regs: Regs {
            arch: Arch::Arm,
            gpr: (0..72).collect(),
            fpu: vec![0xab; 260],
        },
        tls: 0xb6ff_e4c0,
        sigmask: 0,
        altstack: AltStack {
            sp: 0xbe80_0000,
            flags: 0,
            size: 8192,
        },
        pending: vec![],
        tid_address: 0xb6ff_e528,
        robust_list: RobustList {
            head: 0xb6ff_e530,
            len: 12,
        },
        comm: "sensor-logger".into(),
        rseq: None,
    }
}

fn vma() -> Vma {
    Vma {
        start: 0x1_0000,
        end: 0x2_3000,
        prot: 5,
        flags: 2,
        offset: 0,
        kind: VmaKind::PrivateFile,
        file: Some(FileId {
            path: "/usr/bin/logger".into(),
            dev: 0xb302,
            inode: 131_077,
            size: 77_824,
            mtime_ns: 1_699_999_999_000_000_001,
        }),
    }
}

fn fds() -> Vec<Fd> {
    let file = FileId {
        path: "/var/log/l.txt".into(),
        dev: 0xb302,
        inode: 9,
        size: 77,
        mtime_ns: -5,
    };
    [
        FdKind::Regular {
            file,
            flags: 0o2001,
            offset: 77,
        },
        FdKind::Directory {
            path: "/tmp".into(),
            flags: 0o200000,
        },
        FdKind::Pipe {
            id: 7,
            end: PipeEnd::Read,
            flags: 0,
        },
        FdKind::Fifo {
            path: "/run/f".into(),
            id: 8,
            end: PipeEnd::Write,
            flags: 1,
        },
        FdKind::Device {
            path: "/dev/null".into(),
            rdev: 0x103,
            flags: 2,
        },
        FdKind::Tty {
            path: "/dev/ttyAMA0".into(),
            rdev: 0xcc40,
            flags: 2,
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| Fd {
        fd: i32::try_from(i).unwrap_or(0) + 3,
        fd_flags: 1,
        ofd: i as u64,
        kind,
    })
    .collect()
}

fn mm() -> MmFields {
    MmFields {
        start_code: 0x1_0000,
        end_code: 0x2_2f00,
        start_data: 0x3_3000,
        end_data: 0x3_4000,
        start_brk: 0x3_5000,
        brk: 0x5_6000,
        start_stack: 0xbeff_fe00,
        arg_start: 0xbeff_ff00,
        arg_end: 0xbeff_ff20,
        env_start: 0xbeff_ff20,
        env_end: 0xbeff_ffe0,
        auxv: vec![6, 4096, 0, 0],
    }
}

/// Bytes that LZ4 cannot shrink: a simple xorshift generator.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Memory with a zero run, a compressible run and an incompressible page.
fn memory(ps: usize) -> Vec<u8> {
    let mut m = vec![0u8; ps * 6];
    for (i, b) in m[ps * 2..ps * 4].iter_mut().enumerate() {
        *b = u8::try_from(i % 7).unwrap_or(0);
    }
    m[ps * 4..ps * 5].copy_from_slice(&noise(ps, 99));
    m
}

/// A tree restored once before: in a torpor-made time namespace whose
/// clocks run behind the host's, before 1970 on nothing.
fn clocks() -> Clocks {
    Clocks {
        monotonic_ns: 5_000_000_123,
        boottime_ns: 9_000_000_456,
        realtime_ns: 1_700_000_000_123_456_789,
        monotonic_offset_ns: -3_600_000_000_007,
        boottime_offset_ns: -3_500_000_000_009,
        own_namespace: true,
        kernel_timens: true,
    }
}

fn full_image() -> (Vec<u8>, ImageSummary) {
    let h = header();
    let ps = h.page_size as usize;
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.record(Kind::Clocks, &clocks()).expect("clocks");
    w.record(Kind::Task, &task()).expect("task");
    w.record(Kind::Thread, &thread()).expect("thread");
    w.record(Kind::Vma, &vma()).expect("vma");
    for fd in fds() {
        w.record(Kind::Fd, &fd).expect("fd");
    }
    w.record(Kind::MmFields, &mm()).expect("mm");
    w.record(
        Kind::PipeData,
        &PipeData {
            id: 7,
            capacity: 65536,
            bytes: b"queued".to_vec(),
        },
    )
    .expect("pipe");
    w.record(Kind::ExternalPipe, &external_pipe())
        .expect("external pipe");
    w.pages(0x40_0000, &memory(ps)).expect("pages");
    w.finish().expect("finish")
}

fn external_pipe() -> ExternalPipe {
    ExternalPipe {
        id: 7,
        inode: 920_428,
        outside: PipeEnd::Read,
    }
}

/// A small image for the exhaustive corruption tests: header, one state
/// record, one zero and one compressed page record, trailer.
fn small_image() -> Vec<u8> {
    let mut h = header();
    h.kernel_release = "6.1".into();
    h.boot_id = "b".into();
    h.host_name = "z".into();
    h.torpor_version = "0".into();
    let ps = h.page_size as usize;
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.record(
        Kind::PipeData,
        &PipeData {
            id: 1,
            capacity: 65536,
            bytes: b"hi".to_vec(),
        },
    )
    .expect("pipe");
    let mut m = vec![0u8; ps * 2];
    m[ps..].fill(0x5a);
    w.pages(0, &m).expect("pages");
    w.finish().expect("finish").0
}

/// Re-frames a record with a correct CRC, as a crafted (not corrupted) image
/// would.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("len");
    let mut v = len.to_le_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v.extend_from_slice(&frame_crc(len, kind, payload).to_le_bytes());
    v
}

fn header_image(h: &Header) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new(), h).expect("writer");
    w.record(
        Kind::PipeData,
        &PipeData {
            id: 1,
            capacity: 65536,
            bytes: vec![],
        },
    )
    .expect("pipe");
    w.finish().expect("finish").0
}

#[test]
fn every_record_kind_round_trips() {
    let (img, summary) = full_image();
    assert_eq!(summary.bytes, img.len() as u64);
    let mut r = ImageReader::new(&img[..]).expect("reader");
    assert_eq!(r.header(), &header());
    let ps = header().page_size as usize;

    let mut kinds = Vec::new();
    let mut memory_back = Vec::new();
    let mut fds_back = Vec::new();
    let mut buf = vec![0u8; PAGE_BATCH_BYTES as usize];
    while let Some(rec) = r.next_record().expect("record") {
        kinds.push(rec.kind());
        match rec.kind() {
            Kind::Task => assert_eq!(rec.decode::<Task>().expect("task"), task()),
            Kind::Thread => assert_eq!(rec.decode::<Thread>().expect("thread"), thread()),
            Kind::Vma => assert_eq!(rec.decode::<Vma>().expect("vma"), vma()),
            Kind::Fd => fds_back.push(rec.decode::<Fd>().expect("fd")),
            Kind::MmFields => assert_eq!(rec.decode::<MmFields>().expect("mm"), mm()),
            Kind::PipeData => assert_eq!(
                rec.decode::<PipeData>().expect("pipe"),
                PipeData {
                    id: 7,
                    capacity: 65536,
                    bytes: b"queued".to_vec()
                }
            ),
            Kind::Pages => {
                let info = rec.decode_pages_into(&mut buf).expect("pages");
                assert_eq!(info.vaddr, 0x40_0000 + memory_back.len() as u64);
                memory_back.extend_from_slice(&buf[..info.len]);
            }
            Kind::Header | Kind::Trailer => panic!("{} returned as a record", rec.kind()),
            Kind::ExternalPipe => assert_eq!(
                rec.decode::<ExternalPipe>().expect("external pipe"),
                external_pipe()
            ),
            Kind::TmpfsFile
            | Kind::MemfdObject
            | Kind::SysvShm
            | Kind::ObjectData
            | Kind::UnlinkedObject
            | Kind::FileSigIo
            | Kind::SeccompFilter
            | Kind::FileOwner
            | Kind::RequestedBy
            | Kind::Tree
            | Kind::TcpQueue
            | Kind::TaskAttrs
            | Kind::UnixRights
            | Kind::SockExtra
            | Kind::FlightFile
            | Kind::UnixWaiting
            | Kind::ThreadSeccomp
            | Kind::Cgroup
            | Kind::AioRing
            | Kind::Membarrier
            | Kind::UnixCreds => {
                panic!("no {} record was written", rec.kind())
            }
            Kind::Clocks => assert_eq!(rec.decode::<Clocks>().expect("clocks"), clocks()),
        }
    }
    assert_eq!(fds_back, fds());
    assert_eq!(memory_back, memory(ps));
    assert_eq!(r.summary(), Some(summary));
    assert_eq!(summary.pages, 6);
    // Header, 13 state records (clocks first), pages: 2 zero, 2 compressible, 1 noise,
    // 1 zero → 3 page records, trailer.
    assert_eq!(summary.records, 1 + 13 + 3 + 1);
    assert_eq!(kinds.first(), Some(&Kind::Clocks));
    assert_eq!(kinds.iter().filter(|k| **k == Kind::Pages).count(), 3);
    // Another call after the trailer stays at the end.
    assert!(r.next_record().expect("end").is_none());
    assert_eq!(verify(&img[..]).expect("verify"), summary);
}

#[test]
fn page_codecs_are_chosen_per_batch() {
    let h = header();
    let ps = h.page_size as usize;
    let m = memory(ps);
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    // Zero and compressible pages, then noise and a zero page: a batch holds
    // consecutive non-zero pages of one call, so the noise gets its own.
    w.pages(0, &m[..4 * ps]).expect("pages");
    w.pages(4 * ps as u64, &m[4 * ps..]).expect("pages");
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let mut seen = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        let p = rec.pages().expect("pages");
        seen.push((
            p.vaddr,
            p.pages,
            p.codec,
            p.codec == Codec::Raw && p.data.len() == ps,
        ));
    }
    let p = ps as u64;
    assert_eq!(
        seen,
        vec![
            (0, 2, Codec::Zero, false),
            (2 * p, 2, Codec::Lz4, false),
            (4 * p, 1, Codec::Raw, true),
            (5 * p, 1, Codec::Zero, false),
        ]
    );
}

#[test]
fn a_batch_is_judged_by_its_first_page() {
    let h = header();
    let ps = h.page_size as usize;
    let text =
        |len: usize| -> Vec<u8> { (0..len).map(|i| b"abcdefgh"[(i + i / 512) % 8]).collect() };
    // Noise first, text after: stored raw without compressing the rest.
    let mut noisy_head = noise(ps, 5);
    noisy_head.extend(text(3 * ps));
    // Text first, noise after: the whole batch is tried, and LZ4 wins.
    let mut text_head = text(3 * ps);
    text_head.extend(noise(ps, 6));
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.pages(0, &noisy_head).expect("pages");
    w.pages(0x10_0000, &text_head).expect("pages");
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let mut buf = vec![0u8; h.batch_pages() as usize * ps];
    let mut seen = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        let info = rec.decode_pages_into(&mut buf).expect("decode");
        let want = if info.vaddr == 0 {
            &noisy_head
        } else {
            &text_head
        };
        assert_eq!(&buf[..info.len], &want[..], "pages at {:#x}", info.vaddr);
        seen.push((info.vaddr, info.pages, info.codec, info.stored_bytes));
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], (0, 4, Codec::Raw, 4 * ps));
    assert_eq!(
        (seen[1].0, seen[1].1, seen[1].2),
        (0x10_0000, 4, Codec::Lz4)
    );
    assert!(
        seen[1].3 < 2 * ps,
        "text and one noise page in {} bytes",
        seen[1].3
    );
}

#[test]
fn large_runs_split_into_batches() {
    let h = header();
    let ps = h.page_size as usize;
    let batch = h.batch_pages() as usize;
    let data = noise(ps * (batch * 2 + 3), 7);
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.pages(0x1000_0000, &data).expect("pages");
    let (img, s) = w.finish().expect("finish");
    assert_eq!(s.pages, (batch * 2 + 3) as u64);
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let mut counts = Vec::new();
    let mut back = Vec::new();
    let mut buf = vec![0u8; batch * ps];
    while let Some(rec) = r.next_record().expect("record") {
        let info = rec.decode_pages_into(&mut buf).expect("decode");
        counts.push(info.pages);
        assert_eq!(info.codec, Codec::Raw);
        back.extend_from_slice(&buf[..info.len]);
    }
    let b = u32::try_from(batch).expect("batch");
    assert_eq!(counts, vec![b, b, 3]);
    assert_eq!(back, data);
}

#[test]
fn pages_record_layout_is_postcard() {
    // The writer frames pages without building the struct; the bytes must
    // be exactly what postcard makes of `Pages`.
    let h = header();
    let ps = h.page_size as usize;
    let data = noise(ps, 3);
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    let start = usize::try_from(w.bytes_written()).expect("small");
    w.pages(0x7fff_f000_0000, &data).expect("pages");
    let (img, _) = w.finish().expect("finish");
    let expect = postcard::to_allocvec(&Pages {
        vaddr: 0x7fff_f000_0000,
        pages: 1,
        codec: Codec::Raw,
        data: &data,
    })
    .expect("postcard");
    assert_eq!(
        &img[start..start + 9 + expect.len()],
        &frame(Kind::Pages as u8, &expect)[..]
    );
}

#[test]
fn writer_refusals() {
    let h = header();
    let ps = u64::from(h.page_size);
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    let e = w
        .pages(ps + 8, &vec![1u8; h.page_size as usize])
        .unwrap_err();
    assert!(
        matches!(e, ImageError::Unaligned { vaddr, .. } if vaddr == ps + 8),
        "{e:?}"
    );
    let top = 0u64.wrapping_sub(ps);
    let e = w
        .pages(top, &vec![1u8; 2 * h.page_size as usize])
        .unwrap_err();
    assert!(
        matches!(e, ImageError::AddressOverflow { vaddr, .. } if vaddr == top),
        "{e:?}"
    );
    let e = w.pages(0, &[1u8; 100]).unwrap_err();
    assert!(matches!(e, ImageError::Unaligned { len: 100, .. }), "{e:?}");
    let e = w.record(Kind::Trailer, &0u8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "trailer records are written by the image writer itself, not by record()"
    );
    let e = w.record(Kind::Pages, &0u8).unwrap_err();
    assert!(
        matches!(e, ImageError::ReservedKind { kind: Kind::Pages }),
        "{e:?}"
    );
    let big = PipeData {
        id: 1,
        capacity: 65536,
        bytes: vec![0; PIPE_DATA_LIMIT as usize],
    };
    let e = w.record(Kind::PipeData, &big).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::RecordTooLarge {
                kind: Kind::PipeData,
                limit: PIPE_DATA_LIMIT,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("more than the limit of 1048640"),
        "{e}"
    );
    // A refused record leaves the image valid.
    let (img, s) = w.finish().expect("finish");
    assert_eq!(verify(&img[..]).expect("verify"), s);

    let mut bad = header();
    bad.page_size = 3000;
    let e = ImageWriter::new(Vec::new(), &bad).unwrap_err();
    assert!(matches!(e, ImageError::BadPageSize(3000)), "{e:?}");
}

#[test]
fn bad_magic_is_refused() {
    let mut img = small_image();
    img[5..13].copy_from_slice(b"ELF\x7fxxxx");
    let e = ImageReader::new(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::BadMagic { found } if &found == b"ELF\x7fxxxx"),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("not a torpor image"), "{e}");
    let e = verify(&b"#!/bin/sh\necho hello\n"[..]).unwrap_err();
    assert!(matches!(e, ImageError::BadMagic { .. }), "{e:?}");
}

#[test]
fn unknown_major_version_is_refused_newer_minor_accepted() {
    let mut h = header();
    h.version = FormatVersion {
        major: FORMAT.major + 1,
        minor: 0,
    };
    let img = header_image(&h);
    let e = ImageReader::new(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::UnsupportedVersion { found, supported }
            if found.major == FORMAT.major + 1 && supported == FORMAT),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "image format 3.0 is not supported (this torpor reads format 2.7)"
    );

    let mut h = header();
    h.version = FormatVersion {
        major: FORMAT.major,
        minor: FORMAT.minor + 3,
    };
    let img = header_image(&h);
    let s = verify(&img[..]).expect("newer minor is read");
    assert_eq!(s.records, 3);
}

#[test]
fn wrong_architecture_is_refused() {
    let mut h = header();
    h.arch = if Arch::host() == Arch::Arm {
        Arch::X86_64
    } else {
        Arch::Arm
    };
    let img = header_image(&h);
    let e = ImageReader::new(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::WrongArch { image, host } if image == h.arch && host == Arch::host()),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "image was made on {}, this host is {}",
            h.arch,
            Arch::host()
        )
    );
    // Inspecting (show, verify) a foreign image is fine.
    let r = ImageReader::inspect(&img[..]).expect("inspect");
    assert_eq!(r.header().arch, h.arch);
    verify(&img[..]).expect("verify");
}

#[test]
fn every_other_architecture_is_refused_naming_both() {
    for arch in [Arch::X86_64, Arch::Arm, Arch::Aarch64] {
        if arch == Arch::host() {
            continue;
        }
        let mut h = header();
        h.arch = arch;
        let e = ImageReader::new(&header_image(&h)[..]).unwrap_err();
        assert!(
            matches!(e, ImageError::WrongArch { image, host } if image == arch && host == Arch::host()),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(arch.name()) && msg.contains(Arch::host().name()),
            "{msg}"
        );
    }
}

/// The architecture's position in the header bytes is fixed by the format:
/// aarch64 is the third variant, there since format 2.0.
#[test]
fn architectures_encode_as_their_format_variants() {
    for (arch, byte) in [(Arch::X86_64, 0u8), (Arch::Arm, 1), (Arch::Aarch64, 2)] {
        assert_eq!(postcard::to_allocvec(&arch).expect("encode"), [byte]);
        let back: Arch = postcard::from_bytes(&[byte]).expect("decode");
        assert_eq!(back, arch);
    }
}

#[test]
fn larger_page_images_are_refused_on_this_host() {
    for ps in [16384u32, 65536] {
        if ps == host_page_size() {
            continue;
        }
        let mut h = header();
        h.page_size = ps;
        let e = ImageReader::new(&header_image(&h)[..]).unwrap_err();
        assert!(
            matches!(e, ImageError::WrongPageSize { image, host } if image == ps && host == host_page_size()),
            "{e:?}"
        );
    }
}

#[test]
fn wrong_page_size_is_refused() {
    let mut h = header();
    h.page_size = if host_page_size() == 16384 {
        4096
    } else {
        16384
    };
    let img = header_image(&h);
    let e = ImageReader::new(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::WrongPageSize { image, .. } if image == h.page_size),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "image page size is {} bytes, this host's is {}",
            h.page_size,
            host_page_size()
        )
    );
}

#[test]
fn every_single_bit_flip_is_detected() {
    let img = small_image();
    assert!(img.len() < 400, "sample image grew to {} bytes", img.len());
    verify(&img[..]).expect("intact image verifies");
    let mut bad = img.clone();
    for byte in 0..img.len() {
        for bit in 0..8 {
            bad[byte] ^= 1 << bit;
            let res = verify(&bad[..]);
            assert!(
                res.is_err(),
                "flip of bit {bit} of byte {byte} went unnoticed"
            );
            bad[byte] ^= 1 << bit;
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncation() {
    let img = small_image();
    for cut in 0..img.len() {
        match verify(&img[..cut]) {
            Err(ImageError::Truncated { offset, .. }) => assert_eq!(offset, cut as u64),
            other => panic!("cut at {cut} of {} gave {other:?}", img.len()),
        }
    }
    let e = verify(&img[..img.len() - 20]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("image truncated at offset {}", img.len() - 20)),
        "{e}"
    );
}

#[test]
fn crc_error_names_record_and_offset() {
    let mut img = small_image();
    let first = u32::from_le_bytes([img[0], img[1], img[2], img[3]]) as usize + 9;
    img[first + 7] ^= 0x10; // inside the pipe-data payload
    let e = verify(&img[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::Crc { offset, kind: KindByte(7), .. } if offset == first as u64),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "CRC mismatch in the pipe-data record at offset {first}"
        )),
        "{e}"
    );
}

#[test]
fn crafted_frames_are_refused() {
    let img = small_image();
    let hlen = u32::from_le_bytes([img[0], img[1], img[2], img[3]]) as usize + 9;
    let head = &img[..hlen];

    // Unknown kind.
    let mut v = head.to_vec();
    v.extend(frame(200, b"x"));
    let e = verify(&v[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::UnknownKind { kind: 200, offset } if offset == hlen as u64),
        "{e:?}"
    );

    // A length over the kind's limit is refused before anything is read.
    let mut v = head.to_vec();
    v.extend_from_slice(&(STATE_LIMIT + 1).to_le_bytes());
    v.push(Kind::Task as u8);
    let e = verify(&v[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::RecordTooLarge { kind: Kind::Task, len, .. } if len == u64::from(STATE_LIMIT) + 1),
        "{e:?}"
    );
    let mut v = head.to_vec();
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    v.push(Kind::Pages as u8);
    assert!(matches!(
        verify(&v[..]),
        Err(ImageError::RecordTooLarge {
            kind: Kind::Pages,
            ..
        })
    ));

    // A second header.
    let mut v = head.to_vec();
    v.extend_from_slice(head);
    let e = verify(&v[..]).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Malformed {
                kind: Kind::Header,
                ..
            }
        ),
        "{e:?}"
    );

    // A trailer whose counts are wrong.
    let crc = crc32fast::hash(head);
    let t = Trailer {
        records: 5,
        pages: 0,
        bytes: hlen as u64,
        crc,
    };
    let mut v = head.to_vec();
    v.extend(frame(
        Kind::Trailer as u8,
        &postcard::to_allocvec(&t).expect("t"),
    ));
    let e = verify(&v[..]).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::TrailerMismatch {
                field: "records",
                stored: 5,
                actual: 1
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "trailer mismatch: the trailer says records = 5, the image has 1"
    );

    // A trailer with the wrong whole-image CRC.
    let t = Trailer {
        records: 1,
        pages: 0,
        bytes: hlen as u64,
        crc: crc ^ 1,
    };
    let mut v = head.to_vec();
    v.extend(frame(
        Kind::Trailer as u8,
        &postcard::to_allocvec(&t).expect("t"),
    ));
    assert!(matches!(
        verify(&v[..]),
        Err(ImageError::TrailerMismatch { field: "crc", .. })
    ));

    // The right trailer verifies; data after it does not.
    let t = Trailer {
        records: 1,
        pages: 0,
        bytes: hlen as u64,
        crc,
    };
    let mut v = head.to_vec();
    v.extend(frame(
        Kind::Trailer as u8,
        &postcard::to_allocvec(&t).expect("t"),
    ));
    verify(&v[..]).expect("header + trailer");
    v.extend_from_slice(&[0, 0, 0]);
    let e = verify(&v[..]).unwrap_err();
    assert!(
        matches!(e, ImageError::TrailingData { offset } if offset == v.len() as u64 - 3),
        "{e:?}"
    );

    // Pages whose data does not match the codec.
    let ps = header().page_size;
    let bad_pages = [
        Pages {
            vaddr: 0,
            pages: 1,
            codec: Codec::Raw,
            data: &[1, 2, 3],
        },
        Pages {
            vaddr: 0,
            pages: 1,
            codec: Codec::Zero,
            data: &[0],
        },
        Pages {
            vaddr: 0,
            pages: 0,
            codec: Codec::Zero,
            data: &[],
        },
        Pages {
            vaddr: 5,
            pages: 1,
            codec: Codec::Zero,
            data: &[],
        },
        Pages {
            vaddr: 0,
            pages: PAGE_BATCH_BYTES / ps + 1,
            codec: Codec::Zero,
            data: &[],
        },
        Pages {
            vaddr: 0,
            pages: 1,
            codec: Codec::Lz4,
            data: &[0x10, 0x41],
        },
    ];
    for p in bad_pages {
        let mut v = head.to_vec();
        v.extend(frame(
            Kind::Pages as u8,
            &postcard::to_allocvec(&p).expect("p"),
        ));
        let e = verify(&v[..]).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::Malformed {
                    kind: Kind::Pages,
                    ..
                }
            ),
            "{p:?}: {e:?}"
        );
    }
}

#[test]
fn decode_pages_into_checks_the_buffer() {
    let h = header();
    let ps = h.page_size as usize;
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.pages(0, &vec![7u8; ps * 2]).expect("pages");
    w.record(Kind::PipeData, &PipeData::default())
        .expect("pipe");
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let rec = r.next_record().expect("rec").expect("some");
    let mut small = vec![0u8; ps];
    let e = rec.decode_pages_into(&mut small).unwrap_err();
    assert!(
        matches!(e, ImageError::BufferTooSmall { needed, got } if needed == 2 * ps && got == ps),
        "{e:?}"
    );
    let mut big = vec![1u8; ps * 3];
    let info = rec.decode_pages_into(&mut big).expect("decode");
    assert_eq!(info.len, 2 * ps);
    assert!(big[..2 * ps].iter().all(|&b| b == 7));
    assert!(
        big[2 * ps..].iter().all(|&b| b == 1),
        "bytes past the pages untouched"
    );
    let rec = r.next_record().expect("rec").expect("some");
    assert!(matches!(
        rec.decode_pages_into(&mut big),
        Err(ImageError::NotPages {
            kind: Kind::PipeData
        })
    ));
}

#[test]
fn host_header_describes_this_host() {
    let h = Header::for_host().expect("for_host");
    assert_eq!(h.magic, MAGIC);
    assert_eq!(h.version, FORMAT);
    assert_eq!(h.arch, Arch::host());
    assert_eq!(h.page_size, host_page_size());
    assert_eq!(h.torpor_version, crate::VERSION);
    assert_eq!(h.boot_id.len(), 36, "boot id {:?}", h.boot_id);
    assert!(!h.kernel_release.is_empty());
    assert!(h.created_ns > 1_600_000_000_000_000_000);
    h.check_host().expect("own header fits");
}

#[test]
fn write_errors_carry_the_offset() {
    #[derive(Debug)]
    struct Full(usize);
    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "device full"));
            }
            let n = b.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let e = ImageWriter::new(Full(20), &header()).unwrap_err();
    assert!(matches!(e, ImageError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("device full"), "{e}");
}

#[test]
fn the_registry_gives_each_kind_one_byte_name_and_type() {
    let mut names = std::collections::HashSet::new();
    for (i, k) in Kind::ALL.into_iter().enumerate() {
        // Numbered from 1 without gaps, so a new kind takes the next byte.
        assert_eq!(k as usize, i + 1, "{k}");
        assert_eq!(Kind::from_byte(k as u8), Some(k));
        assert!(names.insert(k.name()), "{k} named twice");
        assert!(k.what().ends_with(if k == Kind::Trailer {
            "trailer"
        } else {
            "record"
        }));
        assert!(k.limit() >= TRAILER_LIMIT, "{k}");
    }
    assert_eq!(Kind::from_byte(0), None);
    let next = u8::try_from(Kind::COUNT + 1).expect("room for more kinds");
    assert_eq!(Kind::from_byte(next), None);
    let framed: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.by_writer()).collect();
    assert_eq!(framed, [Kind::Header, Kind::Pages, Kind::Trailer]);
    assert_eq!(<Header as RecordType>::KIND, Kind::Header);
    assert_eq!(Pages::KIND, Kind::Pages);
    assert_eq!(Trailer::KIND, Kind::Trailer);
    assert_eq!(Task::KIND, Kind::Task);
    assert_eq!(SeccompFilter::KIND, Kind::SeccompFilter);
    assert_eq!(ThreadSeccomp::KIND, Kind::ThreadSeccomp);
    assert_eq!(Kind::ThreadSeccomp as u8, 28);
}

fn thread_seccomps() -> [ThreadSeccomp; 2] {
    [
        ThreadSeccomp {
            tid: 4242,
            own: OwnSeccomp::Strict,
        },
        ThreadSeccomp {
            tid: 4243,
            own: OwnSeccomp::Filter(SeccompFilter {
                flags: 2,
                program: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
            }),
        },
    ]
}

#[test]
fn thread_seccomp_records_round_trip() {
    let mut w = ImageWriter::new(Vec::new(), &header()).expect("writer");
    for t in &thread_seccomps() {
        w.write(t).expect("thread-seccomp");
    }
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    for want in thread_seccomps() {
        let rec = r.next_record().expect("read").expect("a record");
        assert_eq!(rec.kind(), Kind::ThreadSeccomp);
        assert_eq!(rec.decode::<ThreadSeccomp>().expect("decode"), want);
    }
    assert!(r.next_record().expect("read").is_none());
}

#[test]
fn thread_seccomp_payloads_are_postcard() {
    // tid 4242 as a zigzag varint, then the variant index.
    assert_eq!(
        postcard::to_allocvec(&thread_seccomps()[0]).expect("encode"),
        [0xa4, 0x42, 0]
    );
    // Variant 1, flags 2, then the program as a byte string.
    assert_eq!(
        postcard::to_allocvec(&thread_seccomps()[1]).expect("encode"),
        [0xa6, 0x42, 1, 2, 8, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]
    );
    // A variant this reader does not know fails to decode.
    assert!(postcard::from_bytes::<ThreadSeccomp>(&[0xa4, 0x42, 2]).is_err());
}

#[test]
fn a_record_is_written_and_read_only_under_its_own_kind() {
    let mut w = ImageWriter::new(Vec::new(), &header()).expect("writer");
    w.write(&clocks()).expect("clocks");
    w.write(&mm()).expect("mm");
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let rec = r.next_record().expect("read").expect("clocks");
    assert_eq!(rec.kind(), Kind::Clocks);
    assert_eq!(rec.decode::<Clocks>().expect("clocks"), clocks());
    let e = rec.decode::<MmFields>().unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::WrongKind {
                kind: Kind::Clocks,
                wanted: Kind::MmFields,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "the clocks record at offset {} cannot be read as a mm record",
            rec.offset()
        )
    );
    let rec = r.next_record().expect("read").expect("mm");
    assert_eq!(rec.kind(), Kind::MmFields);
    assert_eq!(rec.decode::<MmFields>().expect("mm"), mm());
}

/// The credentials of two queued messages, as `unix-creds` records:
/// written and read back under their kind, byte 32, in postcard's layout.
#[test]
fn unix_creds_records_round_trip() {
    let sent = [
        UnixCreds {
            ofd: 7,
            message: 0,
            pid: 4242,
            uid: 1000,
            gid: 1000,
        },
        UnixCreds {
            ofd: 7,
            message: 3,
            pid: 4240,
            uid: 0,
            gid: 0,
        },
    ];
    let mut w = ImageWriter::new(Vec::new(), &header()).expect("writer");
    for c in &sent {
        w.write(c).expect("unix-creds");
    }
    let (img, summary) = w.finish().expect("finish");
    assert_eq!(summary.records, 1 + 2 + 1);
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let mut back = Vec::new();
    while let Some(rec) = r.next_record().expect("record") {
        assert_eq!(rec.kind(), Kind::UnixCreds);
        assert_eq!(rec.kind().name(), "unix-creds");
        back.push(rec.decode::<UnixCreds>().expect("unix-creds"));
    }
    assert_eq!(back, sent);
    assert_eq!(Kind::UnixCreds as u8, 32);
    assert_eq!(Kind::from_byte(32), Some(Kind::UnixCreds));
    // Payload: ofd 7, message 3, pid 4240 (zigzag 8480: 0xa0 0x42), uid 0,
    // gid 0; after the length and the kind byte 32.
    let payload = [32u8, 7, 3, 0xa0, 0x42, 0, 0];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the unix-creds record's bytes"
    );
    // A uid of 1000 is a varint of two bytes (0xe8 0x07).
    let payload = [32u8, 7, 0, 0xa4, 0x42, 0xe8, 0x07, 0xe8, 0x07];
    assert!(
        img.windows(payload.len()).any(|w| w == payload),
        "the first record's bytes"
    );
}

#[test]
fn a_state_kind_is_visited_with_its_payload_type() {
    struct Named;
    impl KindVisitor for Named {
        type Output = Kind;
        fn visit<T: StateRecord>(self) -> Kind {
            T::KIND
        }
    }
    for k in Kind::ALL {
        let visited = k.visit(Named);
        if k.by_writer() {
            assert_eq!(visited, None, "{k}");
        } else {
            assert_eq!(visited, Some(k));
        }
    }
}

/// The kinds of the records a reader returns, to the end.
fn kinds_read<R: Read>(mut rd: ImageReader<R>) -> Result<(Vec<Kind>, ImageSummary)> {
    let mut kinds = vec![];
    while let Some(rec) = rd.next_record()? {
        kinds.push(rec.kind());
    }
    let summary = rd.summary().expect("a summary after the trailer");
    Ok((kinds, summary))
}

/// Offsets and kinds of the frames of a well-formed image.
fn frames(img: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut at = 0;
    let mut out = vec![];
    while at < img.len() {
        let len = u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]]) as usize;
        out.push((at, img[at + 4], len));
        at += len + 9;
    }
    out
}

#[test]
fn a_first_pass_steps_over_the_page_records() {
    let (img, summary) = full_image();
    let all = kinds_read(ImageReader::new(std::io::Cursor::new(&img)).expect("reader"))
        .expect("read")
        .0;
    let pages = all.iter().filter(|k| **k == Kind::Pages).count();
    assert_eq!(pages, 3, "a zero, an LZ4 and a raw batch");
    let first = ImageReader::new(std::io::Cursor::new(&img))
        .expect("reader")
        .skipping_pages();
    let (kinds, seen) = kinds_read(first).expect("first pass");
    let others: Vec<Kind> = all.into_iter().filter(|k| *k != Kind::Pages).collect();
    assert_eq!(kinds, others);
    assert_eq!(seen.records, summary.records);
    assert_eq!(seen.bytes, summary.bytes);

    // Page bytes are not its to check; every other byte is.
    let page_frames: Vec<(usize, u8, usize)> = frames(&img)
        .into_iter()
        .filter(|f| f.1 == Kind::Pages as u8)
        .collect();
    let (at, _, len) = page_frames[2];
    let mut bad = img.clone();
    bad[at + 5 + len - 1] ^= 1;
    let skipping = |b: &[u8]| {
        kinds_read(
            ImageReader::new(std::io::Cursor::new(b.to_vec()))
                .expect("reader")
                .skipping_pages(),
        )
    };
    assert!(skipping(&bad).is_ok());
    assert!(matches!(
        verify(&bad[..]),
        Err(ImageError::Crc { offset, kind: KindByte(8), .. }) if offset == at as u64
    ));
    let (vma_at, _, _) = frames(&img)
        .into_iter()
        .find(|f| f.1 == Kind::Vma as u8)
        .expect("a vma record");
    let mut bad = img.clone();
    bad[vma_at + 6] ^= 1;
    assert!(matches!(
        skipping(&bad),
        Err(ImageError::Crc { offset, kind: KindByte(4), .. }) if offset == vma_at as u64
    ));
    // The trailer's record and byte counts still hold it to the image.
    let (t_at, _, _) = *frames(&img).last().expect("trailer");
    let mut cut = img[..page_frames[0].0].to_vec();
    cut.extend_from_slice(&img[page_frames[1].0..]);
    assert!(matches!(
        skipping(&cut),
        Err(ImageError::TrailerMismatch { field: "records", stored, actual })
            if stored == summary.records - 1 && actual == summary.records - 2
    ));
    assert!(t_at > page_frames[2].0);
}

#[test]
fn a_first_pass_reports_every_cut_as_truncation() {
    let img = small_image();
    let page_frames: Vec<(usize, u8, usize)> = frames(&img)
        .into_iter()
        .filter(|f| f.1 == Kind::Pages as u8)
        .collect();
    for cut in 0..img.len() {
        let rd = ImageReader::new(std::io::Cursor::new(img[..cut].to_vec()))
            .map(ImageReader::skipping_pages)
            .and_then(kinds_read);
        // Inside a page record's payload or CRC: the payload's start is
        // named, since its bytes are never read.
        let in_pages = page_frames
            .iter()
            .find(|(at, _, len)| cut >= at + 5 && cut < at + 9 + len);
        match (rd, in_pages) {
            (Err(ImageError::Truncated { offset, what }), Some((at, _, _))) => {
                assert_eq!((offset, what), ((at + 5) as u64, "a pages record"));
            }
            (Err(ImageError::Truncated { offset, .. }), None) => {
                assert_eq!(offset, cut as u64);
            }
            (other, _) => panic!("cut at {cut} of {} gave {other:?}", img.len()),
        }
    }
}

/// A sink that lends room from a buffer of its own, as an image file
/// written in chunks does.
#[derive(Default)]
struct Lender {
    out: Vec<u8>,
    room: Vec<u8>,
    lent: usize,
}

impl Write for Lender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ImageSink for Lender {
    fn room(&mut self, n: usize) -> std::io::Result<Option<&mut [u8]>> {
        // Stale bytes, which the writer must overwrite or leave unused.
        self.room = vec![0xa5; n + 3];
        self.lent += 1;
        Ok(Some(&mut self.room))
    }
    fn commit_room(&mut self, n: usize) -> std::io::Result<()> {
        self.out.extend_from_slice(&self.room[..n]);
        Ok(())
    }
}

/// Batches of every sort: noise, noise with a zero page inside, a zero
/// batch, a compressible one, a single page.
fn batches(ps: usize) -> Vec<(u64, Vec<u8>)> {
    let batch = (PAGE_BATCH_BYTES as usize / ps).max(1);
    let mut holed = noise(batch * ps, 5);
    holed[ps..2 * ps].fill(0);
    let mut tailed = noise(3 * ps, 6);
    tailed[2 * ps..].fill(0);
    vec![
        (0x10_0000, noise(batch * ps, 4)),
        (0x20_0000, holed),
        (0x30_0000, vec![0; batch * ps]),
        (0x40_0000, memory(ps)[2 * ps..4 * ps].to_vec()),
        (0x50_0000, noise(ps, 7)),
        (0x60_0000, tailed),
    ]
}

fn written_from<S: ImageSink>(sink: S) -> (S, Vec<u64>) {
    let h = header();
    let ps = h.page_size as usize;
    let mut w = ImageWriter::new(sink, &h).expect("writer");
    let mut stored = vec![];
    for (vaddr, data) in batches(ps) {
        let pages = u32::try_from(data.len() / ps).expect("pages");
        let n = w
            .nonzero_pages_from(vaddr, pages, |buf: &mut [u8]| {
                buf.copy_from_slice(&data);
                Ok::<(), ()>(())
            })
            .expect("pages");
        stored.push(n);
    }
    (w.finish().expect("finish").0, stored)
}

#[test]
fn pages_read_in_place_make_the_same_image_as_pages_copied() {
    let ps = header().page_size as usize;
    let (plain, stored) = written_from(Vec::new());
    let (lender, stored_lent) = written_from(Lender::default());
    assert_eq!(stored, stored_lent);
    assert_eq!(lender.lent, batches(ps).len(), "room asked for every batch");
    assert!(lender.out == plain, "the images differ");
    let b = (PAGE_BATCH_BYTES as usize / ps).max(1) * ps;
    let expect: Vec<u64> = [b, b - ps, 0, 2 * ps, ps, 2 * ps]
        .iter()
        .map(|n| *n as u64)
        .collect();
    assert_eq!(stored, expect, "zero pages are left out");
    // Read back: every non-zero page at its address, no zero page stored.
    let mut rd = ImageReader::new(&plain[..]).expect("reader");
    let mut got: Vec<(u64, Codec, Vec<u8>)> = vec![];
    let mut buf = vec![0u8; PAGE_BATCH_BYTES as usize];
    while let Some(rec) = rd.next_record().expect("record") {
        let info = rec.decode_pages_into(&mut buf).expect("pages");
        got.push((info.vaddr, info.codec, buf[..info.len].to_vec()));
    }
    let all = batches(ps);
    let want: Vec<(u64, Codec, Vec<u8>)> = vec![
        (all[0].0, Codec::Raw, all[0].1.clone()),
        (all[1].0, Codec::Raw, all[1].1[..ps].to_vec()),
        (
            all[1].0 + 2 * ps as u64,
            Codec::Raw,
            all[1].1[2 * ps..].to_vec(),
        ),
        (all[3].0, Codec::Lz4, all[3].1.clone()),
        (all[4].0, Codec::Raw, all[4].1.clone()),
        (all[5].0, Codec::Raw, all[5].1[..2 * ps].to_vec()),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.1), (w.0, w.1));
        assert!(g.2 == w.2, "pages at {:#x} differ", g.0);
    }
}

#[test]
fn a_failed_read_in_place_leaves_no_record() {
    let h = header();
    let ps = h.page_size as usize;
    let mut w = ImageWriter::new(Lender::default(), &h).expect("writer");
    let res = w.nonzero_pages_from(0x1000, 2, |buf: &mut [u8]| {
        buf[..ps].fill(1);
        Err("gone")
    });
    assert!(matches!(res, Err(PagesFromError::Read("gone"))));
    let too_many = w.batch_pages() + 1;
    let res = w.nonzero_pages_from(0x1000, too_many, |_: &mut [u8]| Ok::<(), ()>(()));
    assert!(matches!(
        res,
        Err(PagesFromError::Image(ImageError::Malformed { .. }))
    ));
    let res = w.nonzero_pages_from(0x1001, 1, |_: &mut [u8]| Ok::<(), ()>(()));
    assert!(matches!(
        res,
        Err(PagesFromError::Image(ImageError::Unaligned {
            vaddr: 0x1001,
            ..
        }))
    ));
    let (sink, summary) = w.finish().expect("finish");
    assert_eq!((summary.records, summary.pages), (2, 0));
    assert_eq!(verify(&sink.out[..]).expect("valid").records, 2);
}

#[test]
fn a_deferring_pass_gives_each_page_record_s_place_and_reads_it_later() {
    let (img, summary) = full_image();
    let ps = header().page_size;
    let mut rd = ImageReader::new(std::io::Cursor::new(&img))
        .expect("reader")
        .deferring_pages();
    let mut refs = vec![];
    while let Some(rec) = rd.next_record().expect("deferring pass") {
        if rec.kind() == Kind::Pages {
            refs.push(rec.page_ref().expect("a deferred page record"));
        } else {
            assert_eq!(rec.page_ref(), None);
        }
    }
    // The page count is known from the heads: the trailer's is checked.
    assert_eq!(rd.summary().expect("summary").pages, summary.pages);
    let page_frames: Vec<(usize, u8, usize)> = frames(&img)
        .into_iter()
        .filter(|f| f.1 == Kind::Pages as u8)
        .collect();
    assert_eq!(refs.len(), 3);
    let mem = memory(ps as usize);
    let mut src = std::io::Cursor::new(img.clone());
    let mut scratch = vec![];
    let mut out = vec![0u8; PAGE_BATCH_BYTES as usize];
    let mut got = vec![0u8; mem.len()];
    // Read back in any order, the records give the memory written.
    for (r, f) in refs.iter().zip(&page_frames).rev() {
        assert_eq!((r.offset, r.len as usize), (f.0 as u64, f.2));
        let info = read_pages_at(&mut src, r, ps, &mut scratch, &mut out).expect("read at");
        assert_eq!((info.vaddr, info.pages), (r.vaddr, r.pages));
        let at = usize::try_from(r.vaddr - 0x40_0000).expect("offset");
        got[at..at + info.len].copy_from_slice(&out[..info.len]);
    }
    assert_eq!(got, mem);

    // A flipped data byte is the record's CRC error, at its offset.
    let (at, _, len) = page_frames[2];
    let mut bad = img.clone();
    bad[at + 5 + len - 1] ^= 1;
    let mut src = std::io::Cursor::new(bad);
    assert!(matches!(
        read_pages_at(&mut src, &refs[2], ps, &mut scratch, &mut out),
        Err(ImageError::Crc { offset, kind: KindByte(8), .. }) if offset == at as u64
    ));
    // Cut short: truncation.
    let mut src = std::io::Cursor::new(img[..at + 5 + len / 2].to_vec());
    assert!(matches!(
        read_pages_at(&mut src, &refs[2], ps, &mut scratch, &mut out),
        Err(ImageError::Truncated { .. })
    ));
    // A place that is not the record it was: refused before its payload.
    let moved = PageRef {
        offset: page_frames[1].0 as u64,
        ..refs[2]
    };
    let mut src = std::io::Cursor::new(img.clone());
    assert!(matches!(
        read_pages_at(&mut src, &moved, ps, &mut scratch, &mut out),
        Err(ImageError::Malformed { .. })
    ));
    let elsewhere = PageRef {
        vaddr: refs[2].vaddr + u64::from(ps),
        ..refs[2]
    };
    assert!(matches!(
        read_pages_at(&mut src, &elsewhere, ps, &mut scratch, &mut out),
        Err(ImageError::Malformed { .. })
    ));
}

/// A record's kind and, for a page record, its place.
type Seen = (Kind, Option<PageRef>);

/// Every record of a pass, with the place of each page record.
fn records_read<R: Read>(mut rd: ImageReader<R>) -> Result<(Vec<Seen>, ImageSummary)> {
    let mut seen = vec![];
    while let Some(rec) = rd.next_record()? {
        seen.push((rec.kind(), rec.page_ref()));
    }
    Ok((seen, rd.summary().expect("a summary after the trailer")))
}

#[test]
fn an_indexing_pass_lets_the_second_step_over_page_records_unread() {
    let (img, summary) = full_image();
    let deferring = |b: &[u8]| {
        records_read(
            ImageReader::new(std::io::Cursor::new(b.to_vec()))
                .expect("reader")
                .deferring_pages(),
        )
    };
    let (want, want_summary) = deferring(&img).expect("deferring pass");
    let refs: Vec<PageRef> = want.iter().filter_map(|r| r.1).collect();
    assert_eq!(refs.len(), 3);

    // The first pass: the other records only, the page count known.
    let mut first = ImageReader::new(std::io::Cursor::new(&img))
        .expect("reader")
        .indexing_pages();
    let mut kinds = vec![];
    while let Some(rec) = first.next_record().expect("indexing pass") {
        assert_eq!(rec.page_ref(), None);
        kinds.push(rec.kind());
    }
    let others: Vec<Kind> = want
        .iter()
        .map(|r| r.0)
        .filter(|k| *k != Kind::Pages)
        .collect();
    assert_eq!(kinds, others);
    assert_eq!(first.summary().expect("summary").pages, summary.pages);
    let index = first.take_page_index();
    assert_eq!(index, refs);
    assert!(first.take_page_index().is_empty());

    // The second pass gives the same records and places, and never reads
    // a page frame: with each frame's kind byte spoilt, a deferring pass
    // fails and the knowing one does not.
    let page_frames: Vec<(usize, u8, usize)> = frames(&img)
        .into_iter()
        .filter(|f| f.1 == Kind::Pages as u8)
        .collect();
    let mut spoilt = img.clone();
    for (at, _, _) in &page_frames {
        spoilt[at + 4] = 0xEE;
    }
    assert!(matches!(
        deferring(&spoilt),
        Err(ImageError::UnknownKind { kind: 0xEE, .. })
    ));
    let knowing = |b: &[u8], index: Vec<PageRef>| {
        records_read(
            ImageReader::new(std::io::Cursor::new(b.to_vec()))
                .expect("reader")
                .knowing_pages(index),
        )
    };
    let (got, got_summary) = knowing(&spoilt, index.clone()).expect("knowing pass");
    assert_eq!(got, want);
    assert_eq!(got_summary, want_summary);

    // A cut in the last run of page records is still refused, at the
    // run's first record.
    let (last, _, len) = page_frames[2];
    let cut = &img[..last + 5 + len / 2];
    assert!(matches!(
        knowing(cut, index.clone()),
        Err(ImageError::Truncated { offset, .. }) if offset == page_frames[0].0 as u64
    ));
    // An index that names no record of this image is stepped past: the
    // page records are read one by one, as without one.
    let stale: Vec<PageRef> = index
        .iter()
        .map(|r| PageRef {
            offset: r.offset + 1,
            ..*r
        })
        .collect();
    assert_eq!(knowing(&img, stale).expect("stale index").0, want);
}

fn aio_ring(events: usize) -> AioRing {
    AioRing {
        start: 0x7f12_3456_7000,
        size: 8192,
        id: 1,
        nr: 255,
        head: 250,
        tail: 3,
        magic: AIO_RING_MAGIC,
        compat_features: AIO_RING_COMPAT,
        incompat_features: AIO_RING_INCOMPAT,
        header_length: 32,
        first: 0,
        events: (0..events as u64)
            .map(|i| IoEvent {
                data: u64::MAX - i,
                obj: 0x7fff_0000_0000 + i * 64,
                res: i64::MIN + i64::try_from(i).expect("i64"),
                res2: -1,
            })
            .collect(),
    }
}

#[test]
fn aio_ring_and_membarrier_records_round_trip() {
    let membarrier = Membarrier {
        registered: Membarrier::PRIVATE_EXPEDITED | Membarrier::PRIVATE_EXPEDITED_SYNC_CORE,
    };
    let mut w = ImageWriter::new(Vec::new(), &header()).expect("writer");
    w.write(&task()).expect("task");
    w.write(&membarrier).expect("membarrier");
    w.write(&aio_ring(8)).expect("aio ring");
    // The most completions one record holds, at the widest values, fit
    // the record's limit.
    w.write(&aio_ring(AIO_EVENTS_PER_RECORD))
        .expect("largest aio ring");
    let (img, _) = w.finish().expect("finish");
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let rec = r.next_record().expect("read").expect("task");
    assert_eq!(rec.decode::<Task>().expect("task"), task());
    let rec = r.next_record().expect("read").expect("membarrier");
    assert_eq!(rec.kind(), Kind::Membarrier);
    assert_eq!(Kind::Membarrier as u8, 31);
    assert_eq!(rec.decode::<Membarrier>().expect("membarrier"), membarrier);
    let rec = r.next_record().expect("read").expect("aio ring");
    assert_eq!(rec.kind(), Kind::AioRing);
    assert_eq!(Kind::AioRing as u8, 30);
    assert_eq!(rec.decode::<AioRing>().expect("aio ring"), aio_ring(8));
    assert!(rec.decode::<Membarrier>().is_err(), "read only as its kind");
    let rec = r.next_record().expect("read").expect("largest aio ring");
    assert_eq!(
        rec.decode::<AioRing>().expect("largest aio ring"),
        aio_ring(AIO_EVENTS_PER_RECORD)
    );
    assert!(r.next_record().expect("end").is_none());
    assert!(
        postcard::to_allocvec(&aio_ring(AIO_EVENTS_PER_RECORD))
            .expect("encode")
            .len()
            <= Kind::AioRing.limit() as usize
    );
}

/// Format 2.7 appends `Fanotify` to `FdKind`, after `Packet`: its variant
/// index is 27, and a group with a mark of each kind comes back from an
/// image as it went in.
#[test]
fn a_fanotify_group_round_trips_as_the_last_fd_variant() {
    let group = Fanotify {
        flags: 0x203,
        event_flags: 0o100000,
        marks: vec![
            FanotifyMark {
                object: FanotifyObject::Inode,
                flags: 0x40,
                mask: 0xa,
                ignored_mask: 0x20,
                path: "/srv/watched".into(),
            },
            FanotifyMark {
                object: FanotifyObject::Mount,
                flags: 0,
                mask: 0x20,
                ignored_mask: 0,
                path: "/srv".into(),
            },
            FanotifyMark {
                object: FanotifyObject::Filesystem,
                flags: 0x400,
                mask: 0x4000_0300,
                ignored_mask: 0x100,
                path: "/".into(),
            },
        ],
    };
    let fd = Fd {
        fd: 18,
        fd_flags: 1,
        ofd: 27,
        kind: FdKind::Fanotify {
            flags: 0o4000,
            state: group.clone(),
        },
    };
    let packet = FdKind::Packet {
        flags: 0,
        state: PacketSocket::default(),
    };
    assert_eq!(postcard::to_allocvec(&packet).expect("packet")[0], 26);
    let bytes = postcard::to_allocvec(&fd.kind).expect("fanotify");
    // The variant's index 27, flags 0o4000 (varint 0x80 0x10), group
    // flags 0x203 (0x83 0x04), event flags 0o100000 (0x80 0x80 0x02),
    // three marks, the first an inode mark (object 0) with flags 0x40.
    assert_eq!(
        bytes[..11],
        [27u8, 0x80, 0x10, 0x83, 0x04, 0x80, 0x80, 0x02, 3, 0, 0x40]
    );
    let mut w = ImageWriter::new(Vec::new(), &header()).expect("writer");
    w.record(Kind::Fd, &fd).expect("fd");
    let img = w.finish().expect("finish").0;
    let mut r = ImageReader::new(&img[..]).expect("reader");
    let rec = r.next_record().expect("record").expect("one record");
    assert_eq!(rec.kind(), Kind::Fd);
    assert_eq!(rec.decode::<Fd>().expect("fd"), fd);
    assert!(r.next_record().expect("end").is_none());
}
