//! The wire protocol between applications and `torpor daemon`.
//!
//! The message types and their encoding live in the `torpor-client` crate,
//! so an application links the very same definitions the daemon uses; this
//! module is the agent's view of them. `docs/protocol.md` describes every
//! byte for applications in other languages.

pub use torpor_client::packet;
pub use torpor_client::proto::*;

/// Tells a restored application that it is back: sends `Resumed` on the
/// torpor end of its connection (the peer of the socket the image brought
/// back at the application's fd). Whoever restores the tree calls this once
/// the tree runs; the application's pending `recv()` returns it.
pub fn send_resumed(conn: std::os::fd::BorrowedFd<'_>, resumed: Resumed) -> std::io::Result<()> {
    let (buf, len) = encode_reply(&Reply::Resumed(resumed)).map_err(std::io::Error::other)?;
    packet::send_packet(conn, &buf[..len], false)
}

#[cfg(test)]
mod tests {
    //! Also run on ARMv6 under qemu-arm: 64-bit fields and varints on a 32-bit target.
    use super::*;

    #[test]
    fn sixty_four_bit_fields_round_trip_on_this_target() {
        let r = Reply::Resumed(Resumed {
            slept_for_ms: Some(u64::MAX),
            clock: Clock::Rtc,
            generation: u64::MAX - 1,
        });
        let (buf, len) = encode_reply(&r).unwrap();
        // 01 00 | 00 Resumed | 01 Some | 10-byte varint | 00 Rtc | 10-byte varint
        assert_eq!(len, 2 + 1 + 1 + 10 + 1 + 10);
        assert_eq!(
            &buf[4..14],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(decode_reply(&buf, len).unwrap(), r);
        let c = Reply::Checkpointed(Checkpointed {
            generation: 1 << 40,
            image_bytes: 4_294_967_296,
        });
        let (buf, len) = encode_reply(&c).unwrap();
        assert_eq!(
            &buf[..len],
            &[1, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x80, 0x80, 0x80, 0x80, 0x10]
        );
        assert_eq!(decode_reply(&buf, len).unwrap(), c);
    }

    #[test]
    fn send_resumed_delivers_one_packet() {
        use std::os::fd::AsFd;
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let r = Resumed {
            slept_for_ms: Some(86_400_000),
            clock: Clock::Rtc,
            generation: 12,
        };
        send_resumed(ours.as_fd(), r).unwrap();
        let mut buf = [0u8; MAX_MESSAGE];
        let n = packet::recv_packet(theirs.as_fd(), &mut buf, true).unwrap();
        assert_eq!(&buf[..n], &[1, 0, 0, 1, 0x80, 0xb8, 0x99, 0x29, 0, 12]);
        assert_eq!(decode_reply(&buf, n).unwrap(), Reply::Resumed(r));
    }

    #[test]
    fn requests_round_trip_on_this_target() {
        for r in [
            Request::Status,
            Request::Checkpoint {
                target: Target::Pid(u32::MAX),
            },
            Request::Hibernate {
                target: Target::Caller,
                wake_after_s: Some(u32::MAX),
            },
        ] {
            let (buf, len) = encode_request(&r).unwrap();
            assert_eq!(decode_request(&buf, len).unwrap(), r);
        }
        assert_eq!(
            decode_request(&[1, 0, 0, 0, 1, 0x90, 0x1c], 7).unwrap(),
            Request::Hibernate {
                target: Target::Caller,
                wake_after_s: Some(3600)
            }
        );
    }
}
