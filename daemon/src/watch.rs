//! Watches the config file's directory with inotify and reports "the file may have changed",
//! debounced. Watching the directory, not the file, catches every way editors and config
//! management write: in place, a temporary file renamed over it, or a symlink swapped. The
//! controller compares contents, so a spurious event costs one file read.

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, fd::FromRawFd as _, fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::Path,
    time::Duration,
};

use crossbeam_channel::Sender;

/// Quiet time after the last event before reporting: an editor's write-rename-chmod sequence
/// becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Starts a thread that sends `()` on `events` after changes in the directory of `file`. The
/// thread ends when the receiver is gone.
pub fn spawn(file: &Path, events: Sender<()>) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => Path::new(".").to_owned(),
    };
    // SAFETY: inotify_init1 has no memory preconditions; the result is checked below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dir_c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mask = libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_ATTRIB;
    // SAFETY: fd is a valid inotify descriptor and dir_c a NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir_c.as_ptr(), mask) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("xlb-watch".into())
        .spawn(move || watch_loop(fd, events))?;
    Ok(())
}

/// Waits up to `timeout` for the descriptor to become readable.
fn readable(fd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis() as i32);
    // SAFETY: pfd is a valid pollfd array of length 1.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer we own, at most its length.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

fn watch_loop(fd: OwnedFd, events: Sender<()>) {
    loop {
        if !readable(&fd, None) {
            // poll failed (it cannot time out without a timeout): do not spin.
            std::thread::sleep(DEBOUNCE);
            continue;
        }
        drain(&fd);
        // Debounce: wait until the directory has been quiet for DEBOUNCE.
        while readable(&fd, Some(DEBOUNCE)) {
            drain(&fd);
        }
        if events.send(()).is_err() {
            return;
        }
    }
}
