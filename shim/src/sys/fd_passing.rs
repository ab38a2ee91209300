//! Passing file descriptors over unix sockets (SCM_RIGHTS): how libcontainer hands over a
//! seccomp notify fd and a terminal master, and how the shim hands a launch request's reply
//! channel to the zygote.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{anyhow, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// One message and the descriptor it carries.
pub fn receive_fd(stream: &UnixStream) -> Result<(Vec<u8>, OwnedFd)> {
    let (bytes, fds) = receive_with_fds(stream.as_raw_fd(), 64 * 1024)?;
    let fd = fds
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the message carried no file descriptor"))?;
    Ok((bytes, fd))
}

/// Most descriptors one message carries here (a reply socket and a diagnostics pipe).
const MAX_FDS: usize = 4;

/// One message (at most `capacity` bytes; longer ones are truncated by the kernel) and the
/// descriptors it carries, received close-on-exec. An empty message is the peer's EOF.
pub fn receive_with_fds(socket: RawFd, capacity: usize) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; capacity];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, raw) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let msg = recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut raw = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    buffer.truncate(bytes);
    // SAFETY: the kernel just installed these descriptors in our table for us.
    let fds = raw
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((buffer, fds))
}

/// Sends `bytes` as one message carrying `fds`.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> nix::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(bytes)],
        control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != bytes.len() {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok(())
}
