//! The image format: a checkpoint as a stream of CRC-checked records.
//!
//! ```text
//!  offset 0
//!  +----------+------+-----------------------------------------+----------+
//!  | len: u32 | kind | payload (postcard)                      | crc: u32 |
//!  |   LE     |  u8  |                                         |    LE    |
//!  +----------+------+-----------------------------------------+----------+
//!  | len      | 1    | header: magic "TORPORIM", major, minor, | crc      |
//!  |          |      | arch, page size, kernel release,        |          |
//!  |          |      | boot id, host, creation time, version   |          |
//!  +----------+------+-----------------------------------------+----------+
//!  | len      | 11   | clocks: the tree's clocks at the freeze  | crc      |
//!  +----------+------+-----------------------------------------+----------+
//!  | len      | 2..7 | task / thread / vma / fd / mm /         | crc      |
//!  |          | 10   | pipe-data / tmpfs-file                  |          |
//!  +----------+------+-----------------------------------------+----------+
//!  | len      | 8    | pages: vaddr, pages, codec, data        | crc      |
//!  +----------+------+-----------------------------------------+----------+
//!  |   ...    |      |                                         |          |
//!  +----------+------+-----------------------------------------+----------+
//!  | len      | 9    | trailer: records, pages, bytes, crc     | crc      |
//!  +----------+------+-----------------------------------------+----------+
//!  end of image
//! ```
//!
//! * `len` is the payload length only (not the 9 bytes of framing).
//! * Each record's `crc` is CRC32 (crc32fast, IEEE) over `len`, `kind` and
//!   the payload, so a flipped length bit is caught like any other.
//! * The trailer's `crc` is CRC32 over every byte before the trailer record
//!   (header included); `bytes` is that byte count, `records` the number of
//!   records before the trailer (header included), `pages` the sum of the
//!   page counts of all `Pages` records. Nothing may follow the trailer.
//! * The header's magic is its first 8 payload bytes, i.e. bytes 5..13 of the
//!   image, so a foreign file is recognised before anything else is read.
//! * Every `len` is checked against its kind's limit ([`Kind::limit`]) before
//!   a buffer is sized for it, so memory use is bounded by the largest record
//!   whatever the image size. Both CRCs are computed by adapters while bytes
//!   flow, never in a second pass.
//! * The kinds, their bytes, names, payload types and limits are declared
//!   once, in the registry of [`records`].
//!
//! A `Pages` record's payload is `vaddr, pages, codec` followed by the data as
//! a postcard byte string: the page bytes (`Raw`), one LZ4 block of them
//! (`Lz4`), or nothing (`Zero`, all pages zero).
//!
//! # Versions
//!
//! The header's `major.minor` ([`FORMAT`] when written) says how to read
//! the records after it. Postcard writes a struct's fields by position,
//! with no names or tags, and an enum's variants by index, so a payload
//! means something only to a reader whose types have the same shape:
//!
//! * A change to the fields of an existing record type or of any type it
//!   holds (fields reordered, retyped, added or removed), removing,
//!   inserting or reordering enum variants, renumbering a kind, or changing
//!   the framing (length, kind byte, CRCs, trailer) is a **major** bump.
//! * A new record kind, appended to the registry with the next free byte,
//!   is a **minor** bump; so is a variant appended at the end of an enum.
//!   Nothing else is.
//! * The reader reads every minor of its own major. Any other major is
//!   refused as soon as the header's version is decoded, before anything
//!   else, with an error naming the image's version and the one this
//!   torpor reads ([`ImageError::UnsupportedVersion`]).
//! * A record of a kind byte the reader does not know is never skipped: it
//!   is refused ([`ImageError::UnknownKind`]), since a restore that left it
//!   out would not be the tree that was dumped. A record using an enum
//!   variant the reader does not know fails to decode
//!   ([`ImageError::Decode`]). An image of a newer minor is therefore read
//!   when it holds only kinds and variants this reader knows (a new kind is
//!   written only when the tree needs it), and refused otherwise.
//! * Every version the reader accepts has a checked-in image,
//!   `agent/tests/images/format-MAJOR.MINOR.img`, with a test
//!   (`agent/tests/image_format.rs`) asserting the decoded value of every
//!   record in it; a bump adds the new version's image.
//!
//! Format 2.7 adds five kinds. `thread-seccomp`, byte 28: what a thread of
//! the process before it runs under beyond the process's `seccomp-filter`
//! records (which are then the filters every thread shares), either strict
//! mode or one filter of the thread's own, a thread's oldest first. It is
//! written only for a process whose threads differ, so the image of a
//! process whose threads all run under the same filters is written as in
//! 2.6; a 2.6 reader refuses an image holding one for the kind it does not
//! know.
//! `cgroup`, byte 29: a control group (v2) processes of the tree were in,
//! other than the dumping torpor's own, with the processes and the settings
//! of its controllers, written after every process (a 2.6 reader refuses an
//! image holding one for the kind it does not know).
//! `aio-ring`, byte 30: an AIO context (`io_setup`) of the process
//! before it, by its ring's address and size, with the ring header and the
//! completions not yet reaped (several records in a row when there are
//! more than one record holds). `membarrier`, byte 31: the process's `membarrier`
//! registrations, written only when it has some. A 2.6 reader refuses an
//! image holding either for the kind it does not know.
//! `unix-creds`, byte 32: the credentials (`SCM_CREDENTIALS`: pid,
//! uid, gid) the kernel recorded for a queued message of a UNIX socket,
//! the sender a process of the tree, one record per message sent with
//! some, written after every process (a 2.6 reader refuses an image
//! holding one for the kind it does not know).
//! It also appends the `Fanotify` variant to `FdKind` (index 27, after
//! `Packet`): a fanotify group kept with its `fanotify_init` flags, the
//! status flags of its event files and its marks, each an inode, mount or
//! filesystem mark with its flags, mask and ignored mask on a path (a 2.6
//! reader fails to decode an image holding one).
//!
//! Format 2.6 adds two kinds, bytes 26 and 27. `flight-file`: a file description only a
//! queued message of a UNIX socket holds, its sender's copy closed, written
//! after every process and before the `unix-rights` records that pass it.
//! `unix-waiting`: the clients of the connections waiting to be accepted by
//! a UNIX listener, in `accept` order, written after every process. A 2.5
//! reader refuses an image holding either for the kind it does not know.
//! It also appends the `Netlink` and `Packet` variants to `FdKind`: a
//! netlink socket kept with its protocol, port id, multicast groups,
//! destination and options, and a packet socket with its protocol,
//! interface and options (a 2.5 reader fails to decode an image holding
//! either).
//!
//! Format 2.5 adds three kinds. `task-attrs`: scheduling, nice values and
//! parent-death signals of threads, child subreaper, dumpable, THP
//! disabled, `oom_score_adj` and the `madvise` flags of mappings, written
//! for a process only when one of them differs from a new process's (a 2.4
//! reader refuses an image holding one for the kind it does not know).
//! Its securebits, in the `Creds` every format has, are filled from 2.5 on.
//! `unix-rights`: the descriptors a queued message of a UNIX socket passes
//! (`SCM_RIGHTS`), written after every process when a queue holds some.
//! `sock-opts`: the options of a socket that differ from a new socket's,
//! beyond its fd record's, written after every process. It also appends the `TcpClosing` variant to `FdKind`: a TCP connection
//! kept half-closed or closing (a 2.4 reader fails to decode an image
//! holding one, rather than bring it back established).
//!
//! Format 2.4 appends the `Pidfd`, `ProcFile` and `TcpConnection`
//! variants to `FdKind` (a pidfd and a file of `/proc` of a process of the
//! tree; an established TCP connection kept through TCP repair mode) and the
//! `tcp-queue` kind with a kept connection's queued bytes (a 2.3 reader
//! fails to decode an image holding one).
//!
//! Format 2.3 appends the `PtyMaster` and `PtySlave` variants to `FdKind`:
//! pseudo-terminal pairs the tree holds both ends of (a 2.2 reader fails to
//! decode an image holding one).
//!
//! Format 2.2 adds the `tree` kind: an image may hold several trees, each
//! with its root and application name (a 2.1 reader refuses such an image
//! for the kind it does not know).
//!
//! Format 2.0 starts this rule: record types changed field order while the
//! format stayed 1.1, so a 1.x image could decode into wrong values and is
//! refused instead.

pub mod records;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use records::{
    Codec, Kind, KindVisitor, Pages, PagesHead, RecordType, StateRecord, Trailer, PAGE_BATCH_BYTES,
};

/// The first 8 bytes of every header payload.
pub const MAGIC: [u8; 8] = *b"TORPORIM";

/// The format this torpor writes, and the major version it reads (see
/// "Versions" above).
pub const FORMAT: FormatVersion = FormatVersion { major: 2, minor: 7 };

/// Bytes of framing around a payload: length, kind and CRC.
pub const FRAME_BYTES: u64 = 9;

/// Smallest and largest page size an image may declare.
const MIN_PAGE_SIZE: u32 = 4096;
const MAX_PAGE_SIZE: u32 = 64 * 1024;

/// Everything that can go wrong writing or reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a torpor image: bytes 5..13 are {found:02x?}, expected the magic \"TORPORIM\"")]
    BadMagic { found: [u8; 8] },
    #[error("image format {found} is not supported (this torpor reads format {supported})")]
    UnsupportedVersion {
        found: FormatVersion,
        supported: FormatVersion,
    },
    #[error("image was made on {image}, this host is {host}")]
    WrongArch { image: Arch, host: Arch },
    #[error("image page size is {image} bytes, this host's is {host}")]
    WrongPageSize { image: u32, host: u32 },
    #[error("image header declares an invalid page size of {0} bytes")]
    BadPageSize(u32),
    #[error("CRC mismatch in the {kind} record at offset {offset}: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        offset: u64,
        kind: KindByte,
        stored: u32,
        computed: u32,
    },
    #[error("image truncated at offset {offset}: {what} is incomplete")]
    Truncated { offset: u64, what: &'static str },
    #[error("{kind} record at offset {offset} is {len} bytes, more than the limit of {limit}")]
    RecordTooLarge {
        offset: u64,
        kind: Kind,
        len: u64,
        limit: u32,
    },
    #[error("unknown record kind {kind} at offset {offset} (corrupt, or from a newer torpor)")]
    UnknownKind { offset: u64, kind: u8 },
    #[error("cannot decode the {kind} record at offset {offset}: {source}")]
    Decode {
        offset: u64,
        kind: Kind,
        source: postcard::Error,
    },
    #[error("cannot encode a {kind} record: {source}")]
    Encode { kind: Kind, source: postcard::Error },
    #[error("malformed {kind} record at offset {offset}: {reason}")]
    Malformed {
        offset: u64,
        kind: Kind,
        reason: String,
    },
    #[error("trailer mismatch: the trailer says {field} = {stored}, the image has {actual}")]
    TrailerMismatch {
        field: &'static str,
        stored: u64,
        actual: u64,
    },
    #[error("unexpected data follows the trailer, at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("pages at {vaddr:#x} (+{len} bytes) run past the end of the address space")]
    AddressOverflow { vaddr: u64, len: u64 },
    #[error("{kind} records are written by the image writer itself, not by record()")]
    ReservedKind { kind: Kind },
    #[error(
        "pages at {vaddr:#x} (+{len} bytes) are not aligned to the {page_size}-byte page size"
    )]
    Unaligned {
        vaddr: u64,
        len: u64,
        page_size: u32,
    },
    #[error("buffer of {got} bytes cannot hold {needed} bytes of pages")]
    BufferTooSmall { needed: usize, got: usize },
    #[error("this is a {kind} record, not a pages record")]
    NotPages { kind: Kind },
    #[error("the {kind} record at offset {offset} cannot be read as a {wanted} record")]
    WrongKind {
        offset: u64,
        kind: Kind,
        wanted: Kind,
    },
    #[error("cannot read {what}: {source}")]
    Host {
        what: &'static str,
        source: io::Error,
    },
    #[error("I/O error at image offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

impl ImageError {
    /// The image's bytes are damaged: a record fails its CRC, is cut short
    /// or does not decode. Not an image of another machine or another
    /// torpor, a caller's misuse, or a read the device failed.
    pub fn is_damage(&self) -> bool {
        use ImageError as E;
        match self {
            E::BadMagic { .. }
            | E::BadPageSize(_)
            | E::Crc { .. }
            | E::Truncated { .. }
            | E::RecordTooLarge { .. }
            | E::UnknownKind { .. }
            | E::Decode { .. }
            | E::Malformed { .. }
            | E::TrailerMismatch { .. }
            | E::TrailingData { .. }
            | E::AddressOverflow { .. }
            | E::Unaligned { .. }
            | E::WrongKind { .. } => true,
            E::UnsupportedVersion { .. }
            | E::WrongArch { .. }
            | E::WrongPageSize { .. }
            | E::Encode { .. }
            | E::ReservedKind { .. }
            | E::BufferTooSmall { .. }
            | E::NotPages { .. }
            | E::Host { .. }
            | E::Io { .. } => false,
        }
    }
}

/// A kind byte as found in a frame; shown by name when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindByte(pub u8);

impl fmt::Display for KindByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Kind::from_byte(self.0) {
            Some(k) => write!(f, "{k}"),
            None => write!(f, "kind-{}", self.0),
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// The format version: major changes are incompatible, minor ones add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatVersion {
    pub major: u16,
    pub minor: u16,
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The CPU architecture an image was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
    /// 32-bit ARM (ARMv6 and later, EABI).
    Arm,
    Aarch64,
}

impl Arch {
    /// The architecture this torpor was built for: the one place in the image
    /// code that looks at the target.
    pub const fn host() -> Arch {
        #[cfg(target_arch = "x86_64")]
        {
            Arch::X86_64
        }
        #[cfg(target_arch = "arm")]
        {
            Arch::Arm
        }
        #[cfg(target_arch = "aarch64")]
        {
            Arch::Aarch64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm => "arm",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first record: what the image is and where it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Must be [`MAGIC`]; first, so it sits at a fixed offset in the file.
    pub magic: [u8; 8],
    /// Second, so a reader can refuse another major before decoding more.
    pub version: FormatVersion,
    pub arch: Arch,
    pub page_size: u32,
    pub kernel_release: String,
    pub boot_id: String,
    pub host_name: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    pub torpor_version: String,
}

/// The part of the header every major version shares. The magic was
/// already compared as raw bytes; it is decoded only to reach the version.
#[derive(Deserialize)]
struct HeaderPrefix {
    _magic: [u8; 8],
    version: FormatVersion,
}

/// The host's page size.
pub fn host_page_size() -> u32 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        // Linux page sizes are at most 64 KiB: the fallback is never taken.
        Ok(Some(n)) => u32::try_from(n).unwrap_or(MIN_PAGE_SIZE),
        _ => MIN_PAGE_SIZE,
    }
}

fn read_trimmed(path: &'static str) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|source| ImageError::Host { what: path, source })
}

impl Header {
    /// A header of this format and architecture, 4 KiB pages, no host
    /// details: for images made up by tests, benchmarks and the fuzzer.
    pub fn blank() -> Header {
        Header {
            magic: MAGIC,
            version: FORMAT,
            arch: Arch::host(),
            page_size: 4096,
            kernel_release: String::new(),
            boot_id: String::new(),
            host_name: String::new(),
            created_ns: 0,
            torpor_version: crate::VERSION.to_string(),
        }
    }

    /// A header describing this host now.
    pub fn for_host() -> Result<Header> {
        let uts = nix::sys::utsname::uname().map_err(|e| ImageError::Host {
            what: "uname",
            source: io::Error::from(e),
        })?;
        let created_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // Informational only (shown by `torpor show`): saturates in the
            // year 2554, and a clock before 1970 reads as 0.
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(Header {
            magic: MAGIC,
            version: FORMAT,
            arch: Arch::host(),
            page_size: host_page_size(),
            kernel_release: uts.release().to_string_lossy().into_owned(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id")?,
            host_name: uts.nodename().to_string_lossy().into_owned(),
            created_ns,
            torpor_version: crate::VERSION.to_string(),
        })
    }

    /// Refuses an image this host cannot restore: another architecture or
    /// another page size.
    pub fn check_host(&self) -> Result<()> {
        if self.arch != Arch::host() {
            return Err(ImageError::WrongArch {
                image: self.arch,
                host: Arch::host(),
            });
        }
        let host = host_page_size();
        if self.page_size != host {
            return Err(ImageError::WrongPageSize {
                image: self.page_size,
                host,
            });
        }
        Ok(())
    }

    fn check_page_size(&self) -> Result<()> {
        let p = self.page_size;
        if !p.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&p) {
            return Err(ImageError::BadPageSize(p));
        }
        Ok(())
    }

    /// Pages per `Pages` record: a batch of at most [`PAGE_BATCH_BYTES`],
    /// and at least one page.
    pub fn batch_pages(&self) -> u32 {
        (PAGE_BATCH_BYTES / self.page_size).max(1)
    }
}

/// What a finished or verified image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Records, header and trailer included.
    pub records: u64,
    /// Pages described by `Pages` records.
    pub pages: u64,
    /// Total image length in bytes, trailer included.
    pub bytes: u64,
    /// The trailer's CRC: CRC32 of every byte before the trailer record.
    pub crc: u32,
}

/// Where an image goes. A sink that keeps its own buffer may lend the
/// writer room at the end of what was written, so that page data is read
/// straight into the buffer the image leaves from
/// ([`ImageWriter::nonzero_pages_from`]); any other writer is a sink that
/// lends none.
pub trait ImageSink: Write {
    /// At least `n` bytes of contiguous room that the next bytes written
    /// would occupy, or `None` when this sink lends none (or not that much).
    fn room(&mut self, n: usize) -> io::Result<Option<&mut [u8]>> {
        let _ = n;
        Ok(None)
    }

    /// Takes the first `n` bytes of the room last lent as written.
    fn commit_room(&mut self, n: usize) -> io::Result<()> {
        let _ = n;
        Err(io::Error::other("this sink lends no room"))
    }
}

impl<W: Write> ImageSink for io::BufWriter<W> {}
impl ImageSink for Vec<u8> {}
impl ImageSink for &mut Vec<u8> {}

/// A failure of [`ImageWriter::nonzero_pages_from`]: the caller's reading
/// of the pages, or the image's.
#[derive(Debug)]
pub enum PagesFromError<E> {
    Read(E),
    Image(ImageError),
}

impl<E> From<ImageError> for PagesFromError<E> {
    fn from(e: ImageError) -> Self {
        PagesFromError::Image(e)
    }
}

/// Counts bytes and computes their CRC as they are written.
#[derive(Debug)]
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.put_unhashed(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    /// Writes bytes whose CRC the caller folds in with `crc.combine`.
    fn put_unhashed(&mut self, buf: &[u8]) -> Result<()> {
        self.inner.write_all(buf).map_err(|source| ImageError::Io {
            offset: self.bytes,
            source,
        })?;
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

/// Counts bytes and computes their CRC as they are read.
#[derive(Debug)]
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> CrcReader<R> {
    /// Fills `buf` and hashes it, or says what was cut short.
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        self.take_unhashed(buf, what)?;
        self.crc.update(buf);
        Ok(())
    }

    /// Fills `buf` without hashing it: the caller folds in its CRC.
    fn take_unhashed(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    self.bytes += done as u64;
                    return Err(ImageError::Truncated {
                        offset: self.bytes,
                        what,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.bytes += done as u64;
                    return Err(ImageError::Io {
                        offset: self.bytes,
                        source,
                    });
                }
            }
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Whether the stream has ended (one byte is tried, so a long tail
    /// costs nothing).
    fn at_end(&mut self) -> Result<bool> {
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ImageError::Io {
                        offset: self.bytes,
                        source,
                    })
                }
            }
        }
    }
}

fn frame_hasher(len: u32, kind: u8, payload: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    h
}

#[cfg(test)]
fn frame_crc(len: u32, kind: u8, payload: &[u8]) -> u32 {
    frame_hasher(len, kind, payload).finalize()
}

/// Writes an image record by record; [`finish`](ImageWriter::finish) appends
/// the trailer.
#[derive(Debug)]
pub struct ImageWriter<W: Write> {
    out: CrcWriter<W>,
    page_size: u32,
    batch_pages: u32,
    records: u64,
    pages: u64,
    /// Reused for every payload: sized by the largest record written.
    scratch: Vec<u8>,
    /// Reused for LZ4 output.
    packed: Vec<u8>,
    /// Pages read for [`nonzero_pages_from`](Self::nonzero_pages_from)
    /// when the sink lends no room, or that hold zero pages.
    pagebuf: Vec<u8>,
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image by writing `header`.
    pub fn new(w: W, header: &Header) -> Result<Self> {
        header.check_page_size()?;
        let mut me = ImageWriter {
            out: CrcWriter {
                inner: w,
                crc: crc32fast::Hasher::new(),
                bytes: 0,
            },
            page_size: header.page_size,
            batch_pages: header.batch_pages(),
            records: 0,
            pages: 0,
            scratch: Vec::new(),
            packed: Vec::new(),
            pagebuf: Vec::new(),
        };
        me.encode(Kind::Header, header)?;
        Ok(me)
    }

    /// Appends a state record under its type's kind.
    pub fn write<T: StateRecord>(&mut self, value: &T) -> Result<()> {
        self.encode(T::KIND, value)
    }

    /// Appends `value` under `kind`, whatever its type: for tests and tools
    /// that craft images, where [`write`](Self::write) cannot name the
    /// payload. The kinds the writer frames itself are refused.
    pub fn record<T: Serialize>(&mut self, kind: Kind, value: &T) -> Result<()> {
        if kind.by_writer() {
            return Err(ImageError::ReservedKind { kind });
        }
        self.encode(kind, value)
    }

    fn encode<T: Serialize>(&mut self, kind: Kind, value: &T) -> Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let res = postcard::to_io(value, &mut buf)
            .map(|_| ())
            .map_err(|source| ImageError::Encode { kind, source })
            .and_then(|()| self.frame(kind, &[&buf]));
        self.scratch = buf;
        res
    }

    /// Writes one frame whose payload is the concatenation of `parts`.
    fn frame(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = match u32::try_from(total) {
            Ok(len) if len <= kind.limit() => len,
            _ => {
                return Err(ImageError::RecordTooLarge {
                    offset: self.out.bytes,
                    kind,
                    len: total as u64,
                    limit: kind.limit(),
                })
            }
        };
        // Each byte is hashed once: the frame CRC is folded into the
        // whole-image CRC (a combine costs nothing per byte), which matters
        // on an ARMv6 without CRC instructions.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&[kind as u8]);
        self.out.put_unhashed(&len.to_le_bytes())?;
        self.out.put_unhashed(&[kind as u8])?;
        for p in parts {
            crc.update(p);
            self.out.put_unhashed(p)?;
        }
        self.out.crc.combine(&crc);
        self.out.put(&crc.finalize().to_le_bytes())?;
        self.records += 1;
        Ok(())
    }

    /// Appends the memory at `vaddr`: `data` is whole pages. Runs of zero
    /// pages are stored as `Zero` records without data; other batches as
    /// LZ4 when that makes them smaller, else raw.
    pub fn pages(&mut self, vaddr: u64, data: &[u8]) -> Result<()> {
        let ps = self.page_size as usize;
        if vaddr % u64::from(self.page_size) != 0 || data.len() % ps != 0 {
            return Err(ImageError::Unaligned {
                vaddr,
                len: data.len() as u64,
                page_size: self.page_size,
            });
        }
        if vaddr.checked_add(data.len() as u64).is_none() {
            return Err(ImageError::AddressOverflow {
                vaddr,
                len: data.len() as u64,
            });
        }
        let batch = self.batch_pages as usize;
        let mut pages = data.chunks_exact(ps).peekable();
        let mut addr = vaddr;
        while pages.peek().is_some() {
            // Take a run of up to `batch` pages that are all zero or all not.
            let zero = pages.peek().is_some_and(|p| is_zero(p));
            let mut n = 0usize;
            while n < batch && pages.peek().is_some_and(|p| is_zero(p) == zero) {
                pages.next();
                n += 1;
            }
            // Within `data`, whose length is a usize: fits.
            let start = usize::try_from(addr - vaddr).unwrap_or(usize::MAX);
            let run = &data[start..start + n * ps];
            self.batch(addr, n, zero, run)?;
            addr += (n * ps) as u64;
        }
        Ok(())
    }

    fn batch(&mut self, vaddr: u64, n: usize, zero: bool, run: &[u8]) -> Result<()> {
        // At most `batch_pages`, a u32: fits.
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        if zero {
            return self.pages_frame(
                PagesHead {
                    vaddr,
                    pages: count,
                    codec: Codec::Zero,
                },
                &[],
            );
        }
        let mut packed = std::mem::take(&mut self.packed);
        packed.resize(lz4_flex::block::get_maximum_output_size(run.len()), 0);
        let res = match compress(run, &mut packed, self.page_size as usize) {
            Some(k) => self.pages_frame(
                PagesHead {
                    vaddr,
                    pages: count,
                    codec: Codec::Lz4,
                },
                &packed[..k],
            ),
            None => self.pages_frame(
                PagesHead {
                    vaddr,
                    pages: count,
                    codec: Codec::Raw,
                },
                run,
            ),
        };
        self.packed = packed;
        res
    }

    fn pages_frame(&mut self, head: PagesHead, data: &[u8]) -> Result<()> {
        // The payload is `Pages { vaddr, pages, codec, data }` in postcard:
        // the head's fields, then the data as a byte string (varint length,
        // bytes). Encoding the head and the length here lets the data go out
        // straight from the caller's or the compressor's buffer.
        let mut h = [0u8; 32];
        let used = postcard::to_slice(&(head, data.len()), &mut h)
            .map_err(|source| ImageError::Encode {
                kind: Kind::Pages,
                source,
            })?
            .len();
        self.frame(Kind::Pages, &[&h[..used], data])?;
        self.pages += u64::from(head.pages);
        Ok(())
    }

    /// Pages per `Pages` record.
    pub fn batch_pages(&self) -> u32 {
        self.batch_pages
    }

    /// Appends the non-zero pages of the `pages` pages at `vaddr` (at
    /// most [`batch_pages`](Self::batch_pages)), which `read` puts into the
    /// buffer it is given; zero pages are left out, as a restore maps
    /// fresh memory, zero already. Returns the page bytes stored.
    ///
    /// A sink lending room gets the pages read straight into it, behind
    /// the record's head: when none of them is zero and LZ4 cannot shrink
    /// them, the record is finished where they lie (its CRC computed over
    /// them there) and they are copied by no one but `read`. Otherwise they
    /// are stored as by [`pages`](Self::pages), run by non-zero run.
    pub fn nonzero_pages_from<E>(
        &mut self,
        vaddr: u64,
        pages: u32,
        read: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<u64, PagesFromError<E>>
    where
        W: ImageSink,
    {
        let ps = self.page_size as usize;
        if pages == 0 || pages > self.batch_pages {
            return Err(ImageError::Malformed {
                offset: self.out.bytes,
                kind: Kind::Pages,
                reason: format!("{pages} pages, expected 1 to {}", self.batch_pages),
            }
            .into());
        }
        // At most `batch_pages` pages: a batch's bytes, which fit a usize.
        let len = pages as usize * ps;
        if vaddr % u64::from(self.page_size) != 0 {
            return Err(ImageError::Unaligned {
                vaddr,
                len: len as u64,
                page_size: self.page_size,
            }
            .into());
        }
        if vaddr.checked_add(len as u64).is_none() {
            return Err(ImageError::AddressOverflow {
                vaddr,
                len: len as u64,
            }
            .into());
        }
        let raw = PagesHead {
            vaddr,
            pages,
            codec: Codec::Raw,
        };
        let mut h = [0u8; 32];
        let hl = postcard::to_slice(&(raw, len), &mut h)
            .map_err(|source| ImageError::Encode {
                kind: Kind::Pages,
                source,
            })?
            .len();
        let at = 5 + hl;
        let total = at + len + 4;
        let offset = self.out.bytes;
        let room = self
            .out
            .inner
            .room(total)
            .map_err(|source| ImageError::Io { offset, source })?;
        let Some(room) = room else {
            let mut buf = std::mem::take(&mut self.pagebuf);
            buf.resize(len, 0);
            let res = match read(&mut buf) {
                Ok(()) => self
                    .store_nonzero(vaddr, &buf)
                    .map_err(PagesFromError::Image),
                Err(e) => Err(PagesFromError::Read(e)),
            };
            self.pagebuf = buf;
            return res;
        };
        let room = &mut room[..total];
        read(&mut room[at..at + len]).map_err(PagesFromError::Read)?;
        let data = &room[at..at + len];
        if data.chunks_exact(ps).any(is_zero) {
            // The room is about to be written over: the pages move out.
            let mut buf = std::mem::take(&mut self.pagebuf);
            buf.clear();
            buf.extend_from_slice(data);
            let res = self.store_nonzero(vaddr, &buf);
            self.pagebuf = buf;
            return Ok(res?);
        }
        let mut packed = std::mem::take(&mut self.packed);
        packed.resize(lz4_flex::block::get_maximum_output_size(len), 0);
        if let Some(k) = compress(data, &mut packed, ps) {
            let lz4 = PagesHead {
                codec: Codec::Lz4,
                ..raw
            };
            let res = self.pages_frame(lz4, &packed[..k]);
            self.packed = packed;
            res?;
            return Ok(len as u64);
        }
        self.packed = packed;
        // Within PAGES_LIMIT: a batch plus its head.
        let plen = u32::try_from(hl + len).unwrap_or(u32::MAX);
        if plen > Kind::Pages.limit() {
            return Err(ImageError::RecordTooLarge {
                offset,
                kind: Kind::Pages,
                len: u64::from(plen),
                limit: Kind::Pages.limit(),
            }
            .into());
        }
        room[..4].copy_from_slice(&plen.to_le_bytes());
        room[4] = Kind::Pages as u8;
        room[5..at].copy_from_slice(&h[..hl]);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&room[..at + len]);
        let stored = crc.clone().finalize().to_le_bytes();
        room[at + len..].copy_from_slice(&stored);
        self.out
            .inner
            .commit_room(total)
            .map_err(|source| ImageError::Io { offset, source })?;
        self.out.bytes += total as u64;
        // As `frame` does: the frame's CRC state joins the stream's, then
        // the stored CRC bytes are hashed.
        self.out.crc.combine(&crc);
        self.out.crc.update(&stored);
        self.records += 1;
        self.pages += u64::from(pages);
        Ok(len as u64)
    }

    /// Stores the runs of non-zero pages of `data`, read at `vaddr`.
    fn store_nonzero(&mut self, vaddr: u64, data: &[u8]) -> Result<u64> {
        let ps = self.page_size as usize;
        let mut total = 0u64;
        let mut start: Option<usize> = None;
        let pages = data.len() / ps;
        for k in 0..=pages {
            let zero = k == pages || is_zero(&data[k * ps..(k + 1) * ps]);
            match (zero, start) {
                (false, None) => start = Some(k),
                (true, Some(s)) => {
                    self.pages(vaddr + (s * ps) as u64, &data[s * ps..k * ps])?;
                    total += ((k - s) * ps) as u64;
                    start = None;
                }
                _ => {}
            }
        }
        Ok(total)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.out.bytes
    }

    /// Appends the trailer and returns the writer and what the image holds.
    pub fn finish(mut self) -> Result<(W, ImageSummary)> {
        let trailer = Trailer {
            records: self.records,
            pages: self.pages,
            bytes: self.out.bytes,
            crc: self.out.crc.clone().finalize(),
        };
        self.encode(Kind::Trailer, &trailer)?;
        self.out.inner.flush().map_err(|source| ImageError::Io {
            offset: self.out.bytes,
            source,
        })?;
        let summary = ImageSummary {
            records: self.records,
            pages: self.pages,
            bytes: self.out.bytes,
            crc: trailer.crc,
        };
        Ok((self.out.inner, summary))
    }
}

fn is_zero(page: &[u8]) -> bool {
    // OR-folding fixed-size chunks lets the compiler vectorise the test; the
    // early exit per chunk still stops at the first non-zero data.
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Compresses `run` into `out` and returns the compressed length, or `None`
/// when LZ4 would not make it smaller (the batch is then stored raw).
///
/// The first page is tried alone first: a batch whose first page LZ4 cannot
/// shrink is stored raw at once. Noise (random, encrypted or already
/// compressed data) then costs one page of LZ4 per batch instead of the whole
/// batch, which keeps a dump of it close to a plain write of the same bytes
/// (`make bench` and `make bench-image` measure both). A batch that is noise
/// only at its start is stored raw too: it costs image bytes, never
/// correctness.
fn compress(run: &[u8], out: &mut [u8], page: usize) -> Option<usize> {
    let shrinks = |data: &[u8], out: &mut [u8]| match lz4_flex::block::compress_into(data, out) {
        Ok(k) if k < data.len() => Some(k),
        _ => None,
    };
    if run.len() > page {
        shrinks(&run[..page], out)?;
    }
    shrinks(run, out)
}

/// One record read from an image: its kind and its payload, borrowed from the
/// reader until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    kind: Kind,
    offset: u64,
    page_size: u32,
    payload: &'a [u8],
    /// A `Pages` record whose data a deferring reader stepped over.
    deferred: Option<PageRef>,
}

/// Where a `Pages` record lies in an image and what its head says, for
/// reading it later on its own ([`read_pages_at`]). Nothing in it is
/// trusted until that read has checked the record's CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Offset of the record's frame.
    pub offset: u64,
    /// Its payload length, as the frame gave it.
    pub len: u32,
    pub vaddr: u64,
    pub pages: u32,
}

/// What [`Record::decode_pages_into`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesInfo {
    pub vaddr: u64,
    pub pages: u32,
    pub codec: Codec,
    /// Bytes the record occupies in the image (its data only).
    pub stored_bytes: usize,
    /// Bytes written into the caller's buffer: `pages * page_size`.
    pub len: usize,
}

impl<'a> Record<'a> {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Offset of the record's frame in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The raw postcard payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The place of a `Pages` record whose data a reader in
    /// [`deferring_pages`](ImageReader::deferring_pages) mode stepped over.
    pub fn page_ref(&self) -> Option<PageRef> {
        self.deferred
    }

    /// Decodes the payload as `T`, which must be this record's kind.
    pub fn decode<T: RecordType + DeserializeOwned>(&self) -> Result<T> {
        if self.kind != T::KIND {
            return Err(ImageError::WrongKind {
                offset: self.offset,
                kind: self.kind,
                wanted: T::KIND,
            });
        }
        postcard::from_bytes(self.payload).map_err(|source| ImageError::Decode {
            offset: self.offset,
            kind: self.kind,
            source,
        })
    }

    /// The `Pages` record, its data still encoded, after checking that the
    /// page count fits a batch and the data length fits the codec.
    pub fn pages(&self) -> Result<Pages<'a>> {
        if self.kind != Kind::Pages {
            return Err(ImageError::NotPages { kind: self.kind });
        }
        let p: Pages<'a> =
            postcard::from_bytes(self.payload).map_err(|source| ImageError::Decode {
                offset: self.offset,
                kind: self.kind,
                source,
            })?;
        let limit = (PAGE_BATCH_BYTES / self.page_size).max(1);
        if p.pages == 0 || p.pages > limit {
            return Err(self.malformed(format!("{} pages, expected 1 to {limit}", p.pages)));
        }
        if p.vaddr % u64::from(self.page_size) != 0 {
            return Err(self.malformed(format!("vaddr {:#x} is not page aligned", p.vaddr)));
        }
        let len = self.span(p.pages);
        let ok = match p.codec {
            Codec::Raw => p.data.len() == len,
            Codec::Zero => p.data.is_empty(),
            Codec::Lz4 => !p.data.is_empty() && p.data.len() < len,
        };
        if !ok {
            return Err(self.malformed(format!(
                "{} data bytes for {} {} pages",
                p.data.len(),
                p.pages,
                p.codec.name()
            )));
        }
        Ok(p)
    }

    /// Decodes a `Pages` record into the start of `buf` (which must hold
    /// `pages * page_size` bytes), without allocating.
    pub fn decode_pages_into(&self, buf: &mut [u8]) -> Result<PagesInfo> {
        let p = self.pages()?;
        let len = self.span(p.pages);
        if buf.len() < len {
            return Err(ImageError::BufferTooSmall {
                needed: len,
                got: buf.len(),
            });
        }
        let out = &mut buf[..len];
        match p.codec {
            Codec::Raw => out.copy_from_slice(p.data),
            Codec::Zero => out.fill(0),
            Codec::Lz4 => match lz4_flex::block::decompress_into(p.data, out) {
                Ok(n) if n == len => {}
                Ok(n) => {
                    return Err(self.malformed(format!("LZ4 data expands to {n} bytes, not {len}")))
                }
                Err(e) => return Err(self.malformed(format!("bad LZ4 data: {e}"))),
            },
        }
        Ok(PagesInfo {
            vaddr: p.vaddr,
            pages: p.pages,
            codec: p.codec,
            stored_bytes: p.data.len(),
            len,
        })
    }

    fn span(&self, pages: u32) -> usize {
        // Bounded by PAGE_BATCH_BYTES (or one page) once checked.
        (pages as usize).saturating_mul(self.page_size as usize)
    }

    fn malformed(&self, reason: String) -> ImageError {
        ImageError::Malformed {
            offset: self.offset,
            kind: self.kind,
            reason,
        }
    }
}

/// Reads an image record by record, checking every frame as it goes and the
/// trailer at the end.
#[derive(Debug)]
pub struct ImageReader<R: Read> {
    input: CrcReader<R>,
    header: Header,
    records: u64,
    pages: u64,
    /// Reused for every payload: sized by the largest record read.
    buf: Vec<u8>,
    summary: Option<ImageSummary>,
    /// Steps over a `Pages` record's payload and CRC unread, when set
    /// ([`skipping_pages`](ImageReader::skipping_pages)).
    skip: Option<SkipFn<R>>,
    /// With `skip`: the head of each page record is read and the record
    /// returned as a [`PageRef`]
    /// ([`deferring_pages`](ImageReader::deferring_pages)).
    heads: bool,
    /// With `skip`: the place of each page record stepped over, kept
    /// ([`indexing_pages`](ImageReader::indexing_pages)).
    index: Option<Vec<PageRef>>,
    /// With `heads`: page records a first pass found, in image order,
    /// returned from here without a read
    /// ([`knowing_pages`](ImageReader::knowing_pages)); `known_at` is the
    /// next, `owed` the bytes of them not yet stepped over in the input.
    known: Vec<PageRef>,
    known_at: usize,
    owed: u64,
}

/// The most bytes a `Pages` record's head takes: vaddr and page count as
/// postcard varints (10 and 5 bytes at most) and the codec (1).
const PAGES_HEAD_MAX: usize = 16;

/// Moves a reader forward by some bytes; false when the input ends first.
type SkipFn<R> = fn(&mut R, u64) -> io::Result<bool>;

/// Seeks `n` bytes forward, then reads the last of them: a seek alone goes
/// past the end of a file without a word, and a truncated image must be
/// refused as one.
fn seek_over<R: Read + Seek>(r: &mut R, n: u64) -> io::Result<bool> {
    let Some(before) = n.checked_sub(1) else {
        return Ok(true);
    };
    let by = i64::try_from(before)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "skip too long"))?;
    r.seek(SeekFrom::Current(by))?;
    let mut last = [0u8; 1];
    loop {
        match r.read(&mut last) {
            Ok(k) => return Ok(k == 1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl<R: Read + Seek> ImageReader<R> {
    /// Makes this reader step over the payload of every `Pages` record
    /// without reading it: [`next_record`](Self::next_record) then returns
    /// the other records only. For a first pass over a tree's state before
    /// a restore that streams the pages in a second pass, so that the page
    /// data is read from storage once.
    ///
    /// What such a pass does not check, because it never sees the bytes,
    /// the second pass (a reader without this mode) must: each page
    /// record's CRC, its contents, and the trailer's page count and
    /// whole-image CRC. Every other record, the framing of every record
    /// (kinds, length limits, truncation) and the trailer's record and byte
    /// counts are checked as always.
    #[must_use]
    pub fn skipping_pages(mut self) -> Self {
        self.skip = Some(seek_over::<R>);
        self
    }

    /// Like [`skipping_pages`](Self::skipping_pages), but every `Pages`
    /// record is returned, holding only its head: its place, address and
    /// page count ([`Record::page_ref`]), for [`read_pages_at`] to read it
    /// later. The head's page count and alignment are checked as for any
    /// page record, and the trailer's page count with them; each record's
    /// CRC is checked when it is read, and the whole-image CRC not at all.
    #[must_use]
    pub fn deferring_pages(mut self) -> Self {
        self.skip = Some(seek_over::<R>);
        self.heads = true;
        self
    }

    /// Like [`skipping_pages`](Self::skipping_pages), but the place of
    /// every page record stepped over is kept, its head checked as in
    /// [`deferring_pages`](Self::deferring_pages) (and the trailer's page
    /// count with them): [`take_page_index`](Self::take_page_index) gives
    /// them, for a second pass to step over them without a read.
    #[must_use]
    pub fn indexing_pages(mut self) -> Self {
        self.skip = Some(seek_over::<R>);
        self.index = Some(Vec::new());
        self
    }

    /// [`deferring_pages`](Self::deferring_pages), given the page records
    /// an [`indexing_pages`](Self::indexing_pages) pass over the same image
    /// found: a record at the place of the next of them is returned from
    /// `index` without reading its frame, and a run of them is stepped
    /// over with one seek (and a read of its last byte, so that a cut image
    /// is still refused). Nothing of `index` is trusted beyond the place to
    /// look: a record read there later is checked in full
    /// ([`read_pages_at`]), and a frame read after a run must be whole.
    #[must_use]
    pub fn knowing_pages(mut self, index: Vec<PageRef>) -> Self {
        self = self.deferring_pages();
        self.known = index;
        self.known_at = 0;
        self
    }
}

impl<R: Read> ImageReader<R> {
    /// The places of the page records an
    /// [`indexing_pages`](Self::indexing_pages) pass stepped over, in
    /// image order (empty in any other mode).
    pub fn take_page_index(&mut self) -> Vec<PageRef> {
        self.index.take().unwrap_or_default()
    }

    /// Steps the input over the known page records returned so far.
    fn pay_owed(&mut self) -> Result<()> {
        let owed = std::mem::take(&mut self.owed);
        let Some(skip) = self.skip.filter(|_| owed > 0) else {
            return Ok(());
        };
        let at = self.input.bytes - owed;
        let whole = skip(&mut self.input.inner, owed)
            .map_err(|source| ImageError::Io { offset: at, source })?;
        if !whole {
            return Err(ImageError::Truncated {
                offset: at,
                what: Kind::Pages.what(),
            });
        }
        Ok(())
    }
}

/// Reads the `Pages` record `at` on its own, checks its frame, CRC, data
/// and that it is still the record `at` names, and decodes its pages into
/// `out` (which must hold `pages * page_size` bytes); `scratch` holds the
/// frame. Memory use is one record.
pub fn read_pages_at<R: Read + Seek + ?Sized>(
    r: &mut R,
    at: &PageRef,
    page_size: u32,
    scratch: &mut Vec<u8>,
    out: &mut [u8],
) -> Result<PagesInfo> {
    let offset = at.offset;
    let io_err = |source| ImageError::Io { offset, source };
    r.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut input = CrcReader {
        inner: r,
        crc: crc32fast::Hasher::new(),
        bytes: offset,
    };
    let mut head = [0u8; 5];
    input.take_unhashed(&mut head, "a record frame")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if head[4] != Kind::Pages as u8 || len != at.len || len > Kind::Pages.limit() {
        return Err(ImageError::Malformed {
            offset,
            kind: Kind::Pages,
            reason: format!(
                "the frame reads kind {} and {len} bytes now, was a pages record of {} bytes",
                KindByte(head[4]),
                at.len
            ),
        });
    }
    let n = len as usize;
    scratch.resize(n + 4, 0);
    input.take_unhashed(scratch, Kind::Pages.what())?;
    check_crc(offset, len, head[4], &scratch[..n], &scratch[n..])?;
    let record = Record {
        kind: Kind::Pages,
        offset,
        page_size,
        payload: &scratch[..n],
        deferred: None,
    };
    let info = record.decode_pages_into(out)?;
    if info.vaddr != at.vaddr || info.pages != at.pages {
        return Err(record.malformed(format!(
            "holds {} pages at {:#x} now, {} at {:#x} before",
            info.pages, info.vaddr, at.pages, at.vaddr
        )));
    }
    Ok(info)
}

impl<R: Read> ImageReader<R> {
    /// Opens an image for restoring on this host: the header must be valid
    /// and match this host's architecture and page size.
    pub fn new(r: R) -> Result<Self> {
        let me = Self::inspect(r)?;
        me.header.check_host()?;
        Ok(me)
    }

    /// Opens an image from any host (for `show` and `verify`): the header must
    /// be valid, its architecture may differ from this host's.
    pub fn inspect(r: R) -> Result<Self> {
        let mut input = CrcReader {
            inner: r,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let mut head = [0u8; 13];
        input.take(&mut head, "the header")?;
        let mut found = [0u8; 8];
        found.copy_from_slice(&head[5..13]);
        if found != MAGIC {
            return Err(ImageError::BadMagic { found });
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let kind = head[4];
        if len > Kind::Header.limit() {
            return Err(ImageError::RecordTooLarge {
                offset: 0,
                kind: Kind::Header,
                len: u64::from(len),
                limit: Kind::Header.limit(),
            });
        }
        if len < 8 {
            return Err(ImageError::Malformed {
                offset: 0,
                kind: Kind::Header,
                reason: format!("payload of {len} bytes cannot hold the magic"),
            });
        }
        let mut buf = vec![0u8; len as usize + 4];
        buf[..8].copy_from_slice(&found);
        input.take(&mut buf[8..], "the header")?;
        let payload = &buf[..len as usize];
        check_crc(0, len, kind, payload, &buf[len as usize..])?;
        if kind != Kind::Header as u8 {
            return Err(ImageError::Malformed {
                offset: 0,
                kind: Kind::Header,
                reason: format!("the first record is of kind {}", KindByte(kind)),
            });
        }
        let decode_err = |source| ImageError::Decode {
            offset: 0,
            kind: Kind::Header,
            source,
        };
        let (prefix, _): (HeaderPrefix, _) =
            postcard::take_from_bytes(payload).map_err(decode_err)?;
        if prefix.version.major != FORMAT.major {
            return Err(ImageError::UnsupportedVersion {
                found: prefix.version,
                supported: FORMAT,
            });
        }
        let header: Header = postcard::from_bytes(payload).map_err(decode_err)?;
        header.check_page_size()?;
        buf.clear();
        Ok(ImageReader {
            input,
            header,
            records: 1,
            pages: 0,
            buf,
            summary: None,
            skip: None,
            heads: false,
            index: None,
            known: Vec::new(),
            known_at: 0,
            owed: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next record, or `None` after the trailer has been read and
    /// verified (counts, whole-image CRC, nothing after it).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        if self.summary.is_some() {
            return Ok(None);
        }
        // Page records a first pass steps over are only counted: the loop
        // goes on to the next frame.
        let (offset, crc_before, len, kind, kind_byte) = loop {
            let offset = self.input.bytes;
            if let Some(&at) = self.known.get(self.known_at) {
                if at.offset == offset {
                    self.known_at += 1;
                    // Frame head, payload and CRC.
                    let frame = 9 + u64::from(at.len);
                    self.owed += frame;
                    self.input.bytes += frame;
                    self.records += 1;
                    self.pages += u64::from(at.pages);
                    return Ok(Some(Record {
                        kind: Kind::Pages,
                        offset,
                        page_size: self.header.page_size,
                        payload: &[],
                        deferred: Some(at),
                    }));
                }
            }
            if self.owed > 0 {
                self.pay_owed()?;
            }
            // The CRC of everything before this record: the trailer's subject.
            let crc_before = self.input.crc.clone().finalize();
            let mut head = [0u8; 5];
            if let Err(e) = self.input.take_unhashed(&mut head, "a record frame") {
                return Err(match e {
                    ImageError::Truncated { offset: o, .. } if o == offset => {
                        ImageError::Truncated {
                            offset,
                            what: "the image (no trailer)",
                        }
                    }
                    e => e,
                });
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let kind = Kind::from_byte(head[4]).ok_or(ImageError::UnknownKind {
                offset,
                kind: head[4],
            })?;
            if len > kind.limit() {
                return Err(ImageError::RecordTooLarge {
                    offset,
                    kind,
                    len: u64::from(len),
                    limit: kind.limit(),
                });
            }
            let (Kind::Pages, Some(skip)) = (kind, self.skip) else {
                break (offset, crc_before, len, kind, head[4]);
            };
            let data = self.input.bytes;
            let mut rest = u64::from(len) + 4;
            let mut deferred = None;
            if self.heads || self.index.is_some() {
                let k = (len as usize).min(PAGES_HEAD_MAX);
                self.buf.resize(k, 0);
                self.input.take_unhashed(&mut self.buf, kind.what())?;
                let (h, _): (PagesHead, _) =
                    postcard::take_from_bytes(&self.buf).map_err(|source| ImageError::Decode {
                        offset,
                        kind,
                        source,
                    })?;
                let rec = Record {
                    kind,
                    offset,
                    page_size: self.header.page_size,
                    payload: &[],
                    deferred: None,
                };
                let limit = (PAGE_BATCH_BYTES / self.header.page_size).max(1);
                if h.pages == 0 || h.pages > limit {
                    return Err(rec.malformed(format!("{} pages, expected 1 to {limit}", h.pages)));
                }
                if h.vaddr % u64::from(self.header.page_size) != 0 {
                    return Err(rec.malformed(format!("vaddr {:#x} is not page aligned", h.vaddr)));
                }
                rest -= k as u64;
                deferred = Some(PageRef {
                    offset,
                    len,
                    vaddr: h.vaddr,
                    pages: h.pages,
                });
            }
            let whole = skip(&mut self.input.inner, rest).map_err(|source| ImageError::Io {
                offset: data,
                source,
            })?;
            if !whole {
                return Err(ImageError::Truncated {
                    offset: data,
                    what: kind.what(),
                });
            }
            self.input.bytes += rest;
            self.records += 1;
            if let Some(d) = deferred {
                self.pages += u64::from(d.pages);
                if let Some(index) = self.index.as_mut() {
                    index.push(d);
                    continue;
                }
                let k = self.buf.len();
                return Ok(Some(Record {
                    kind,
                    offset,
                    page_size: self.header.page_size,
                    payload: &self.buf[..k],
                    deferred,
                }));
            }
        };
        let n = len as usize;
        self.buf.resize(n + 4, 0);
        self.input.take_unhashed(&mut self.buf, kind.what())?;
        let frame = check_crc(offset, len, kind_byte, &self.buf[..n], &self.buf[n..])?;
        // Each byte is hashed once: the frame's CRC state joins the stream's.
        self.input.crc.combine(&frame);
        self.input.crc.update(&self.buf[n..]);
        self.records += 1;
        let record = Record {
            kind,
            offset,
            page_size: self.header.page_size,
            payload: &self.buf[..n],
            deferred: None,
        };
        match kind {
            Kind::Header => Err(ImageError::Malformed {
                offset,
                kind,
                reason: "a second header".to_string(),
            }),
            Kind::Trailer => {
                let t: Trailer = record.decode()?;
                let records = self.records - 1;
                let expect = [
                    ("records", t.records, records),
                    ("pages", t.pages, self.pages),
                    ("bytes", t.bytes, offset),
                    ("crc", u64::from(t.crc), u64::from(crc_before)),
                ];
                // Without the page records' bytes, neither the page count
                // nor the CRC of the whole is known: the second pass's.
                let skipped = self.skip.is_some();
                for (field, stored, actual) in expect {
                    let counted = self.heads || self.index.is_some();
                    if skipped && (field == "crc" || field == "pages" && !counted) {
                        continue;
                    }
                    if stored != actual {
                        return Err(ImageError::TrailerMismatch {
                            field,
                            stored,
                            actual,
                        });
                    }
                }
                if !self.input.at_end()? {
                    return Err(ImageError::TrailingData {
                        offset: self.input.bytes,
                    });
                }
                self.summary = Some(ImageSummary {
                    records: self.records,
                    pages: self.pages,
                    bytes: self.input.bytes,
                    crc: t.crc,
                });
                Ok(None)
            }
            Kind::Pages => {
                let p = record.pages()?;
                self.pages += u64::from(p.pages);
                Ok(Some(record))
            }
            _ => Ok(Some(record)),
        }
    }

    /// What the image held, once [`next_record`](Self::next_record) returned
    /// `None`.
    pub fn summary(&self) -> Option<ImageSummary> {
        self.summary
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.input.inner
    }
}

/// Checks a frame's CRC; returns the hasher state over `len`, `kind` and the
/// payload.
fn check_crc(
    offset: u64,
    len: u32,
    kind: u8,
    payload: &[u8],
    stored: &[u8],
) -> Result<crc32fast::Hasher> {
    let stored = match stored {
        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    };
    let frame = frame_hasher(len, kind, payload);
    let computed = frame.clone().finalize();
    if stored != computed {
        return Err(ImageError::Crc {
            offset,
            kind: KindByte(kind),
            stored,
            computed,
        });
    }
    Ok(frame)
}

/// Reads a whole image, checking every frame, every page record's data (LZ4
/// blocks are decoded) and the trailer. Accepts images from any architecture;
/// memory use is one record and one page batch.
pub fn verify<R: Read>(r: R) -> Result<ImageSummary> {
    let mut reader = ImageReader::inspect(r)?;
    let mut pages = vec![0u8; PAGE_BATCH_BYTES.max(reader.header.page_size) as usize];
    while let Some(rec) = reader.next_record()? {
        if rec.kind() == Kind::Pages {
            rec.decode_pages_into(&mut pages)?;
        }
    }
    reader.summary.ok_or(ImageError::Truncated {
        offset: 0,
        what: "the image",
    })
}
