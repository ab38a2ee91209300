//! Terminals (`tty: true`, `kubectl exec -t`): the container's pseudo-terminal master arrives
//! on a one-shot unix socket (OCI console-socket protocol: the fd by SCM_RIGHTS); the shim
//! copies between it and containerd's FIFOs and resizes it on ResizePty.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::sys::fd_passing::receive_fd;

/// A socket waiting for one pseudo-terminal master.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// A fresh socket in the shim's root-only directory.
    pub fn bind(dir: &Path) -> Result<ConsoleSocket> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = dir.join(format!(
            "{}-tty{}.sock",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).context("binding the console socket")?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Waits (blocking, bounded) for the master; returns it with the connection it came on
    /// (see [`acknowledge`]).
    pub fn receive_master(self, timeout: Duration) -> Result<(OwnedFd, UnixStream)> {
        self.listener.set_nonblocking(true)?;
        let deadline = std::time::Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err(anyhow!("no terminal received within {timeout:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        let _ = std::fs::remove_file(&self.path);
        let (_, master) = receive_fd(&stream).context("receiving the terminal")?;
        Ok((master, stream))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Tells the sender of a terminal that the shim copies from it now. The shim's exec launcher
/// waits for this before the process runs, so that nothing the process writes precedes the
/// copy (a short `kubectl exec -t` could otherwise exit before it, its output lost). A
/// sender that does not wait (libcontainer's init) has gone: the error is ignored.
pub fn acknowledge(mut stream: UnixStream) {
    let _ = std::io::Write::write_all(&mut stream, b"1");
}

/// What the exec launcher waits for (see [`acknowledge`]), bounded.
pub fn wait_acknowledged(stream: &UnixStream, timeout: Duration) -> Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut &*stream, &mut byte)
        .context("waiting for the shim to attach the terminal")
}

/// Copies the terminal to containerd's stdout FIFO and its stdin FIFO to the terminal, in
/// two threads that end with the process (EIO on the master) or end of input. The stdout
/// FIFO is open when this returns.
pub fn attach(master: &OwnedFd, stdin: &str, stdout: &str) -> Result<()> {
    let reader = File::from(master.try_clone()?);
    if !stdout.is_empty() {
        let mut out = OpenOptions::new()
            .write(true)
            .open(stdout)
            .with_context(|| format!("opening {stdout}"))?;
        std::thread::spawn(move || {
            let mut reader = reader;
            let _ = std::io::copy(&mut reader, &mut out);
        });
    }
    if !stdin.is_empty() {
        let mut writer = File::from(master.try_clone()?);
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(stdin)
            .with_context(|| format!("opening {stdin}"))?;
        nix::fcntl::fcntl(
            input.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut input, &mut writer);
        });
    }
    Ok(())
}

/// Sets the terminal's size (ResizePty).
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on our own descriptor.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
