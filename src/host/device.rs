//! The smoltcp `Device` with the NAT engine in front of it.
//!
//! `receive` reads frames from the TAP and gives each to the engine first: translated frames
//! and the engine's replies go straight back out, and only frames for the node itself reach
//! smoltcp. Every frame on the TAP has a virtio-net header in front: a translated frame leaves
//! with the header it came with (the kernel then finishes its checksum and cuts a super-frame
//! into segments), the engine's and smoltcp's own frames with an empty one. Frame buffers are
//! fixed; nothing is allocated per frame.

use std::io;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::tap::Tap;
use crate::engine::{DropReason, Engine, Offload, Verdict};
use crate::time::Millis;

/// The virtio-net header (`struct virtio_net_hdr`): flags, GSO type, header length, GSO size,
/// checksum start and offset.
const VNET_HEADER: usize = 10;
const VNET_NEEDS_CSUM: u8 = 1;
/// Room for a frame nodegate sends on its own: Ethernet header, MTU 1500, a VLAN tag to spare.
const FRAME: usize = 1518;
/// Room for a frame the TAP hands over: a 64 KiB IPv4 super-frame with its Ethernet header.
const RX_FRAME: usize = 14 + 4 + 65535;
/// Frames the device reads in one turn of the loop (and frames of the engine's own it sends),
/// before it yields to the rest of the loop: what keeps a turn short under a flood.
const BUDGET: usize = 64;

pub struct NatDevice<'e, 't> {
    pub tap: Tap,
    pub engine: &'e mut Engine<'t>,
    rx: [u8; VNET_HEADER + RX_FRAME],
    tx: [u8; VNET_HEADER + FRAME],
    out: [u8; VNET_HEADER + FRAME],
    now: Millis,
    /// Frames this turn may still read.
    reads_left: usize,
    /// Frames read this turn.
    pub read_this_turn: usize,
    /// A read error other than "nothing waiting" (the TAP vanished): the loop stops on it.
    pub fatal: Option<io::Error>,
}

impl<'e, 't> NatDevice<'e, 't> {
    pub fn new(tap: Tap, engine: &'e mut Engine<'t>) -> Self {
        NatDevice {
            tap,
            engine,
            rx: [0; VNET_HEADER + RX_FRAME],
            tx: [0; VNET_HEADER + FRAME],
            out: [0; VNET_HEADER + FRAME],
            now: Millis(0),
            reads_left: BUDGET,
            read_this_turn: 0,
            fatal: None,
        }
    }

    /// Starts a turn of the loop: the time the engine sees in it, and a fresh read budget.
    pub fn start_turn(&mut self, now: Millis) {
        self.now = now;
        self.reads_left = BUDGET;
        self.read_this_turn = 0;
    }

    /// Sends the engine's own frames: released parked frames and ARP refreshes.
    pub fn flush_engine_output(&mut self) {
        for _ in 0..BUDGET {
            let Some(len) = self.engine.next_output(self.now, &mut self.out[VNET_HEADER..]) else { break };
            send(&self.tap, &self.out[..VNET_HEADER + len], self.engine);
        }
    }
}

/// What the kernel left undone on a frame, from its virtio-net header.
fn offload(header: &[u8]) -> Offload {
    let gso_type = header[1];
    let segment_size = u16::from_ne_bytes([header[4], header[5]]);
    Offload {
        partial_checksum: header[0] & VNET_NEEDS_CSUM != 0,
        segment_size: if gso_type == 0 { 0 } else { segment_size.max(1) },
    }
}

/// Sends `frame`, virtio-net header included; nothing when it holds no frame.
fn send(tap: &Tap, frame: &[u8], engine: &mut Engine) {
    if frame.len() <= VNET_HEADER {
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
        // smoltcp calls this until it answers `None`: the budget counts frames for the node too.
        while self.reads_left > 0 {
            self.reads_left -= 1;
            let n = match self.tap.recv(&mut self.rx) {
                // A read no longer than the header (the kernel sends none) reaches the engine as
                // an empty frame, to be counted as truncated.
                Ok(n) => n.max(VNET_HEADER),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    return None;
                }
                Err(e) => {
                    self.fatal = Some(e);
                    return None;
                }
            };
            self.read_this_turn += 1;
            let (header, frame) = self.rx[..n].split_at_mut(VNET_HEADER);
            let out = &mut self.out[VNET_HEADER..];
            match self.engine.process_offloaded(frame, offload(header), self.now, out) {
                Verdict::Forward => send(&self.tap, &self.rx[..n], self.engine),
                Verdict::Reply { len, .. } | Verdict::Parked(len) => {
                    send(&self.tap, &self.out[..VNET_HEADER + len], self.engine)
                }
                Verdict::Drop(_) | Verdict::Consumed => {}
                Verdict::Stack => {
                    let rx = RxToken { frame: &self.rx[VNET_HEADER..n] };
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
    buf: &'a mut [u8; VNET_HEADER + FRAME],
    engine: &'a mut Engine<'t>,
}

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(FRAME);
        // The header stays empty: smoltcp sends whole packets with their checksums.
        let r = f(&mut self.buf[VNET_HEADER..VNET_HEADER + len]);
        send(self.tap, &self.buf[..VNET_HEADER + len], self.engine);
        r
    }
}
