//! What every socket kind shares: options read through a duplicate of the
//! fd and set again on the new socket, and socket addresses.
//!
//! Unsafe code: socket options and names are read and set with
//! get/setsockopt and get*name through libc, with pointers to our buffers.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::last_os;
use crate::engine::conv;
use crate::image::records::SockOpts;

/// The size of `T` as a socket length argument.
pub(super) fn socklen<T>() -> libc::socklen_t {
    // Only socket option and address types, all far below 4 GiB.
    libc::socklen_t::try_from(core::mem::size_of::<T>()).unwrap_or(0)
}

pub(super) fn get_int(fd: &OwnedFd, level: i32, opt: i32) -> Result<i32, std::io::Error> {
    let mut v: libc::c_int = 0;
    let mut len = socklen::<libc::c_int>();
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    if unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw mut v).cast(),
            &raw mut len,
        )
    } < 0
    {
        return Err(last_os());
    }
    Ok(v)
}

pub(super) fn set_int(fd: i32, level: i32, opt: i32, v: i32) -> Result<(), std::io::Error> {
    // SAFETY: setsockopt reads one int.
    if unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            socklen::<libc::c_int>(),
        )
    } < 0
    {
        return Err(last_os());
    }
    Ok(())
}

fn get_timeo(fd: &OwnedFd, opt: i32) -> Result<u64, std::io::Error> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = socklen::<libc::timeval>();
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    if unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw mut tv).cast(),
            &raw mut len,
        )
    } < 0
    {
        return Err(last_os());
    }
    let sec: u64 = conv::fit(
        tv.tv_sec,
        "u64",
        format_args!("socket option {opt} seconds"),
    )?;
    let usec: u64 = conv::fit(
        tv.tv_usec,
        "u64",
        format_args!("socket option {opt} microseconds"),
    )?;
    sec.checked_mul(1_000_000)
        .and_then(|v| v.checked_add(usec))
        .ok_or_else(|| std::io::Error::other(format!("socket option {opt}: timeout overflows")))
}

fn set_timeo(fd: i32, opt: i32, us: u64) -> Result<(), std::io::Error> {
    // libc deprecates time_t on musl ahead of its 64-bit change; the field
    // has that type whichever it is.
    #[allow(deprecated)]
    let tv = libc::timeval {
        tv_sec: conv::fit(
            us / 1_000_000,
            "time_t",
            format_args!("socket option {opt} seconds"),
        )?,
        // Below 10^6: fits.
        tv_usec: libc::suseconds_t::try_from(us % 1_000_000).unwrap_or(0),
    };
    // SAFETY: setsockopt reads one timeval.
    if unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const tv).cast(),
            socklen::<libc::timeval>(),
        )
    } < 0
    {
        return Err(last_os());
    }
    Ok(())
}

/// The options of a socket (`tcp`: it is a TCP socket, with `TCP_NODELAY`).
pub(super) fn collect_opts(fd: &OwnedFd, tcp: bool) -> Result<SockOpts, std::io::Error> {
    let sol = libc::SOL_SOCKET;
    Ok(SockOpts {
        rcvbuf: get_int(fd, sol, libc::SO_RCVBUF)?,
        sndbuf: get_int(fd, sol, libc::SO_SNDBUF)?,
        reuseaddr: get_int(fd, sol, libc::SO_REUSEADDR)? != 0,
        reuseport: get_int(fd, sol, libc::SO_REUSEPORT)? != 0,
        keepalive: get_int(fd, sol, libc::SO_KEEPALIVE)? != 0,
        // Only UNIX sockets have it; newer kernels refuse it on others.
        passcred: match get_int(fd, sol, libc::SO_PASSCRED) {
            Ok(v) => v != 0,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => false,
            Err(e) => return Err(e),
        },
        rcvtimeo_us: get_timeo(fd, libc::SO_RCVTIMEO)?,
        sndtimeo_us: get_timeo(fd, libc::SO_SNDTIMEO)?,
        nodelay: tcp && get_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY)? != 0,
    })
}

/// Sets on a new socket the options that differ from its defaults. The
/// kernel doubles a buffer size it is given, so half the saved value is set
/// and `getsockopt` reports what it did at the dump.
pub(super) fn apply_opts(fd: i32, o: &SockOpts, tcp: bool) -> Result<(), std::io::Error> {
    let sol = libc::SOL_SOCKET;
    let set_bool = |opt: i32, v: bool| if v { set_int(fd, sol, opt, 1) } else { Ok(()) };
    set_bool(libc::SO_REUSEADDR, o.reuseaddr)?;
    set_bool(libc::SO_REUSEPORT, o.reuseport)?;
    set_bool(libc::SO_KEEPALIVE, o.keepalive)?;
    set_bool(libc::SO_PASSCRED, o.passcred)?;
    if tcp && o.nodelay {
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if o.rcvtimeo_us > 0 {
        set_timeo(fd, libc::SO_RCVTIMEO, o.rcvtimeo_us)?;
    }
    if o.sndtimeo_us > 0 {
        set_timeo(fd, libc::SO_SNDTIMEO, o.sndtimeo_us)?;
    }
    let own = {
        // A borrowed view for get_int; the fd stays the caller's.
        // SAFETY: `fd` is open for the duration of this call; ManuallyDrop
        // keeps it from being closed.
        core::mem::ManuallyDrop::new(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        })
    };
    for (opt, want) in [(libc::SO_RCVBUF, o.rcvbuf), (libc::SO_SNDBUF, o.sndbuf)] {
        if want > 0 && get_int(&own, sol, opt)? != want {
            set_int(fd, sol, opt, want / 2)?;
        }
    }
    Ok(())
}

/// A `sockaddr_un` for a path or an abstract name (`\0`-led).
pub(super) fn sockaddr_un(
    name: &[u8],
) -> Result<(libc::sockaddr_un, libc::socklen_t), std::io::Error> {
    // SAFETY: sockaddr_un is plain integers; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    // AF_UNIX is 1.
    a.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    if name.len() >= a.sun_path.len() {
        return Err(std::io::Error::other(format!(
            "socket name of {} bytes is too long",
            name.len()
        )));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    let len = core::mem::size_of::<libc::sa_family_t>()
        + name.len()
        + usize::from(name.first() != Some(&0));
    // At most the size of sockaddr_un: the name was checked above.
    Ok((a, libc::socklen_t::try_from(len).unwrap_or(0)))
}

/// The raw address of the socket (`getsockname`) or of its peer
/// (`getpeername`), as many bytes as the kernel reports; `None` when it
/// has no peer.
pub(super) fn sock_name(f: &OwnedFd, peer: bool) -> Result<Option<Vec<u8>>, std::io::Error> {
    // As large and as aligned as a `sockaddr_storage`, and plain bytes to
    // the kernel, which writes the address into it.
    let mut a = [0u64; 16];
    const _: () = assert!(
        core::mem::size_of::<[u64; 16]>() == core::mem::size_of::<libc::sockaddr_storage>()
    );
    let mut len = socklen::<libc::sockaddr_storage>();
    let p = a.as_mut_ptr().cast::<libc::sockaddr>();
    // SAFETY: get*name writes at most `len` bytes into `a`.
    let r = unsafe {
        if peer {
            libc::getpeername(f.as_raw_fd(), p, &raw mut len)
        } else {
            libc::getsockname(f.as_raw_fd(), p, &raw mut len)
        }
    };
    if r < 0 {
        let e = last_os();
        return if e.raw_os_error() == Some(libc::ENOTCONN) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let bytes = bytemuck::bytes_of(&a);
    let len = usize::try_from(len).unwrap_or(bytes.len()).min(bytes.len());
    Ok(Some(bytes[..len].to_vec()))
}

/// The name bytes (no trailing NUL) of a raw `sockaddr_un` as
/// [`sock_name`] returns it.
pub(super) fn un_name(raw: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = raw
        .get(core::mem::size_of::<libc::sa_family_t>()..)
        .unwrap_or_default()
        .to_vec();
    if v.first() != Some(&0) {
        while v.last() == Some(&0) {
            v.pop();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_names_round_trip() {
        for name in [&b"/run/app.sock"[..], b"\0abstract-name", b"rel"] {
            let (a, len) = sockaddr_un(name).expect("fits");
            let mut raw = a.sun_family.to_ne_bytes().to_vec();
            raw.extend(a.sun_path.iter().map(|c| c.to_ne_bytes()[0]));
            raw.truncate(len as usize);
            assert_eq!(un_name(&raw), name.to_vec());
        }
        assert!(sockaddr_un(&[b'x'; 200]).is_err());
    }
}
