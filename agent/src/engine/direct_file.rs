//! An image file written around the page cache: whole chunks from aligned
//! buffers with `O_DIRECT`, by a writer thread while the dump fills the
//! next chunk.
//!
//! A buffered write copies every byte into the page cache, and the fsync
//! that makes the image durable then waits for all of it: on the Pi Zero a
//! second pass over the memory dumped, on any host as much of its page
//! cache as the tree held. Written directly, the bytes go from the dump's
//! buffer to the device; the page cache keeps nothing of an image no one
//! reads until the next boot. Two chunks take turns, so reading the next
//! pages from the tree overlaps writing the last ones.
//!
//! Where the file system refuses `O_DIRECT` (or a write with it), the same
//! chunks are written through the page cache. The tail that does not fill a
//! chunk, which `O_DIRECT` cannot write, goes through the page cache in
//! [`DirectFile::finish`]; the caller's fsync covers both.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::image::ImageSink;

/// Bytes per write: large enough that each write is one large request to
/// the device, small enough for all `CHUNKS` of them to stay a small part of
/// torpor's memory (`make bench-engine` reports its peak).
pub const CHUNK: usize = 1 << 19;

/// Chunks in turn: the dump may run this many chunks minus one ahead of
/// the device.
const CHUNKS: usize = 2;

/// What `O_DIRECT` requires of a buffer's address and of every length and
/// offset: the logical block size, at most a page on every device torpor
/// writes to.
const ALIGN: usize = 4096;

/// A chunk-sized buffer at an `ALIGN`ed address, carved out of a vector
/// (no allocator tricks, no unsafe code).
struct Chunk {
    bytes: Vec<u8>,
    start: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let bytes = vec![0u8; CHUNK + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        Chunk { bytes, start }
    }

    fn buf(&self) -> &[u8] {
        &self.bytes[self.start..self.start + CHUNK]
    }

    fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + CHUNK]
    }
}

/// A job for the writer thread: `len` bytes of the chunk; the tail goes
/// through the page cache.
struct Job {
    chunk: Chunk,
    len: usize,
    tail: bool,
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file.as_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// The writer thread: writes each job's bytes in order, hands the chunk
/// back, and returns the file (or the first error) once the jobs end.
fn write_jobs(
    file: File,
    mut direct: bool,
    jobs: Receiver<Job>,
    done: SyncSender<Chunk>,
) -> io::Result<File> {
    for job in jobs {
        if job.tail && direct {
            set_direct(&file, false)?;
            direct = false;
        }
        let mut bytes = &job.chunk.buf()[..job.len];
        while !bytes.is_empty() {
            match (&file).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A file system that takes the flag but not the write: the
                // page cache after all, from where this write stopped.
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(&file, false)?;
                    direct = false;
                }
                Err(e) => return Err(e),
            }
        }
        // The dump may have finished and stopped taking chunks back.
        let _ = done.send(job.chunk);
    }
    Ok(file)
}

/// Writes an image into a file in whole, aligned chunks (see the module
/// documentation). Bytes reach the file only in whole chunks; [`finish`]
/// writes the rest and gives the file back for the caller to sync.
///
/// [`finish`]: DirectFile::finish
pub struct DirectFile {
    /// The chunk being filled.
    cur: Chunk,
    fill: usize,
    /// The chunks before their first turn.
    spare: Vec<Chunk>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Chunk>,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFile")
            .field("fill", &self.fill)
            .finish_non_exhaustive()
    }
}

impl DirectFile {
    /// Writes into `file` from its current offset, which must be a multiple
    /// of the chunk alignment (a new file's 0).
    pub fn new(file: File) -> io::Result<DirectFile> {
        // A file system without O_DIRECT refuses the flag: buffered then.
        let direct = set_direct(&file, true).is_ok();
        // Every chunk but the one being filled may be waiting or written.
        let (jobs, rx) = mpsc::sync_channel::<Job>(CHUNKS - 1);
        let (done_tx, done) = mpsc::sync_channel::<Chunk>(CHUNKS);
        let writer = std::thread::Builder::new()
            .name("torpor-image".into())
            .spawn(move || write_jobs(file, direct, rx, done_tx))?;
        Ok(DirectFile {
            cur: Chunk::new(),
            fill: 0,
            spare: (1..CHUNKS).map(|_| Chunk::new()).collect(),
            jobs: Some(jobs),
            done,
            writer: Some(writer),
        })
    }

    /// The writer thread's error, once it has stopped.
    fn writer_error(&mut self) -> io::Error {
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the image writer thread panicked"),
            _ => io::Error::other("the image writer thread stopped"),
        }
    }

    /// Hands the first `len` bytes of the current chunk to the writer and
    /// takes a free chunk, into which the bytes after them move.
    fn hand_over(&mut self, len: usize, tail: bool) -> io::Result<()> {
        let mut next = match self.spare.pop() {
            Some(c) => c,
            None if tail => Chunk {
                bytes: Vec::new(),
                start: 0,
            },
            None => match self.done.recv() {
                Ok(c) => c,
                Err(_) => return Err(self.writer_error()),
            },
        };
        let carry = self.fill - len;
        if carry > 0 {
            next.buf_mut()[..carry].copy_from_slice(&self.cur.buf()[len..self.fill]);
        }
        let job = Job {
            chunk: std::mem::replace(&mut self.cur, next),
            len,
            tail,
        };
        self.fill = carry;
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.writer_error()),
        }
    }

    /// Writes what is left and returns the file, every byte written (not
    /// yet synced).
    pub fn finish(mut self) -> io::Result<File> {
        if self.fill > 0 {
            self.hand_over(self.fill, true)?;
        }
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(io::Error::other("the image writer thread panicked")),
            None => Err(io::Error::other("the image writer thread stopped")),
        }
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.writer.is_none() {
            return Err(io::Error::other("the image writer thread stopped"));
        }
        let n = data.len().min(CHUNK - self.fill);
        self.cur.buf_mut()[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.fill += n;
        if self.fill == CHUNK {
            self.hand_over(CHUNK, false)?;
        }
        Ok(n)
    }

    /// Nothing to do: bytes go out in whole chunks, the rest in
    /// [`finish`](DirectFile::finish).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Room is lent inside the current chunk. When the chunk has too little
/// left, the aligned part of it goes out early and the few bytes after it
/// (less than `ALIGN`) move to the start of the next chunk.
impl ImageSink for DirectFile {
    fn room(&mut self, n: usize) -> io::Result<Option<&mut [u8]>> {
        if self.writer.is_none() {
            return Err(io::Error::other("the image writer thread stopped"));
        }
        if n > CHUNK - ALIGN {
            return Ok(None);
        }
        if CHUNK - self.fill < n {
            self.hand_over(self.fill - self.fill % ALIGN, false)?;
        }
        let fill = self.fill;
        Ok(Some(&mut self.cur.buf_mut()[fill..]))
    }

    fn commit_room(&mut self, n: usize) -> io::Result<()> {
        if n > CHUNK - self.fill {
            return Err(io::Error::other(format!(
                "{n} bytes committed, {} lent",
                CHUNK - self.fill
            )));
        }
        self.fill += n;
        if self.fill == CHUNK {
            self.hand_over(CHUNK, false)?;
        }
        Ok(())
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        // Stops the writer; a dump that failed discards the file anyway.
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 4099) % 251).unwrap_or(0))
            .collect()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("torpor-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    /// Every length around the chunk boundaries, in writes of odd sizes,
    /// reads back byte for byte.
    #[test]
    fn every_byte_reaches_the_file_in_order() {
        for len in [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345] {
            let path = temp(&format!("out-{len}"));
            let data = pattern(len);
            let mut w = DirectFile::new(File::create(&path).expect("create")).expect("writer");
            for piece in data.chunks(65_557) {
                w.write_all(piece).expect("write");
            }
            w.flush().expect("flush");
            let f = w.finish().expect("finish");
            f.sync_all().expect("sync");
            let mut back = Vec::new();
            File::open(&path)
                .expect("open")
                .read_to_end(&mut back)
                .expect("read");
            assert_eq!(back.len(), len);
            assert!(back == data, "{len} bytes differ");
            std::fs::remove_file(&path).expect("remove");
        }
    }

    /// Bytes put into lent room and bytes written interleave in order,
    /// across chunk boundaries, where room is made by sending the aligned
    /// part of a chunk early.
    #[test]
    fn lent_room_and_writes_keep_their_order() {
        let path = temp("room");
        let data = pattern(5 * CHUNK + 777);
        let mut w = DirectFile::new(File::create(&path).expect("create")).expect("writer");
        let mut at = 0;
        let mut turn = 0usize;
        while at < data.len() {
            let n = [17, 65_557, 4096, 300_001][turn % 4].min(data.len() - at);
            if turn % 2 == 1 {
                let room = w.room(n).expect("room").expect("lent");
                assert!(room.len() >= n);
                room[..n].copy_from_slice(&data[at..at + n]);
                w.commit_room(n).expect("commit");
            } else {
                w.write_all(&data[at..at + n]).expect("write");
            }
            at += n;
            turn += 1;
        }
        assert!(w.room(CHUNK).expect("room").is_none(), "more than a chunk");
        let f = w.finish().expect("finish");
        f.sync_all().expect("sync");
        let mut back = Vec::new();
        File::open(&path)
            .expect("open")
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "bytes differ");
        std::fs::remove_file(&path).expect("remove");
    }

    /// A file that cannot be written fails the write or the finish with
    /// the system's error, not a hang.
    #[test]
    fn a_write_error_comes_back() {
        let path = temp("read-only");
        File::create(&path).expect("create");
        let f = File::open(&path).expect("open read-only");
        let mut w = DirectFile::new(f).expect("writer");
        let data = pattern(3 * CHUNK);
        let res = w.write_all(&data).and_then(|()| w.finish().map(drop));
        let e = res.expect_err("a read-only descriptor");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        std::fs::remove_file(&path).expect("remove");
    }
}
