//! The few rtnetlink requests xlbd makes itself (aya covers the rest): deleting the `clsact`
//! qdisc, and the neighbour entry that lets encapsulated health probes to a VIP leave the
//! interface. Each request waits for the kernel's acknowledgement.

use std::{
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::config::MacAddr;

/// `TC_H_CLSACT`, the parent of the clsact qdisc (same value as `TC_H_INGRESS`).
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TCA_KIND`.
const TCA_KIND: u16 = 1;
/// `NDA_DST`.
const NDA_DST: u16 = 1;
/// `NDA_LLADDR`.
const NDA_LLADDR: u16 = 2;
/// `NUD_PERMANENT`: never probed, never expires.
const NUD_PERMANENT: u16 = 0x80;
/// Length of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;

/// The index of a network interface.
pub(crate) fn ifindex(interface: &str) -> io::Result<u32> {
    let name =
        CString::new(interface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// A message under construction: header, then the family-specific struct, then attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16) -> Message {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set in `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(
            &(flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes(),
        );
        bytes.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        Message(bytes)
    }

    fn put(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// One attribute, padded to 4 bytes.
    fn attribute(&mut self, kind: u16, value: &[u8]) {
        self.put(&((4 + value.len()) as u16).to_ne_bytes());
        self.put(&kind.to_ne_bytes());
        self.put(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Sends one request to the kernel and returns its acknowledgement's error, if any.
fn request(message: Message) -> io::Result<()> {
    let message = message.finish();
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_nl is valid (the kernel as destination).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `message` and `kernel` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    // The acknowledgement: an NLMSG_ERROR message whose error is 0 on success.
    let mut reply = [0u8; 1024];
    // SAFETY: `reply` is writable for its whole length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    if received < HEADER_LEN + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let message_type = u16::from_ne_bytes([reply[4], reply[5]]);
    if message_type != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {message_type}"),
        ));
    }
    let error = i32::from_ne_bytes(
        reply[HEADER_LEN..HEADER_LEN + 4]
            .try_into()
            .expect("four bytes"),
    );
    if error == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-error))
    }
}

/// `struct tcmsg`: family, padding, ifindex, handle, parent, info.
fn tcmsg(message: &mut Message, ifindex: u32, handle: u32, parent: u32) {
    message.put(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    message.put(&(ifindex as i32).to_ne_bytes());
    message.put(&handle.to_ne_bytes());
    message.put(&parent.to_ne_bytes());
    message.put(&0u32.to_ne_bytes());
}

/// `struct ndmsg`: family, padding, ifindex, state, flags, type.
fn ndmsg(message: &mut Message, ifindex: u32, state: u16) {
    message.put(&[libc::AF_INET as u8, 0, 0, 0]);
    message.put(&(ifindex as i32).to_ne_bytes());
    message.put(&state.to_ne_bytes());
    message.put(&[0, 0]);
}

/// Deletes the `clsact` qdisc of `interface` (aya can add it but not delete it). The kind is
/// sent along, so the kernel refuses to delete any other qdisc.
pub(crate) fn delete_clsact(interface: &str) -> io::Result<()> {
    let mut message = Message::new(libc::RTM_DELQDISC, 0);
    tcmsg(&mut message, ifindex(interface)?, 0xffff_0000, TC_H_CLSACT);
    message.attribute(TCA_KIND, b"clsact\0");
    request(message)
}

/// Adds (or replaces) a permanent neighbour entry `address` -> `mac` on `interface`.
pub(crate) fn set_neighbour(interface: &str, address: Ipv4Addr, mac: MacAddr) -> io::Result<()> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let mut message = Message::new(libc::RTM_NEWNEIGH, flags);
    ndmsg(&mut message, ifindex(interface)?, NUD_PERMANENT);
    message.attribute(NDA_DST, &address.octets());
    message.attribute(NDA_LLADDR, &mac.0);
    request(message)
}

/// Deletes the neighbour entry of `address` on `interface`; a missing one is not an error.
pub(crate) fn delete_neighbour(interface: &str, address: Ipv4Addr) -> io::Result<()> {
    let mut message = Message::new(libc::RTM_DELNEIGH, 0);
    ndmsg(&mut message, ifindex(interface)?, 0);
    message.attribute(NDA_DST, &address.octets());
    match request(message) {
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        result => result,
    }
}
