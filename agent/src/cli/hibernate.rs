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
    /// Print the daemon's status instead, and the managed applications
    /// (`[[app]]` and `torpor run --name`) with whether each would be
    /// hibernated.
    #[arg(long, conflicts_with_all = ["pid", "wake_after", "checkpoint"])]
    pub status: bool,
    /// Hibernate every managed application at once, into one image.
    #[arg(long, conflicts_with_all = ["pid", "checkpoint", "status"])]
    pub all: bool,
    /// Configuration file (its `[[app]]` entries).
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// The managed applications: what `[[app]]` in `config` lists and the
/// registry beside `socket` holds.
fn managed(args: &HibernateArgs) -> Result<Vec<crate::apps::App>, String> {
    let c = crate::config::Config::load_or_default(&args.config).map_err(|e| e.to_string())?;
    Ok(crate::apps::managed(
        &c.apps,
        &crate::apps::dir_for(&args.socket),
    ))
}

/// `--status`'s lines about the managed applications; none when there
/// are none.
pub fn describe_apps(apps: &[crate::apps::App]) -> String {
    let (roots, left) = crate::apps::plan(apps);
    let mut text = String::new();
    for a in apps {
        if let Some((pid, _)) = roots.iter().find(|(_, n)| *n == a.name) {
            text.push_str(&format!(
                "app {}: pid {pid}, included
",
                a.name
            ));
        } else if let Some((_, why)) = left.iter().find(|(n, _)| *n == a.name) {
            text.push_str(&format!(
                "app {}: left out: {why}
",
                a.name
            ));
        }
    }
    text
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
                None => format!(
                    "resumed (time asleep unknown), image generation {}",
                    r.generation
                ),
            };
            (text, true)
        }
        Reply::Checkpointed(c) => (
            format!(
                "checkpointed: image generation {}, {} bytes",
                c.generation, c.image_bytes
            ),
            true,
        ),
        Reply::Status(s) => {
            let text = format!(
                "daemon {} (protocol {})\nstore: {}, generation {}, {} bytes\nwake alarm: {}",
                s.daemon_version,
                s.protocol,
                s.store.state,
                s.store.generation,
                s.store.image_bytes,
                if s.wake_alarm {
                    "available"
                } else {
                    "not configured"
                }
            );
            (text, true)
        }
        Reply::Error(e) => (format!("{}: {}", e.kind, e.message), false),
    }
}

/// Runs `torpor hibernate`; exit status 0 when the daemon did what was asked.
pub fn run(args: HibernateArgs) -> i32 {
    let mut pid = args.pid.unwrap_or_else(std::os::unix::process::parent_id);
    let apps = if args.status || args.all {
        match managed(&args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("torpor: error: {e}");
                return 1;
            }
        }
    } else {
        Vec::new()
    };
    if args.all {
        // A request about any managed application hibernates them all.
        match crate::apps::plan(&apps).0.first() {
            Some((root, _)) => pid = u32::try_from(*root).unwrap_or(0),
            None => {
                eprintln!("torpor: error: no managed application runs: nothing to hibernate");
                return 1;
            }
        }
    }
    let target = Target::Pid(pid);
    let request = if args.status {
        Request::Status
    } else if args.checkpoint {
        Request::Checkpoint { target }
    } else {
        Request::Hibernate {
            target,
            wake_after_s: args.wake_after,
        }
    };
    let reply = torpor_client::Client::connect(&args.socket).and_then(|mut c| c.request(&request));
    match reply {
        Ok(reply) => {
            let (text, ok) = describe(&reply);
            if ok {
                println!("{text}");
                if args.status {
                    print!("{}", describe_apps(&apps));
                }
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

#[cfg(test)]
mod tests {
    use super::describe;
    use crate::protocol::*;

    #[test]
    fn every_reply_is_described() {
        let r = Reply::Resumed(Resumed {
            slept_for_ms: Some(12_345),
            clock: Clock::Rtc,
            generation: 4,
        });
        assert_eq!(
            describe(&r),
            (
                "resumed after 12.3 s (rtc clock), image generation 4".to_string(),
                true
            )
        );
        let r = Reply::Resumed(Resumed {
            slept_for_ms: Some(999),
            clock: Clock::Wall,
            generation: 5,
        });
        assert_eq!(
            describe(&r).0,
            "resumed after 0.9 s (wall clock), image generation 5"
        );
        let r = Reply::Resumed(Resumed {
            slept_for_ms: None,
            clock: Clock::Unknown,
            generation: 6,
        });
        assert_eq!(
            describe(&r).0,
            "resumed (time asleep unknown), image generation 6"
        );
        let r = Reply::Checkpointed(Checkpointed {
            generation: 2,
            image_bytes: 4096,
        });
        assert_eq!(
            describe(&r),
            (
                "checkpointed: image generation 2, 4096 bytes".to_string(),
                true
            )
        );
        let r = Reply::Status(Status {
            daemon_version: bounded_text("0.1.0"),
            protocol: VERSION,
            store: StoreSummary {
                state: StoreState::Valid,
                generation: 3,
                image_bytes: 8192,
            },
            wake_alarm: true,
        });
        assert_eq!(
            describe(&r).0,
            "daemon 0.1.0 (protocol 1.0)\nstore: valid, generation 3, 8192 bytes\nwake alarm: available"
        );
        let r = Reply::Error(ErrorReply::new(
            ErrorKind::Busy,
            "the daemon already serves 32 connections",
        ));
        assert_eq!(
            describe(&r),
            (
                "Busy: the daemon already serves 32 connections".to_string(),
                false
            )
        );
    }
}
