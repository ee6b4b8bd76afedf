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
