//! Feeds arbitrary bytes to the image reader and to `verify`: any input must
//! give a record stream or an error, never a panic, a hang or an allocation
//! beyond the record limits.
//!
//! Random bytes rarely carry valid CRCs, so each input is also read a second
//! way: as a list of (kind, payload) frames behind a valid header, with
//! correct CRCs and a correct trailer, which takes the fuzzer into the
//! payload decoders (postcard, pages, LZ4).

#![no_main]

use libfuzzer_sys::fuzz_target;
use torpor::image::records::{
    Clocks, ExternalPipe, Fd, FileSigIo, Kind, MemfdObject, MmFields, ObjectData, PipeData,
    SeccompFilter, SysvShm, Task, Thread, TmpfsFile, Trailer, UnlinkedObject, Vma,
};
use torpor::image::{self, Header, ImageWriter};

fn read_all(data: &[u8]) {
    let Ok(mut reader) = image::ImageReader::inspect(data) else {
        return;
    };
    let mut pages = vec![0u8; image::PAGE_BATCH_BYTES as usize];
    loop {
        match reader.next_record() {
            Ok(Some(rec)) => match rec.kind() {
                Kind::Task => drop(rec.decode::<Task>()),
                Kind::Thread => drop(rec.decode::<Thread>()),
                Kind::Vma => drop(rec.decode::<Vma>()),
                Kind::Fd => drop(rec.decode::<Fd>()),
                Kind::MmFields => drop(rec.decode::<MmFields>()),
                Kind::PipeData => drop(rec.decode::<PipeData>()),
                Kind::TmpfsFile => drop(rec.decode::<TmpfsFile>()),
                Kind::MemfdObject => drop(rec.decode::<MemfdObject>()),
                Kind::SysvShm => drop(rec.decode::<SysvShm>()),
                Kind::ObjectData => drop(rec.decode::<ObjectData>()),
                Kind::ExternalPipe => drop(rec.decode::<ExternalPipe>()),
                Kind::UnlinkedObject => drop(rec.decode::<UnlinkedObject>()),
                Kind::Clocks => drop(rec.decode::<Clocks>()),
                Kind::FileSigIo => drop(rec.decode::<FileSigIo>()),
                Kind::SeccompFilter => drop(rec.decode::<SeccompFilter>()),
                Kind::Pages => drop(rec.decode_pages_into(&mut pages)),
                Kind::Header | Kind::Trailer => panic!("reader returned a {}", rec.kind()),
            },
            Ok(None) => {
                assert!(reader.summary().is_some());
                break;
            }
            Err(_) => break,
        }
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
}

/// Input as frames: [kind][len: u8][payload]..., behind a valid header and
/// ahead of a valid trailer.
fn reframed(data: &[u8]) -> Vec<u8> {
    let header = Header::blank();
    // The writer puts the header first; the frames after it are made here.
    let mut bytes = Vec::new();
    drop(ImageWriter::new(&mut bytes, &header).expect("a valid header"));
    let mut records = 1u64;
    let mut pages = 0u64;
    let mut rest = data;
    while rest.len() >= 2 {
        let kind = rest[0];
        let n = usize::from(rest[1]).min(rest.len() - 2);
        let payload = &rest[2..2 + n];
        rest = &rest[2 + n..];
        if kind == Kind::Pages as u8 {
            // Count what a valid pages record would add, so that good page
            // records reach the trailer check.
            if let Ok((head, _)) = postcard::take_from_bytes::<(u64, u32)>(payload) {
                pages += u64::from(head.1);
            }
        }
        frame(&mut bytes, kind, payload);
        records += 1;
    }
    let trailer = Trailer {
        records,
        pages,
        bytes: bytes.len() as u64,
        crc: crc32fast::hash(&bytes),
    };
    let t = postcard::to_allocvec(&trailer).unwrap();
    frame(&mut bytes, Kind::Trailer as u8, &t);
    bytes
}

fuzz_target!(|data: &[u8]| {
    read_all(data);
    let _ = image::verify(data);
    let framed = reframed(data);
    read_all(&framed);
    let _ = image::verify(&framed[..]);
});
