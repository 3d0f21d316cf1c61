//! The wire protocol between applications and `torpor daemon`.
//!
//! The message types and their encoding live in the `torpor-client` crate,
//! so an application links the very same definitions the daemon uses; this
//! module is the agent's view of them. `docs/protocol.md` describes every
//! byte for applications in other languages.

pub use torpor_client::packet;
pub use torpor_client::proto::*;

#[cfg(test)]
mod tests {
    //! Also run on ARMv6 under qemu-arm: 64-bit fields and varints on a 32-bit target.
    use super::*;

    #[test]
    fn sixty_four_bit_fields_round_trip_on_this_target() {
        let r = Reply::Resumed(Resumed { slept_for_ms: Some(u64::MAX), clock: Clock::Rtc, generation: u64::MAX - 1 });
        let (buf, len) = encode_reply(&r).unwrap();
        // 01 00 | 00 Resumed | 01 Some | 10-byte varint | 00 Rtc | 10-byte varint
        assert_eq!(len, 2 + 1 + 1 + 10 + 1 + 10);
        assert_eq!(&buf[4..14], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(decode_reply(&buf, len).unwrap(), r);
        let c = Reply::Checkpointed(Checkpointed { generation: 1 << 40, image_bytes: 4_294_967_296 });
        let (buf, len) = encode_reply(&c).unwrap();
        assert_eq!(&buf[..len], &[1, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x80, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(decode_reply(&buf, len).unwrap(), c);
    }

    #[test]
    fn requests_round_trip_on_this_target() {
        for r in [
            Request::Status,
            Request::Checkpoint { target: Target::Pid(u32::MAX) },
            Request::Hibernate { target: Target::Caller, wake_after_s: Some(u32::MAX) },
        ] {
            let (buf, len) = encode_request(&r).unwrap();
            assert_eq!(decode_request(&buf, len).unwrap(), r);
        }
        assert_eq!(
            decode_request(&[1, 0, 0, 0, 1, 0x90, 0x1c], 7).unwrap(),
            Request::Hibernate { target: Target::Caller, wake_after_s: Some(3600) }
        );
    }
}
