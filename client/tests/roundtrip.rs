//! Every request and reply survives encode → decode, the largest ones fit
//! in a packet, and bad packets are refused with the right kind.

use torpor_client::proto::{self, bounded_text, DecodeError, ERROR_TEXT, VERSION_TEXT};
use torpor_client::{
    Checkpointed, Clock, ErrorKind, ErrorReply, Reply, Request, Resumed, Status, StoreState,
    StoreSummary, Target, Version, MAX_MESSAGE, VERSION,
};

fn all_requests() -> Vec<Request> {
    let mut out = vec![Request::Status];
    for target in [Target::Caller, Target::Pid(1), Target::Pid(u32::MAX)] {
        out.push(Request::Checkpoint { target });
        for wake in [None, Some(0), Some(1), Some(u32::MAX)] {
            out.push(Request::Hibernate {
                target,
                wake_after_s: wake,
            });
        }
    }
    out
}

fn all_replies() -> Vec<Reply> {
    let mut out = Vec::new();
    for clock in [Clock::Rtc, Clock::Wall, Clock::Unknown] {
        for slept in [None, Some(0), Some(u64::MAX)] {
            out.push(Reply::Resumed(Resumed {
                slept_for_ms: slept,
                clock,
                generation: u64::MAX,
            }));
        }
    }
    out.push(Reply::Checkpointed(Checkpointed {
        generation: 0,
        image_bytes: u64::MAX,
    }));
    for state in [
        StoreState::Unavailable,
        StoreState::Empty,
        StoreState::Valid,
        StoreState::Restoring,
        StoreState::Consumed,
    ] {
        out.push(Reply::Status(Status {
            daemon_version: bounded_text(&"9".repeat(VERSION_TEXT)),
            protocol: Version {
                major: 255,
                minor: 255,
            },
            store: StoreSummary {
                state,
                generation: u64::MAX,
                image_bytes: u64::MAX,
            },
            wake_alarm: true,
        }));
    }
    for kind in [
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
    ] {
        out.push(Reply::Error(ErrorReply::new(kind, "why")));
        // The longest message, in multi-byte characters.
        out.push(Reply::Error(ErrorReply::new(kind, &"é".repeat(ERROR_TEXT))));
    }
    out
}

#[test]
fn every_request_round_trips() {
    for r in all_requests() {
        let (buf, len) = proto::encode_request(&r).unwrap();
        assert!(len <= MAX_MESSAGE);
        assert_eq!(&buf[..2], &[VERSION.major, VERSION.minor]);
        assert_eq!(proto::decode_request(&buf, len).unwrap(), r);
    }
}

#[test]
fn every_reply_round_trips_and_fits_in_a_packet() {
    for r in all_replies() {
        let (buf, len) = proto::encode_reply(&r).unwrap();
        assert!(len <= MAX_MESSAGE, "{len} bytes: {r:?}");
        assert_eq!(proto::decode_reply(&buf, len).unwrap(), r);
    }
}

#[test]
fn long_texts_are_cut_at_a_character_boundary() {
    let e = ErrorReply::new(ErrorKind::Internal, &"é".repeat(ERROR_TEXT));
    // 400 bytes hold 200 two-byte characters exactly.
    assert_eq!(e.message.len(), ERROR_TEXT);
    let e = ErrorReply::new(ErrorKind::Internal, &format!("a{}", "é".repeat(ERROR_TEXT)));
    assert_eq!(e.message.len(), ERROR_TEXT - 1);
    assert!(e.message.ends_with('é'));
    let v: heapless::String<4> = bounded_text("0.1.0-rc1");
    assert_eq!(v.as_str(), "0.1.");
}

#[test]
fn bad_packets_are_refused_with_their_kind() {
    let big = [1u8; MAX_MESSAGE];
    assert_eq!(
        proto::decode_request(&big, 513),
        Err(DecodeError::Oversized { len: 513 })
    );
    assert_eq!(
        proto::decode_request(&big, 513).unwrap_err().kind(),
        ErrorKind::Oversized
    );
    assert_eq!(
        proto::decode_request(&[], 0),
        Err(DecodeError::NoVersion { len: 0 })
    );
    assert_eq!(
        proto::decode_request(&[1], 1).unwrap_err().kind(),
        ErrorKind::Malformed
    );
    let e = proto::decode_request(&[3, 1, 2], 3).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnsupportedVersion {
            theirs: Version { major: 3, minor: 1 },
            ours: VERSION
        }
    );
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion);
    assert_eq!(
        e.to_string(),
        "protocol version 3.1 is not supported: this side speaks 1.0"
    );
    assert_eq!(
        proto::decode_request(&[1, 0, 2, 2], 4),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    let e = proto::decode_request(&[1, 0, 0, 1], 4).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the message ends in the middle of a field (protocol 1.0, this side speaks 1.0)"
    );
    // A string that is not UTF-8 in a reply.
    let e = proto::decode_reply(&[1, 0, 3, 0, 2, 0xc3, 0x28], 7).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a string is not valid UTF-8 (protocol 1.0, this side speaks 1.0)"
    );
    // A message text longer than its bound.
    let mut long = vec![1u8, 0, 3, 0, 0x91, 0x03];
    long.extend(std::iter::repeat_n(b'x', 401));
    let e = proto::decode_reply(&long, long.len()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed);
    // A boolean other than 0 or 1.
    let status = [1u8, 0, 2, 0, 1, 0, 2, 8, 0, 7];
    assert_eq!(
        proto::decode_reply(&status, status.len())
            .unwrap_err()
            .to_string(),
        "a boolean is neither 0 nor 1 (protocol 1.0, this side speaks 1.0)"
    );
}
