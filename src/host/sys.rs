//! The few system calls the std edge makes directly: opening the TAP with offloads, interface
//! flags and bridge ports, `poll(2)` on the TAP, signal flags and the random seed.
#![allow(unsafe_code)]

use std::format;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT or SIGTERM; the loop checks it every turn.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP; the control thread re-reads the config.
pub static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::Relaxed);
    } else {
        SHUTDOWN.store(true, Ordering::Relaxed);
    }
}

/// Routes SIGINT and SIGTERM to [`SHUTDOWN`], SIGHUP to [`RELOAD`]. Without SA_RESTART, so a
/// `poll` in progress returns at once.
pub fn catch_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout_ms` passes (or a signal arrives); whether it is
/// readable (0 ms: a look, no wait).
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(rc > 0)
}

/// Opens TAP `name` (creating it unless it exists) with a virtio-net header in front of every
/// frame, and offers the kernel to leave TCP/UDP checksums and TCP segmentation to us: frames
/// from local senders then come unsegmented, up to 64 KiB, with partial checksums. Non-blocking.
pub fn open_tap(name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may write back the name of) the ifreq it is given.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let offloads = (libc::TUN_F_CSUM | libc::TUN_F_TSO4) as libc::c_ulong;
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, offloads) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} is too long")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

struct Socket(RawFd);

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned and closed by Drop.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(Socket(fd)) }
    }

    fn ioctl(&self, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for these interface ioctls.
        if unsafe { libc::ioctl(self.0, request, req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// Sets interface `name` up.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = Socket::new()?;
    let mut req = ifreq(name)?;
    sock.ioctl(libc::SIOCGIFFLAGS as libc::Ioctl, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    sock.ioctl(libc::SIOCSIFFLAGS as libc::Ioctl, &mut req)
}

/// Makes interface `port` a port of bridge `bridge`.
pub fn add_to_bridge(bridge: &str, port: &str) -> io::Result<()> {
    const SIOCBRADDIF: libc::Ioctl = 0x89a2;
    let c_port = std::ffi::CString::new(port).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_port.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = Socket::new()?;
    let mut req = ifreq(bridge)?;
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    sock.ioctl(SIOCBRADDIF, &mut req)
}

/// 16 random bytes from the kernel, for hash keys and the SNAT port sequence.
pub fn random_key() -> io::Result<[u64; 2]> {
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or_default());
    Ok([word(0), word(8)])
}

/// The uid and gid of `user`.
pub fn user_ids(user: &str) -> io::Result<(u32, u32)> {
    let name = std::ffi::CString::new(user).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: getpwnam returns a pointer to static storage, read at once, before any other call
    // that could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no user named {user:?}")));
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Switches the process to `uid`/`gid` for good, with no supplementary groups.
pub fn switch_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain system calls on integers.
    let failed =
        unsafe { libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 };
    if failed { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// CPU time this thread has used, in microseconds: a turn's wall time less this is the time the
/// thread waited for a CPU.
pub fn thread_cpu_micros() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}
