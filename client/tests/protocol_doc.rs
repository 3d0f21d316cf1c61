//! docs/protocol.md's worked examples are what the encoder produces, and
//! decode back to the same values.

use torpor_client::proto::{self, bounded_text};
use torpor_client::{
    Checkpointed, Clock, ErrorKind, ErrorReply, Reply, Request, Resumed, Status, StoreState,
    StoreSummary, Target, Version,
};

const DOC: &str = include_str!("../../docs/protocol.md");

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("status", Request::Status),
        (
            "hibernate-caller",
            Request::Hibernate {
                target: Target::Caller,
                wake_after_s: None,
            },
        ),
        (
            "hibernate-caller-wake",
            Request::Hibernate {
                target: Target::Caller,
                wake_after_s: Some(3600),
            },
        ),
        (
            "hibernate-pid-wake",
            Request::Hibernate {
                target: Target::Pid(1234),
                wake_after_s: Some(60),
            },
        ),
        (
            "checkpoint-caller",
            Request::Checkpoint {
                target: Target::Caller,
            },
        ),
        (
            "checkpoint-pid",
            Request::Checkpoint {
                target: Target::Pid(300),
            },
        ),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "resumed-rtc",
            Reply::Resumed(Resumed {
                slept_for_ms: Some(12345),
                clock: Clock::Rtc,
                generation: 7,
            }),
        ),
        (
            "resumed-unknown",
            Reply::Resumed(Resumed {
                slept_for_ms: None,
                clock: Clock::Unknown,
                generation: 3,
            }),
        ),
        (
            "checkpointed",
            Reply::Checkpointed(Checkpointed {
                generation: 8,
                image_bytes: 1_048_576,
            }),
        ),
        (
            "status-reply",
            Reply::Status(Status {
                daemon_version: bounded_text("0.1.0"),
                protocol: Version { major: 1, minor: 0 },
                store: StoreSummary {
                    state: StoreState::Valid,
                    generation: 8,
                    image_bytes: 1_048_576,
                },
                wake_alarm: true,
            }),
        ),
        (
            "error-unauthorized",
            Reply::Error(ErrorReply::new(ErrorKind::Unauthorized, "uid 1000")),
        ),
        (
            "error-busy",
            Reply::Error(ErrorReply::new(ErrorKind::Busy, "busy")),
        ),
    ]
}

/// The example rows of the document: (name, bytes).
fn documented() -> Vec<(String, Vec<u8>)> {
    let mut rows = Vec::new();
    for line in DOC.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | `message` | `hex` |
        if cells.len() != 5 || !cells[1].starts_with('`') || !cells[3].starts_with('`') {
            continue;
        }
        let hex = cells[3].trim_matches('`');
        let Ok(bytes) = hex
            .split(' ')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            continue;
        };
        rows.push((cells[1].trim_matches('`').to_string(), bytes));
    }
    rows
}

#[test]
fn every_documented_example_matches_the_encoder() {
    let doc = documented();
    let mut checked = 0;
    for (name, request) in requests() {
        let (_, want) = doc
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not documented"));
        let (buf, len) = proto::encode_request(&request).unwrap();
        assert_eq!(&buf[..len], want.as_slice(), "{name}");
        assert_eq!(
            proto::decode_request(want, want.len()).unwrap(),
            request,
            "{name}"
        );
        checked += 1;
    }
    for (name, reply) in replies() {
        let (_, want) = doc
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not documented"));
        let (buf, len) = proto::encode_reply(&reply).unwrap();
        assert_eq!(&buf[..len], want.as_slice(), "{name}");
        assert_eq!(
            proto::decode_reply(want, want.len()).unwrap(),
            reply,
            "{name}"
        );
        checked += 1;
    }
    // No documented example goes unchecked.
    assert_eq!(doc.len(), checked, "{doc:?}");
}

#[test]
fn documented_tags_match_the_types() {
    let kinds = [
        ErrorKind::Unauthorized,
        ErrorKind::Malformed,
        ErrorKind::Oversized,
        ErrorKind::UnsupportedVersion,
        ErrorKind::Busy,
        ErrorKind::NoSuchProcess,
        ErrorKind::Unsupported,
        ErrorKind::DumpFailed,
        ErrorKind::StoreFailed,
        ErrorKind::PowerFailed,
        ErrorKind::Internal,
    ];
    for (tag, kind) in kinds.iter().enumerate() {
        let (buf, len) = proto::encode_reply(&Reply::Error(ErrorReply::new(*kind, ""))).unwrap();
        assert_eq!(&buf[..len], &[1, 0, 3, u8::try_from(tag).unwrap(), 0]);
        assert!(
            DOC.contains(&format!("| {tag} | `{kind:?}` |")),
            "{kind:?} is not documented with tag {tag}"
        );
    }
    for (tag, clock) in [Clock::Rtc, Clock::Wall, Clock::Unknown].iter().enumerate() {
        let r = Reply::Resumed(Resumed {
            slept_for_ms: None,
            clock: *clock,
            generation: 0,
        });
        let (buf, _) = proto::encode_reply(&r).unwrap();
        assert_eq!(buf[4], u8::try_from(tag).unwrap());
        assert!(DOC.contains(&format!("{clock:?} ({tag})")), "{clock:?}");
    }
    let states = [
        StoreState::Unavailable,
        StoreState::Empty,
        StoreState::Valid,
        StoreState::Restoring,
        StoreState::Consumed,
    ];
    for (tag, state) in states.iter().enumerate() {
        let r = Reply::Status(Status {
            daemon_version: bounded_text(""),
            protocol: Version { major: 1, minor: 0 },
            store: StoreSummary {
                state: *state,
                generation: 0,
                image_bytes: 0,
            },
            wake_alarm: false,
        });
        let (buf, _) = proto::encode_reply(&r).unwrap();
        // 01 00 | 02 Status | 00 empty version text | 01 00 protocol | state
        assert_eq!(buf[6], u8::try_from(tag).unwrap());
        assert!(DOC.contains(&format!("{state:?} ({tag})")), "{state:?}");
    }
}
