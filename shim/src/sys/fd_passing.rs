//! Receiving a file descriptor over a unix socket (SCM_RIGHTS): how libcontainer hands over a
//! seccomp notify fd and a terminal master.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use anyhow::{anyhow, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// One message and the descriptor it carries.
pub fn receive_fd(stream: &UnixStream) -> Result<(Vec<u8>, OwnedFd)> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let (bytes, fd) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        (msg.bytes, fd)
    };
    let fd = fd.ok_or_else(|| anyhow!("the message carried no file descriptor"))?;
    buffer.truncate(bytes);
    // SAFETY: the kernel just installed this descriptor in our table for us.
    Ok((buffer, unsafe { OwnedFd::from_raw_fd(fd) }))
}
