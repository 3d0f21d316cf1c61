//! Image codec throughput and memory, against a plain copy of the same bytes.
//!
//! `make bench-image` (or `cargo bench -p torpor --bench codec`). For 64 MiB
//! of incompressible and of compressible pages it reports encode and decode
//! throughput in MiB/s, each as a ratio to a memcpy of the same 64 MiB
//! measured in the same run, the image size, and the encoder's peak heap
//! (counted by a global allocator wrapper) and the process's VmHWM.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use torpor::image::{Header, ImageReader, ImageWriter, Kind};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only updates two counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new) };
        if !p.is_null() {
            let now = if new >= layout.size() {
                LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + (new - layout.size())
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed) - (layout.size() - new)
            };
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIZE: usize = 64 << 20;
const PAGE: usize = 4096;
const ROUNDS: usize = 3;

fn noise(len: usize) -> Vec<u8> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// Pages that look like a program's heap: small counters, pointers into a
/// narrow range, text, and padding. LZ4 shrinks them to about a quarter.
fn heapish(len: usize) -> Vec<u8> {
    let text = b"sensor=temp value=21.5 unit=C status=ok; ";
    let mut v = Vec::with_capacity(len);
    let mut i: u32 = 0;
    while v.len() < len {
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&(0xb6f0_0000u32 + (i % 512) * 16).to_le_bytes());
        if i % 4 == 0 {
            v.extend_from_slice(text);
        }
        v.extend_from_slice(&[0; 8]);
        i = i.wrapping_add(1);
    }
    v.truncate(len);
    v
}

fn header() -> Header {
    Header::blank()
}

fn best<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("ROUNDS > 0"))
}

fn mib_s(d: Duration) -> f64 {
    (SIZE as f64 / f64::from(1u32 << 20)) / d.as_secs_f64()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Encodes to a sink (the write itself costs nothing), returns the image
/// size and the peak heap above what was live before.
fn encode(data: &[u8]) -> (u64, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut w = ImageWriter::new(io::sink(), &header()).expect("writer");
    // As a dump does: one call per batch of pages read from the target.
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        w.pages(0x1000_0000 + (i as u64) * (1 << 20), chunk)
            .expect("pages");
    }
    let (_, s) = w.finish().expect("finish");
    (s.bytes, PEAK.load(Ordering::Relaxed) - base)
}

fn encode_to_vec(data: &[u8]) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::with_capacity(SIZE + SIZE / 64), &header()).expect("writer");
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        w.pages(0x1000_0000 + (i as u64) * (1 << 20), chunk)
            .expect("pages");
    }
    w.finish().expect("finish").0
}

/// Decodes every page record into its place in `dest`, as a restore writes
/// pages into the target's memory.
fn decode(img: &[u8], dest: &mut [u8]) -> usize {
    let mut r = ImageReader::new(img).expect("reader");
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            let at = usize::try_from(info.vaddr - 0x1000_0000).expect("fits");
            dest[at..at + info.len].copy_from_slice(&buf[..info.len]);
            n += info.len;
        }
    }
    n
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too
    // and only needs it to start.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let mut dest = vec![0u8; SIZE];
    let inputs = [("random", noise(SIZE)), ("compressible", heapish(SIZE))];

    let (copy, _) = best(|| {
        dest.copy_from_slice(black_box(&inputs[0].1));
        black_box(&dest);
    });
    let base = mib_s(copy);
    println!(
        "baseline memcpy of 64 MiB: {base:8.0} MiB/s ({:.1} ms)",
        copy.as_secs_f64() * 1e3
    );

    for (name, data) in &inputs {
        let (enc, (bytes, peak)) = best(|| encode(black_box(data)));
        let img = encode_to_vec(data);
        assert_eq!(img.len() as u64, bytes);
        let (dec, n) = best(|| decode(black_box(&img), &mut dest));
        assert_eq!(n, SIZE);
        assert!(dest == *data, "decoded pages differ");
        println!(
            "{name:>12}: encode {:8.0} MiB/s ({:.3}x memcpy)  decode {:8.0} MiB/s ({:.3}x memcpy)  \
             image {:.1}% of input  encoder peak heap {} KiB",
            mib_s(enc),
            mib_s(enc) / base,
            mib_s(dec),
            mib_s(dec) / base,
            bytes as f64 * 100.0 / SIZE as f64,
            peak / 1024,
        );
    }

    // What noticing incompressible data costs: LZ4 over a whole 64 KiB batch
    // of noise, against LZ4 over a 4 KiB sample of it.
    let random = &inputs[0].1;
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(64 * 1024)];
    let (full, _) = best(|| {
        for b in random.chunks(64 * 1024) {
            black_box(lz4_flex::block::compress_into(b, &mut out).expect("lz4"));
        }
    });
    let (sample, _) = best(|| {
        for b in random.chunks(64 * 1024) {
            black_box(lz4_flex::block::compress_into(&b[..PAGE], &mut out).expect("lz4"));
        }
    });
    println!(
        "incompressible detection over 64 MiB: whole-batch LZ4 {:8.0} MiB/s ({:.3}x memcpy), \
         4 KiB-sample LZ4 {:8.0} MiB/s ({:.3}x memcpy)",
        mib_s(full),
        mib_s(full) / base,
        mib_s(sample),
        mib_s(sample) / base,
    );
    println!(
        "process VmHWM: {} KiB (inputs and images included)",
        vm_hwm_kib()
    );
}
