//! The torpor wire protocol: the messages, their encoding, and their limits.
//!
//! One message per SOCK_SEQPACKET packet, at most [`MAX_MESSAGE`] bytes,
//! encoded with postcard. Every message starts with the protocol version as
//! two raw bytes (major, minor), so a peer can read the version of any
//! message before it tries to understand the rest:
//!
//! ```text
//!   byte 0     byte 1     byte 2 ..
//!  +---------+---------+------------------------------------------+
//!  |  major  |  minor  | body: Request or Reply (postcard)        |
//!  +---------+---------+------------------------------------------+
//! ```
//!
//! A new minor version only appends variants and error kinds; a new major
//! version may change anything, and a daemon refuses a major it does not
//! speak with an `UnsupportedVersion` error naming both versions.
//! `docs/protocol.md` gives the byte layout of every message.

use core::fmt;

use serde::{Deserialize, Serialize};

/// The largest message either side sends or accepts, in bytes.
pub const MAX_MESSAGE: usize = 512;

/// The capacity of an error reply's message text, in bytes. With the
/// version, tags and length prefix an error reply stays within
/// [`MAX_MESSAGE`].
pub const ERROR_TEXT: usize = 400;

/// The capacity of the daemon version text in a status reply, in bytes.
pub const VERSION_TEXT: usize = 32;

/// The protocol version this library speaks.
pub const VERSION: Version = Version { major: 1, minor: 0 };

/// A protocol version: peers with the same major understand each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The process tree a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The process that sent the request (taken from the socket's peer
    /// credentials, never from the message) and its descendants.
    Caller,
    /// The process with this PID and its descendants.
    Pid(u32),
}

/// What an application asks the daemon for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Checkpoint the target tree, cut the power, and reply `Resumed` once
    /// power is back and the tree is restored. With `wake_after_s`, the RTC
    /// wakes the board that many seconds after the request.
    Hibernate {
        target: Target,
        wake_after_s: Option<u32>,
    },
    /// Write an image of the target tree and let it keep running.
    Checkpoint { target: Target },
    /// Report the daemon's version and the store's state.
    Status,
    /// From `torpor boot` / `torpor run` (root only), on the connection it
    /// just gave a restored tree: the tree rooted at `pid` runs again; reply
    /// `resumed` on this connection (which the tree now reads) and treat the
    /// connection as that tree's from now on.
    Restored { pid: u32, resumed: Resumed },
}

/// Which clock measured the time spent asleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Clock {
    /// The battery-backed RTC: valid across the power cut.
    Rtc,
    /// The system wall clock (set by NTP or by hand after boot).
    Wall,
    /// No trustworthy clock: `slept_for_ms` is `None`.
    Unknown,
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clock::Rtc => "rtc",
            Clock::Wall => "wall",
            Clock::Unknown => "unknown",
        })
    }
}

/// The reply to `Hibernate`: power came back and the tree runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// Time between the power cut and the restore, when a clock can tell.
    pub slept_for_ms: Option<u64>,
    pub clock: Clock,
    /// The generation of the image the tree was restored from.
    pub generation: u64,
}

/// The reply to `Checkpoint`: an image is stored and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpointed {
    pub generation: u64,
    pub image_bytes: u64,
}

/// The state of the newest image in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreState {
    /// The store could not be opened or read.
    Unavailable,
    /// No valid image.
    Empty,
    /// A verified image waits to be restored at the next boot.
    Valid,
    /// An image is being restored, or a restore was interrupted.
    Restoring,
    /// The newest image was restored and will not be restored again.
    Consumed,
}

impl fmt::Display for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreState::Unavailable => "unavailable",
            StoreState::Empty => "empty",
            StoreState::Valid => "valid",
            StoreState::Restoring => "restoring",
            StoreState::Consumed => "consumed",
        })
    }
}

/// A summary of the image store, as the status reply carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSummary {
    pub state: StoreState,
    /// The generation of the newest image (0 when the store holds none).
    pub generation: u64,
    /// The length of the newest image in bytes (0 when none).
    pub image_bytes: u64,
}

/// The reply to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's torpor version, e.g. "0.1.0".
    pub daemon_version: heapless::String<VERSION_TEXT>,
    /// The protocol version the daemon speaks.
    pub protocol: Version,
    pub store: StoreSummary,
    /// Whether the daemon can set an RTC wake alarm (`wake_after_s`).
    pub wake_alarm: bool,
}

/// Why the daemon refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer may not act on the target (SO_PEERCRED and the config decide).
    Unauthorized,
    /// The message could not be decoded.
    Malformed,
    /// The message was longer than [`MAX_MESSAGE`].
    Oversized,
    /// The message's major version is not one the daemon speaks.
    UnsupportedVersion,
    /// The daemon cannot take this request now.
    Busy,
    /// The target process does not exist.
    NoSuchProcess,
    /// The request asks for something this daemon is not set up to do.
    Unsupported,
    /// Checkpointing the tree failed; it keeps running.
    DumpFailed,
    /// Writing or verifying the image failed; the tree keeps running.
    StoreFailed,
    /// The power could not be cut (or the wake alarm set); the tree keeps running.
    PowerFailed,
    /// Anything else; the message says what.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An error reply: a kind a program can act on and a message naming the cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: heapless::String<ERROR_TEXT>,
}

impl ErrorReply {
    /// An error reply whose message is `text`, cut at a character boundary
    /// if it does not fit.
    pub fn new(kind: ErrorKind, text: &str) -> Self {
        ErrorReply {
            kind,
            message: bounded_text(text),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Copies as much of `text` as fits in `N` bytes without splitting a character.
pub fn bounded_text<const N: usize>(text: &str) -> heapless::String<N> {
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = heapless::String::new();
    // Cannot fail: `end` bytes fit by construction.
    let _ = out.push_str(&text[..end]);
    out
}

/// What the daemon sends back.
// Replies are fixed-size values on purpose: no heap, bounded like the packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Resumed(Resumed),
    Checkpointed(Checkpointed),
    Status(Status),
    Error(ErrorReply),
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    Oversized { len: usize },
    #[error("message of {len} bytes is shorter than the 2-byte version header")]
    NoVersion { len: usize },
    #[error("protocol version {theirs} is not supported: this side speaks {ours}")]
    UnsupportedVersion { theirs: Version, ours: Version },
    #[error("{what} (protocol {theirs}, this side speaks {ours})")]
    Malformed {
        what: &'static str,
        theirs: Version,
        ours: Version,
    },
    #[error("{extra} unexpected byte(s) after the end of the message")]
    TrailingBytes { extra: usize },
}

impl DecodeError {
    /// The error kind a daemon replies with for this decoding failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::Oversized { .. } => ErrorKind::Oversized,
            DecodeError::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            DecodeError::NoVersion { .. }
            | DecodeError::Malformed { .. }
            | DecodeError::TrailingBytes { .. } => ErrorKind::Malformed,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message does not fit in {MAX_MESSAGE} bytes: {0}")]
pub struct EncodeError(String);

/// Encodes `body` behind the version header into `buf`; returns the bytes used.
pub fn encode<T: Serialize>(body: &T, buf: &mut [u8; MAX_MESSAGE]) -> Result<usize, EncodeError> {
    buf[0] = VERSION.major;
    buf[1] = VERSION.minor;
    let used = postcard::to_slice(body, &mut buf[2..]).map_err(|e| EncodeError(e.to_string()))?;
    Ok(2 + used.len())
}

/// Encodes a request into a fresh buffer; returns the buffer and its length.
pub fn encode_request(request: &Request) -> Result<([u8; MAX_MESSAGE], usize), EncodeError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let len = encode(request, &mut buf)?;
    Ok((buf, len))
}

/// Encodes a reply into a fresh buffer; returns the buffer and its length.
pub fn encode_reply(reply: &Reply) -> Result<([u8; MAX_MESSAGE], usize), EncodeError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let len = encode(reply, &mut buf)?;
    Ok((buf, len))
}

/// Decodes one packet. `received` is the packet's real length, which may
/// exceed `packet.len()` when the receive buffer truncated it.
pub fn decode<'a, T: Deserialize<'a>>(packet: &'a [u8], received: usize) -> Result<T, DecodeError> {
    if received > MAX_MESSAGE || received > packet.len() {
        return Err(DecodeError::Oversized { len: received });
    }
    let packet = &packet[..received];
    let Some((&[major, minor], body)) = packet.split_first_chunk::<2>() else {
        return Err(DecodeError::NoVersion { len: received });
    };
    let theirs = Version { major, minor };
    if major != VERSION.major {
        return Err(DecodeError::UnsupportedVersion {
            theirs,
            ours: VERSION,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
            what: postcard_cause(&e),
            theirs,
            ours: VERSION,
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(value)
}

/// Decodes a request packet (see [`decode`]).
pub fn decode_request(packet: &[u8], received: usize) -> Result<Request, DecodeError> {
    decode(packet, received)
}

/// Decodes a reply packet (see [`decode`]).
pub fn decode_reply(packet: &[u8], received: usize) -> Result<Reply, DecodeError> {
    decode(packet, received)
}

fn postcard_cause(e: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match e {
        E::DeserializeUnexpectedEnd => "the message ends in the middle of a field",
        E::DeserializeBadVarint => "a variable-length integer is longer than its type allows",
        E::DeserializeBadBool => "a boolean is neither 0 nor 1",
        E::DeserializeBadChar | E::DeserializeBadUtf8 => "a string is not valid UTF-8",
        E::DeserializeBadOption => "an option tag is neither 0 nor 1",
        E::DeserializeBadEnum => "a variant tag does not fit in 32 bits",
        E::SerdeDeCustom => "an unknown variant tag, or a string longer than its bound",
        _ => "the message does not decode",
    }
}
