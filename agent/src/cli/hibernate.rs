//! `torpor hibernate`: ask the daemon from a shell.
//!
//! Without `--pid`, the target is the process that ran `torpor hibernate`
//! (the shell or script) with everything under it, this command included:
//! after the restore this command prints how long the board slept and the
//! script carries on.

use std::path::PathBuf;

use clap::Args;

use crate::protocol::{Reply, Request, Target};

#[derive(Debug, Args)]
pub struct HibernateArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = torpor_client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Hibernate this process and its descendants (default: the parent of this command).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Set the RTC to power the board up again after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub wake_after: Option<u32>,
    /// Write an image and let the target keep running, instead of hibernating.
    #[arg(long, conflicts_with = "wake_after")]
    pub checkpoint: bool,
    /// Print the daemon's status instead.
    #[arg(long, conflicts_with_all = ["pid", "wake_after", "checkpoint"])]
    pub status: bool,
}

/// The text printed for a reply, and whether it reports success.
pub fn describe(reply: &Reply) -> (String, bool) {
    match reply {
        Reply::Resumed(r) => {
            let text = match r.slept_for_ms {
                Some(ms) => format!(
                    "resumed after {}.{} s ({} clock), image generation {}",
                    ms / 1000,
                    (ms % 1000) / 100,
                    r.clock,
                    r.generation
                ),
                None => format!("resumed (time asleep unknown), image generation {}", r.generation),
            };
            (text, true)
        }
        Reply::Checkpointed(c) => {
            (format!("checkpointed: image generation {}, {} bytes", c.generation, c.image_bytes), true)
        }
        Reply::Status(s) => {
            let text = format!(
                "daemon {} (protocol {})\nstore: {}, generation {}, {} bytes\nwake alarm: {}",
                s.daemon_version,
                s.protocol,
                s.store.state,
                s.store.generation,
                s.store.image_bytes,
                if s.wake_alarm { "available" } else { "not configured" }
            );
            (text, true)
        }
        Reply::Error(e) => (format!("{}: {}", e.kind, e.message), false),
    }
}

/// Runs `torpor hibernate`; exit status 0 when the daemon did what was asked.
pub fn run(args: HibernateArgs) -> i32 {
    let target = Target::Pid(args.pid.unwrap_or_else(std::os::unix::process::parent_id));
    let request = if args.status {
        Request::Status
    } else if args.checkpoint {
        Request::Checkpoint { target }
    } else {
        Request::Hibernate { target, wake_after_s: args.wake_after }
    };
    let reply = torpor_client::Client::connect(&args.socket).and_then(|mut c| c.request(&request));
    match reply {
        Ok(reply) => {
            let (text, ok) = describe(&reply);
            if ok {
                println!("{text}");
                0
            } else {
                eprintln!("torpor: error: {text}");
                1
            }
        }
        Err(e) => {
            eprintln!("torpor: error: {e}");
            1
        }
    }
}
