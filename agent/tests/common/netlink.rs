//! The netlink helpers the test crates share.

/// The bytes waiting in the receive queue of netlink socket `fd` of `pid`,
/// as `/proc/PID/net/netlink` counts them (its `Rmem` column).
pub fn netlink_waiting(pid: i32, fd: i32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link");
    let link = link.to_string_lossy();
    let inode = link
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).expect("net/netlink");
    let row: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() >= 10 && c[9] == inode)
        .unwrap_or_else(|| panic!("socket:[{inode}] in /proc/{pid}/net/netlink"));
    row[4].parse().expect("Rmem")
}
