//! The TAP device: opened with a virtio-net header and offloads (see [`sys::open_tap`]),
//! non-blocking, set up, and optionally made a bridge port. A TAP that nodegate created
//! disappears when its descriptor closes; a persistent one created beforehand stays.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::string::{String, ToString};

use super::sys;

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) TAP `name` and sets it up; with `bridge`, makes it a port of that bridge
    /// and sets the bridge up too.
    pub fn open(name: &str, bridge: Option<&str>) -> Result<Tap, TapError> {
        let fail = |step, error| TapError { tap: name.to_string(), step, error };
        let file = sys::open_tap(name).map_err(|e| fail(Step::Open, e))?;
        sys::set_link_up(name).map_err(|e| fail(Step::SetUp, e))?;
        if let Some(bridge) = bridge {
            sys::add_to_bridge(bridge, name).map_err(|e| fail(Step::AddToBridge(bridge.to_string()), e))?;
            sys::set_link_up(bridge).map_err(|e| fail(Step::SetBridgeUp(bridge.to_string()), e))?;
        }
        Ok(Tap { file, name: name.to_string() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame, behind its virtio-net header, into `buf`; `WouldBlock` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Sends one frame behind its virtio-net header.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Frames the kernel dropped in front of the TAP since it was made, its queue towards us
    /// being full: the device's transmit drops, from /proc/net/dev (which is this namespace's,
    /// where /sys may be another's). Read into a fixed buffer; `None` when unreadable.
    pub fn queue_drops(&self) -> Option<u64> {
        let mut buf = [0u8; 16 * 1024];
        let mut file = File::open("/proc/net/dev").ok()?;
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        transmit_drops(core::str::from_utf8(&buf[..len]).ok()?, &self.name)
    }
}

/// The transmit drops of interface `name` in /proc/net/dev's `text`: after `name:`, eight
/// receive counters, then transmit bytes, packets, errors, drops.
fn transmit_drops(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(':'))?;
    line.split_whitespace().nth(11)?.parse().ok()
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The step of [`Tap::open`] that failed.
#[derive(Debug)]
pub enum Step {
    Open,
    SetUp,
    AddToBridge(String),
    SetBridgeUp(String),
}

/// Why the TAP could not be made ready: the step, and the system's answer.
#[derive(Debug)]
pub struct TapError {
    pub tap: String,
    pub step: Step,
    pub error: io::Error,
}

impl std::error::Error for TapError {}

impl fmt::Display for TapError {
    /// One line; for a refused open, the cause and both ways out.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (name, e) = (&self.tap, &self.error);
        match &self.step {
            Step::Open => match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => write!(
                    f,
                    "cannot open TAP {name} through /dev/net/tun: {e}; either run nodegate with CAP_NET_ADMIN \
                     (as root, or `setcap cap_net_admin+ep nodegate`), or pre-create a persistent TAP owned by your user: \
                     `ip tuntap add dev {name} mode tap user $USER`"
                ),
                Some(libc::ENOENT) => {
                    write!(
                        f,
                        "cannot open TAP {name}: /dev/net/tun does not exist (load the tun module: `modprobe tun`)"
                    )
                }
                _ => write!(f, "cannot open TAP {name}: {e}"),
            },
            Step::SetUp => write!(f, "TAP {name}: cannot set it up: {e}"),
            Step::AddToBridge(bridge) => write!(f, "TAP {name}: cannot add it to bridge {bridge}: {e}"),
            Step::SetBridgeUp(bridge) => write!(f, "bridge {bridge}: cannot set it up: {e}"),
        }
    }
}

#[cfg(test)]
mod test {
    use super::transmit_drops;

    #[test]
    fn transmit_drops_are_the_twelfth_counter_of_the_interfaces_line() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
   ng1:     100       2    0    5    0     0          0         0      200       4    0    9    0     0       0          0
    ng0: 4096000   64000    0    0    0     0          0         0  3500000 3000000    0 616313    0     0       0          0
";
        assert_eq!(transmit_drops(text, "ng0"), Some(616_313));
        assert_eq!(transmit_drops(text, "ng1"), Some(9));
        assert_eq!(transmit_drops(text, "ng"), None, "a name is matched whole");
        assert_eq!(transmit_drops(text, "br0"), None);
        assert_eq!(transmit_drops("   ng0: 1 2 3", "ng0"), None, "a short line");
    }
}
