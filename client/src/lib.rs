//! torpor-client: ask the torpor daemon to hibernate or checkpoint a process.
//!
//! ```no_run
//! let mut torpor = torpor_client::Client::connect(torpor_client::DEFAULT_SOCKET)?;
//! // Returns once power is back and this process has been restored.
//! let resumed = torpor.hibernate(Some(3600))?;
//! println!("slept for {:?} ms", resumed.slept_for_ms);
//! # Ok::<(), torpor_client::ClientError>(())
//! ```
//!
//! `hibernate` blocks across the power cut, like `fork()` returning twice:
//! the process that reads the reply is the restored one, and its connection
//! to the daemon is a live socket at the same file descriptor.
#![deny(unsafe_code)]

pub mod packet;
pub mod proto;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub use proto::{
    Checkpointed, Clock, DecodeError, EncodeError, ErrorKind, ErrorReply, Reply, Request, Resumed,
    Status, StoreState, StoreSummary, Target, Version, MAX_MESSAGE, VERSION,
};

/// Where the daemon listens unless its configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/torpor.sock";

/// Why a request did not get the reply it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the torpor daemon at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot encode the request: {0}")]
    Encode(#[from] EncodeError),
    #[error("cannot send the request to the torpor daemon: {0}")]
    Send(io::Error),
    #[error("cannot receive the reply of the torpor daemon: {0}")]
    Receive(io::Error),
    #[error("the torpor daemon closed the connection without replying")]
    Closed,
    #[error("the torpor daemon's reply does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("the torpor daemon refused: {0}")]
    Daemon(Box<ErrorReply>),
    #[error("the torpor daemon answered {got} to a {asked} request")]
    Unexpected {
        asked: &'static str,
        got: &'static str,
    },
}

impl ClientError {
    /// The daemon's error kind, when the daemon itself refused.
    pub fn daemon_kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Daemon(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// A connection to the torpor daemon.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
}

fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Resumed(_) => "Resumed",
        Reply::Checkpointed(_) => "Checkpointed",
        Reply::Status(_) => "Status",
        Reply::Error(_) => "Error",
    }
}

impl Client {
    /// Connects to the daemon listening at `path` (usually [`DEFAULT_SOCKET`]).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let fd = packet::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client { fd })
    }

    /// Wraps an already connected SOCK_SEQPACKET socket.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Client { fd }
    }

    /// Sends one request and waits for its reply, whatever it is.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let (buf, len) = proto::encode_request(request)?;
        packet::send_packet(self.fd.as_fd(), &buf[..len], false).map_err(ClientError::Send)?;
        let mut reply = [0u8; MAX_MESSAGE];
        let n = packet::recv_packet(self.fd.as_fd(), &mut reply, false)
            .map_err(ClientError::Receive)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(proto::decode_reply(&reply, n)?)
    }

    /// Hibernates this process and its descendants; returns after the
    /// restore. With `wake_after_s`, the RTC powers the board up again.
    pub fn hibernate(&mut self, wake_after_s: Option<u32>) -> Result<Resumed, ClientError> {
        self.hibernate_target(Target::Caller, wake_after_s)
    }

    /// Hibernates `target` (see [`Client::hibernate`]). When the target is
    /// another process, the reply arrives after the restore all the same.
    pub fn hibernate_target(
        &mut self,
        target: Target,
        wake_after_s: Option<u32>,
    ) -> Result<Resumed, ClientError> {
        match self.request(&Request::Hibernate {
            target,
            wake_after_s,
        })? {
            Reply::Resumed(r) => Ok(r),
            Reply::Error(e) => Err(ClientError::Daemon(Box::new(e))),
            other => Err(ClientError::Unexpected {
                asked: "Hibernate",
                got: reply_name(&other),
            }),
        }
    }

    /// Writes an image of this process tree; the tree keeps running.
    pub fn checkpoint(&mut self) -> Result<Checkpointed, ClientError> {
        self.checkpoint_target(Target::Caller)
    }

    /// Writes an image of `target`'s tree; the tree keeps running.
    pub fn checkpoint_target(&mut self, target: Target) -> Result<Checkpointed, ClientError> {
        match self.request(&Request::Checkpoint { target })? {
            Reply::Checkpointed(c) => Ok(c),
            Reply::Error(e) => Err(ClientError::Daemon(Box::new(e))),
            other => Err(ClientError::Unexpected {
                asked: "Checkpoint",
                got: reply_name(&other),
            }),
        }
    }

    /// The daemon's version and the store's state.
    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.request(&Request::Status)? {
            Reply::Status(s) => Ok(s),
            Reply::Error(e) => Err(ClientError::Daemon(Box::new(e))),
            other => Err(ClientError::Unexpected {
                asked: "Status",
                got: reply_name(&other),
            }),
        }
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
