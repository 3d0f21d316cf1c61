//! The engine's image stream: framed records
//! `[len: u32 LE][kind: u8][postcard payload][crc32 of kind+payload: u32 LE]`,
//! written and read one record at a time so no whole image is ever held.
//!
//! ```text
//!  Header                      arch, page size, format
//!  Files                       open file descriptions and pipes of the tree
//!  Task(pid A)  Pages*         a process, then its stored pages
//!  Task(pid B)  Pages*
//!  ...
//!  Trailer                     record count and page count
//! ```

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::engine::state::{OpenFile, PipeState, ProcessState};

pub const MAGIC: [u8; 8] = *b"TORPORIM";
pub const FORMAT_MAJOR: u16 = 0;
/// The largest payload accepted: a page batch plus its head, or a task.
pub const RECORD_LIMIT: u32 = 4 * 1024 * 1024;
/// Bytes of page data per Pages record.
pub const PAGE_BATCH: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Header = 1,
    Task = 2,
    Files = 7,
    Pages = 8,
    Trailer = 9,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [Kind::Header, Kind::Task, Kind::Files, Kind::Pages, Kind::Trailer]
            .into_iter()
            .find(|k| *k as u8 == b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: [u8; 8],
    pub major: u16,
    pub arch: String,
    pub page_size: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Files {
    pub files: Vec<OpenFile>,
    pub pipes: Vec<PipeState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagesRec<'a> {
    pub vaddr: u64,
    #[serde(borrow)]
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub records: u64,
    pub page_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image I/O: {0}")]
    Io(#[from] io::Error),
    #[error("image ends in the middle of a record at byte {0}")]
    Truncated(u64),
    #[error("record at byte {at} claims {len} bytes, more than the {RECORD_LIMIT} limit")]
    TooLong { at: u64, len: u32 },
    #[error("record at byte {0} fails its CRC")]
    BadCrc(u64),
    #[error("unknown record kind {kind} at byte {at}")]
    UnknownKind { at: u64, kind: u8 },
    #[error("record at byte {at} does not decode: {err}")]
    Decode { at: u64, err: postcard::Error },
    #[error("encoding a record: {0}")]
    Encode(postcard::Error),
    #[error("not a torpor image (bad magic)")]
    BadMagic,
    #[error("image format {0} is not supported (this torpor reads {FORMAT_MAJOR})")]
    Version(u16),
    #[error("image is for {image}, this machine is {host}")]
    Arch { image: String, host: String },
    #[error("image page size {image} differs from this machine's {host}")]
    PageSize { image: u32, host: u32 },
    #[error("image has no trailer: it was cut short")]
    NoTrailer,
    #[error("image records out of order: {0}")]
    Order(&'static str),
}

pub fn host_header() -> Header {
    Header {
        magic: MAGIC,
        major: FORMAT_MAJOR,
        arch: crate::arch::ARCH.to_string(),
        page_size: u32::try_from(crate::engine::page_size()).unwrap_or(4096),
    }
}

impl Header {
    pub fn check_host(&self) -> Result<(), ImageError> {
        if self.magic != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if self.major != FORMAT_MAJOR {
            return Err(ImageError::Version(self.major));
        }
        let host = host_header();
        if self.arch != host.arch {
            return Err(ImageError::Arch { image: self.arch.clone(), host: host.arch });
        }
        if self.page_size != host.page_size {
            return Err(ImageError::PageSize { image: self.page_size, host: host.page_size });
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    records: u64,
    page_bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(w: W) -> Result<Self, ImageError> {
        let mut me = Self { w, records: 0, page_bytes: 0, buf: Vec::new() };
        me.record(Kind::Header, &host_header())?;
        Ok(me)
    }

    pub fn record<T: Serialize>(&mut self, kind: Kind, v: &T) -> Result<(), ImageError> {
        self.buf.clear();
        self.buf.push(kind as u8);
        let payload = postcard::to_allocvec(v).map_err(ImageError::Encode)?;
        self.buf.extend_from_slice(&payload);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if len > RECORD_LIMIT {
            return Err(ImageError::TooLong { at: 0, len });
        }
        let crc = crc32fast::hash(&self.buf);
        self.w.write_all(&len.to_le_bytes())?;
        self.w.write_all(&self.buf)?;
        self.w.write_all(&crc.to_le_bytes())?;
        self.records += 1;
        Ok(())
    }

    pub fn pages(&mut self, vaddr: u64, data: &[u8]) -> Result<(), ImageError> {
        self.page_bytes += data.len() as u64;
        self.record(Kind::Pages, &PagesRec { vaddr, data })
    }

    pub fn finish(mut self) -> Result<W, ImageError> {
        let t = Trailer { records: self.records + 1, page_bytes: self.page_bytes };
        self.record(Kind::Trailer, &t)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[derive(Debug)]
pub struct Record<'a> {
    pub kind: Kind,
    pub at: u64,
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ImageError> {
        postcard::from_bytes(self.payload).map_err(|err| ImageError::Decode { at: self.at, err })
    }
    pub fn pages(&self) -> Result<PagesRec<'a>, ImageError> {
        postcard::from_bytes(self.payload).map_err(|err| ImageError::Decode { at: self.at, err })
    }
}

#[derive(Debug)]
pub struct Reader<R: Read> {
    r: R,
    at: u64,
    buf: Vec<u8>,
    pub header: Header,
    pub trailer: Option<Trailer>,
    records: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Result<Self, ImageError> {
        let mut me = Self { r, at: 0, buf: Vec::new(), header: host_header(), trailer: None, records: 0 };
        let at = me.at;
        match me.next_raw()? {
            Some(Kind::Header) => {
                let h: Header = postcard::from_bytes(&me.buf[1..])
                    .map_err(|err| ImageError::Decode { at, err })?;
                if h.magic != MAGIC {
                    return Err(ImageError::BadMagic);
                }
                h.check_host()?;
                me.header = h;
                Ok(me)
            }
            Some(_) | None => Err(ImageError::BadMagic),
        }
    }

    fn read_full(&mut self, n: usize) -> Result<bool, ImageError> {
        self.buf.resize(n, 0);
        let mut got = 0;
        while got < n {
            match self.r.read(&mut self.buf[got..]) {
                Ok(0) => return Ok(false),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Reads one frame into `buf` (kind byte + payload) and checks it.
    fn next_raw(&mut self) -> Result<Option<Kind>, ImageError> {
        let start = self.at;
        let mut lenb = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut lenb[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ImageError::Truncated(start)),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(lenb);
        if len > RECORD_LIMIT {
            return Err(ImageError::TooLong { at: start, len });
        }
        let n = usize::try_from(len).unwrap_or(usize::MAX) + 1 + 4;
        if !self.read_full(n)? {
            return Err(ImageError::Truncated(start));
        }
        let body = n - 4;
        let crc = u32::from_le_bytes([self.buf[body], self.buf[body + 1], self.buf[body + 2], self.buf[body + 3]]);
        if crc32fast::hash(&self.buf[..body]) != crc {
            return Err(ImageError::BadCrc(start));
        }
        self.buf.truncate(body);
        self.at += 4 + n as u64;
        self.records += 1;
        let kind = Kind::from_byte(self.buf[0]).ok_or(ImageError::UnknownKind { at: start, kind: self.buf[0] })?;
        Ok(Some(kind))
    }

    /// The next record, or None after the trailer. A stream without a
    /// trailer is an error.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ImageError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let at = self.at;
        let Some(kind) = self.next_raw()? else {
            return Err(ImageError::NoTrailer);
        };
        if kind == Kind::Trailer {
            let t: Trailer = postcard::from_bytes(&self.buf[1..]).map_err(|err| ImageError::Decode { at, err })?;
            if t.records != self.records {
                return Err(ImageError::Order("trailer record count does not match"));
            }
            self.trailer = Some(t);
            return Ok(None);
        }
        if kind == Kind::Header {
            return Err(ImageError::Order("a second header"));
        }
        Ok(Some(Record { kind, at, payload: &self.buf[1..] }))
    }
}

/// Everything in an image except page contents, read after checking every
/// record's CRC (the pages are checked and skipped).
#[derive(Debug, Default)]
pub struct ImageState {
    pub files: Files,
    pub processes: Vec<ProcessState>,
    pub page_bytes: u64,
}

pub fn read_state<R: Read>(r: R) -> Result<ImageState, ImageError> {
    let mut rd = Reader::new(r)?;
    let mut st = ImageState::default();
    let mut have_files = false;
    while let Some(rec) = rd.next_record()? {
        match rec.kind {
            Kind::Files => {
                st.files = rec.decode()?;
                have_files = true;
            }
            Kind::Task => {
                if !have_files {
                    return Err(ImageError::Order("task before the files record"));
                }
                st.processes.push(rec.decode()?);
            }
            Kind::Pages => {
                if st.processes.is_empty() {
                    return Err(ImageError::Order("pages before any task"));
                }
                let p = rec.pages()?;
                st.page_bytes += p.data.len() as u64;
            }
            Kind::Header | Kind::Trailer => {}
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).expect("header");
        w.record(Kind::Files, &Files::default()).expect("files");
        let p = ProcessState { pid: 77, ..Default::default() };
        w.record(Kind::Task, &p).expect("task");
        w.pages(0x1000, &[7u8; 4096]).expect("pages");
        w.finish().expect("finish")
    }

    #[test]
    fn round_trip() {
        let img = sample();
        let st = read_state(&img[..]).expect("valid");
        assert_eq!(st.processes.len(), 1);
        assert_eq!(st.processes[0].pid, 77);
        assert_eq!(st.page_bytes, 4096);
    }

    #[test]
    fn every_bit_flip_and_cut_is_refused() {
        let img = sample();
        for i in (0..img.len()).step_by(97) {
            let mut bad = img.clone();
            bad[i] ^= 0x10;
            assert!(read_state(&bad[..]).is_err(), "flip at {i} accepted");
        }
        for cut in [0, 3, 10, img.len() / 2, img.len() - 1] {
            assert!(read_state(&img[..cut]).is_err(), "cut at {cut} accepted");
        }
    }
}
