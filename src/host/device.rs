//! The smoltcp `Device` with the NAT engine in front of it.
//!
//! `receive` reads frames from the TAP and gives each to the engine first: translated frames
//! and the engine's replies go straight back out, and only frames for the node itself reach
//! smoltcp. Frame buffers are fixed; nothing is allocated per frame.

use std::io;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::tap::Tap;
use crate::engine::{DropReason, Engine, Verdict};
use crate::time::Millis;

/// Room for one frame: Ethernet header, MTU 1500, and a VLAN tag to spare.
pub const FRAME: usize = 1518;
/// Frames one `receive` call looks at before it yields to the rest of the loop.
const BUDGET: usize = 64;

pub struct NatDevice<'e, 't> {
    pub tap: Tap,
    pub engine: &'e mut Engine<'t>,
    rx: [u8; FRAME],
    tx: [u8; FRAME],
    out: [u8; FRAME],
    now: Millis,
    /// A read error other than "nothing waiting" (the TAP vanished): the loop stops on it.
    pub fatal: Option<io::Error>,
}

impl<'e, 't> NatDevice<'e, 't> {
    pub fn new(tap: Tap, engine: &'e mut Engine<'t>) -> Self {
        NatDevice { tap, engine, rx: [0; FRAME], tx: [0; FRAME], out: [0; FRAME], now: Millis(0), fatal: None }
    }

    /// Sets the time the engine sees until the next call.
    pub fn set_now(&mut self, now: Millis) {
        self.now = now;
    }

    /// Sends the engine's own frames: released parked frames and ARP refreshes.
    pub fn flush_engine_output(&mut self) {
        for _ in 0..BUDGET {
            let Some(len) = self.engine.next_output(self.now, &mut self.out) else { break };
            send(&self.tap, &self.out[..len], self.engine);
        }
    }
}

fn send(tap: &Tap, frame: &[u8], engine: &mut Engine) {
    if frame.is_empty() {
        return;
    }
    if tap.send(frame).is_err() {
        engine.count_drop(DropReason::TxBusy);
    }
}

impl<'e, 't> Device for NatDevice<'e, 't> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, 't>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_, 't>)> {
        for _ in 0..BUDGET {
            let n = match self.tap.recv(&mut self.rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    return None;
                }
                Err(e) => {
                    self.fatal = Some(e);
                    return None;
                }
            };
            match self.engine.process(&mut self.rx[..n], self.now, &mut self.out) {
                Verdict::Forward => send(&self.tap, &self.rx[..n], self.engine),
                Verdict::Reply(len) | Verdict::Parked(len) => send(&self.tap, &self.out[..len], self.engine),
                Verdict::Drop(_) => {}
                Verdict::Stack => {
                    let rx = RxToken { frame: &self.rx[..n] };
                    let tx = TxToken { tap: &self.tap, buf: &mut self.tx, engine: self.engine };
                    return Some((rx, tx));
                }
            }
        }
        None
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_, 't>> {
        Some(TxToken { tap: &self.tap, buf: &mut self.tx, engine: self.engine })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

pub struct TxToken<'a, 't> {
    tap: &'a Tap,
    buf: &'a mut [u8; FRAME],
    engine: &'a mut Engine<'t>,
}

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(FRAME);
        let r = f(&mut self.buf[..len]);
        send(self.tap, &self.buf[..len], self.engine);
        r
    }
}
