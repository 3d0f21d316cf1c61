//! The restore's pure front: image bytes → `image_io::read_state` →
//! `restore::plan::check_structure`. Nothing here touches the system; any
//! input must end in a plan or an error, never a panic, a hang or an
//! allocation beyond the record limits.
//!
//! Each input is read twice: as an image, and as records
//! `[kind: u8][len: u16 LE][payload]...` framed behind a valid header with
//! correct CRCs and trailer, so mutations reach the decoders and the plan
//! rather than stopping at a CRC. The seeds in fuzz/seeds/restore_plan are
//! images (two made up, as for the image reader, and dumps of `sleep` and
//! of `sh -c 'sleep 1000 | cat'`) and the same images in that record form,
//! page data replaced by zero pages.

#![no_main]

use libfuzzer_sys::fuzz_target;
use torpor::engine::image_io;
use torpor::engine::restore::plan;
use torpor::image::records::{Kind, Trailer};
use torpor::image::{Header, ImageWriter};

fn plan_of(image: &[u8]) {
    if let Ok(st) = image_io::read_state(image) {
        if let Ok(p) = plan::check_structure(&st) {
            assert_eq!(p.processes, st.processes.len());
            assert_eq!(p.pages, st.pages);
        }
    }
}

/// Appends one record frame: length, kind, payload, CRC of all three.
fn push_frame(image: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&[kind]);
    crc.update(payload);
    image.extend_from_slice(&len);
    image.push(kind);
    image.extend_from_slice(payload);
    image.extend_from_slice(&crc.finalize().to_le_bytes());
}

/// The input as records behind this host's blank header, ending in the
/// trailer a writer would have put there.
fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut image = Vec::new();
    drop(ImageWriter::new(&mut image, &Header::blank()).expect("a blank header"));
    let mut records = 1u64;
    let mut pages = 0u64;
    while data.len() >= 3 {
        let kind = data[0];
        let len = usize::from(u16::from_le_bytes([data[1], data[2]])).min(data.len() - 3);
        let payload = &data[3..3 + len];
        data = &data[3 + len..];
        if kind == Kind::Pages as u8 {
            // What the reader will count, when the head decodes.
            if let Ok(((_vaddr, n), _)) = postcard::take_from_bytes::<(u64, u32)>(payload) {
                pages = pages.saturating_add(u64::from(n));
            }
        }
        push_frame(&mut image, kind, payload);
        records += 1;
    }
    let trailer = Trailer {
        records,
        pages,
        bytes: image.len() as u64,
        crc: crc32fast::hash(&image),
    };
    let payload = postcard::to_allocvec(&trailer).expect("a trailer encodes");
    push_frame(&mut image, Kind::Trailer as u8, &payload);
    image
}

fuzz_target!(|data: &[u8]| {
    plan_of(data);
    plan_of(&framed(data));
});
