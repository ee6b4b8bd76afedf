//! The flow-sync message on the wire: a header, records, and an HMAC-SHA256 tag over both.
//!
//! ```text
//! 0      4    5    6        8        16       24       32
//! | NGSY | v1 |kind| records| epoch  | seq    | echo   | records ... | tag (16) |
//! ```
//!
//! All numbers are big-endian. `epoch` names the sender's run (drawn at start), `seq` counts
//! its messages, `echo` is the nonce of the table request a message answers (0 otherwise). A
//! [`Message`] is only ever built from bytes whose tag verified and whose records all parse, so
//! nothing from an unauthenticated or truncated message can be acted on.

use core::net::Ipv4Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::conntrack::{State, Tuple};

pub const MAGIC: [u8; 4] = *b"NGSY";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 32;
/// HMAC-SHA256 truncated to its first 128 bits (RFC 2104 section 5 allows half or more).
pub const TAG_LEN: usize = 16;
/// The shortest and longest key a key file may hold.
pub const KEY_MIN: usize = 16;
pub const KEY_MAX: usize = 64;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RECORDS: Range<usize> = 6..8;
    pub const EPOCH: Range<usize> = 8..16;
    pub const SEQ: Range<usize> = 16..24;
    pub const ECHO: Range<usize> = 24..32;
}

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Records: flows installed or changed, flows removed, affinity pins.
    Update,
    /// "Send me your table": `echo` holds the nonce the answer must carry.
    TableRequest,
}

impl Kind {
    const fn number(self) -> u8 {
        match self {
            Kind::Update => 1,
            Kind::TableRequest => 2,
        }
    }
}

/// Why a received message was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, not ours, another version or kind, or records that do not parse.
    Malformed,
    /// The tag does not match: not from a holder of the key.
    BadMac,
}

/// The shared secret of the gateways of a pair.
#[derive(Clone)]
pub struct Key(heapless::Vec<u8, KEY_MAX>);

impl Key {
    /// `None` unless `bytes` is [`KEY_MIN`] to [`KEY_MAX`] long.
    pub fn new(bytes: &[u8]) -> Option<Key> {
        (bytes.len() >= KEY_MIN).then(|| heapless::Vec::from_slice(bytes).ok().map(Key)).flatten()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; the constructor cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => Hmac::<Sha256>::new(&Default::default()),
        }
    }
}

/// One flow as both gateways know it: its two tuples (the original's and the reply's ports and
/// addresses, one protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub original: Tuple,
    pub reply: Tuple,
}

/// A flow installed or changed on the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub state: State,
    /// The flow's portable marks (FINs seen, replied). Not its sequence ends: they move with
    /// every segment, so a copy would be stale by the takeover and refuse the flow's own FIN.
    pub marks: u8,
    pub client_mac: [u8; 6],
    /// Seconds since its last packet passed the sender.
    pub idle: u16,
}

/// A ClientIP affinity pin: `client` goes to `endpoint` of the service listening on `listener`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRecord {
    pub proto: u8,
    pub listener: (Ipv4Addr, u16),
    pub client: Ipv4Addr,
    pub endpoint: Ipv4Addr,
    /// Seconds the pin has left.
    pub remaining: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Flow(FlowRecord),
    Removal(FlowKey),
    Pin(PinRecord),
}

const TYPE_FLOW: u8 = 1;
const TYPE_REMOVAL: u8 = 2;
const TYPE_PIN: u8 = 3;
/// The type byte, the protocol, two addresses and two ports per tuple.
const KEY_LEN: usize = 2 + 2 * 12;
pub const FLOW_LEN: usize = KEY_LEN + 1 + 1 + 6 + 2;
const PIN_LEN: usize = 2 + 6 + 4 + 4 + 4;

impl Record {
    pub const fn wire_len(&self) -> usize {
        match self {
            Record::Flow(_) => FLOW_LEN,
            Record::Removal(_) => KEY_LEN,
            Record::Pin(_) => PIN_LEN,
        }
    }

    /// Writes the record at the start of `buf`, which must hold [`Record::len`] bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut w = Cursor { buf, at: 0 };
        match self {
            Record::Flow(f) => {
                w.key(TYPE_FLOW, &f.key);
                w.put(&[state_number(f.state), f.marks]);
                w.put(&f.client_mac);
                w.put(&f.idle.to_be_bytes());
            }
            Record::Removal(k) => w.key(TYPE_REMOVAL, k),
            Record::Pin(p) => {
                w.put(&[TYPE_PIN, p.proto]);
                w.put(&p.listener.0.octets());
                w.put(&p.listener.1.to_be_bytes());
                w.put(&p.client.octets());
                w.put(&p.endpoint.octets());
                w.put(&p.remaining.to_be_bytes());
            }
        }
    }

    /// The record at the start of `buf` and its length.
    fn parse(buf: &[u8]) -> Option<(Record, usize)> {
        let mut r = Reader { buf, at: 0 };
        let record = match r.u8()? {
            TYPE_FLOW => {
                let key = r.key()?;
                let state = state_from(r.u8()?)?;
                let marks = r.u8()?;
                let mut client_mac = [0; 6];
                client_mac.copy_from_slice(r.take(6)?);
                Record::Flow(FlowRecord { key, state, marks, client_mac, idle: r.u16()? })
            }
            TYPE_REMOVAL => Record::Removal(r.key()?),
            TYPE_PIN => Record::Pin(PinRecord {
                proto: r.u8()?,
                listener: (r.ip()?, r.u16()?),
                client: r.ip()?,
                endpoint: r.ip()?,
                remaining: r.u32()?,
            }),
            _ => return None,
        };
        Some((record, r.at))
    }
}

const fn state_number(state: State) -> u8 {
    match state {
        State::None => 0,
        State::SynSent => 1,
        State::SynRecv => 2,
        State::Established => 3,
        State::FinWait => 4,
        State::CloseWait => 5,
        State::TimeWait => 6,
        State::Close => 7,
    }
}

const fn state_from(n: u8) -> Option<State> {
    Some(match n {
        0 => State::None,
        1 => State::SynSent,
        2 => State::SynRecv,
        3 => State::Established,
        4 => State::FinWait,
        5 => State::CloseWait,
        6 => State::TimeWait,
        7 => State::Close,
        _ => return None,
    })
}

struct Cursor<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn tuple(&mut self, t: &Tuple) {
        self.put(&t.src.octets());
        self.put(&t.src_port.to_be_bytes());
        self.put(&t.dst.octets());
        self.put(&t.dst_port.to_be_bytes());
    }

    fn key(&mut self, kind: u8, k: &FlowKey) {
        self.put(&[kind, k.original.proto]);
        self.tuple(&k.original);
        self.tuple(&k.reply);
    }
}

struct Reader<'b> {
    buf: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let bytes = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn ip(&mut self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(self.u32()?))
    }

    fn tuple(&mut self, proto: u8) -> Option<Tuple> {
        Some(Tuple { src: self.ip()?, src_port: self.u16()?, dst: self.ip()?, dst_port: self.u16()?, proto })
    }

    fn key(&mut self) -> Option<FlowKey> {
        let proto = self.u8()?;
        Some(FlowKey { original: self.tuple(proto)?, reply: self.tuple(proto)? })
    }
}

/// The header a message is sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub epoch: u64,
    pub seq: u64,
    pub echo: u64,
}

/// Writes `header` in front of the `records` records already in `buf[HEADER_LEN..end]` and the
/// tag after them; returns the message's length. `buf` must hold `end + TAG_LEN` bytes.
pub fn seal(buf: &mut [u8], end: usize, records: u16, header: &Header, key: &Key) -> usize {
    buf[field::MAGIC].copy_from_slice(&MAGIC);
    buf[field::VERSION] = VERSION;
    buf[field::KIND] = header.kind.number();
    buf[field::RECORDS].copy_from_slice(&records.to_be_bytes());
    buf[field::EPOCH].copy_from_slice(&header.epoch.to_be_bytes());
    buf[field::SEQ].copy_from_slice(&header.seq.to_be_bytes());
    buf[field::ECHO].copy_from_slice(&header.echo.to_be_bytes());
    let mut mac = key.mac();
    mac.update(&buf[..end]);
    let tag = mac.finalize().into_bytes();
    buf[end..end + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
    end + TAG_LEN
}

/// A received message whose tag verified and whose records parse.
#[derive(Debug, Clone, Copy)]
pub struct Message<'b> {
    pub header: Header,
    count: u16,
    records: &'b [u8],
}

impl<'b> Message<'b> {
    /// Checks `bytes`: the tag first (nothing of an unauthenticated message is looked at beyond
    /// its length), then the header and every record.
    pub fn parse(bytes: &'b [u8], key: &Key) -> Result<Message<'b>, Rejected> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Rejected::Malformed);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = key.mac();
        mac.update(body);
        // Constant time: a forger learns nothing from how long the comparison took.
        mac.verify_truncated_left(tag).map_err(|_| Rejected::BadMac)?;
        if body[field::MAGIC] != MAGIC || body[field::VERSION] != VERSION {
            return Err(Rejected::Malformed);
        }
        let kind = match body[field::KIND] {
            1 => Kind::Update,
            2 => Kind::TableRequest,
            _ => return Err(Rejected::Malformed),
        };
        let be64 = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[r]);
            u64::from_be_bytes(b)
        };
        let header = Header { kind, epoch: be64(field::EPOCH), seq: be64(field::SEQ), echo: be64(field::ECHO) };
        let count = u16::from_be_bytes([body[field::RECORDS.start], body[field::RECORDS.start + 1]]);
        let message = Message { header, count, records: &body[HEADER_LEN..] };
        // Every record must parse and the count must match, before any is installed.
        let mut at = 0;
        for _ in 0..count {
            let (_, len) = Record::parse(&message.records[at..]).ok_or(Rejected::Malformed)?;
            at += len;
        }
        if at != message.records.len() || (kind == Kind::TableRequest && count != 0) {
            return Err(Rejected::Malformed);
        }
        Ok(message)
    }

    pub fn records(&self) -> impl Iterator<Item = Record> + 'b {
        let mut rest = self.records;
        (0..self.count).map_while(move |_| {
            let (record, len) = Record::parse(rest)?;
            rest = &rest[len..];
            Some(record)
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> Key {
        Key::new(KEY).unwrap()
    }

    fn flow_record() -> Record {
        let original = Tuple {
            src: Ipv4Addr::new(192, 0, 2, 9),
            dst: Ipv4Addr::new(10, 77, 0, 100),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
        };
        let reply = Tuple {
            src: Ipv4Addr::new(10, 77, 0, 20),
            dst: Ipv4Addr::new(10, 77, 0, 50),
            src_port: 8080,
            dst_port: 40001,
            proto: 6,
        };
        Record::Flow(FlowRecord {
            key: FlowKey { original, reply },
            state: State::Established,
            marks: 0b101,
            client_mac: [2, 0, 0, 0, 0, 9],
            idle: 3,
        })
    }

    fn pin_record() -> Record {
        Record::Pin(PinRecord {
            proto: 17,
            listener: (Ipv4Addr::new(10, 77, 0, 100), 53),
            client: Ipv4Addr::new(192, 0, 2, 9),
            endpoint: Ipv4Addr::new(10, 77, 0, 21),
            remaining: 10800,
        })
    }

    /// A sealed update holding `records`.
    fn message(records: &[Record], header: &Header) -> ([u8; 512], usize) {
        let mut buf = [0u8; 512];
        let mut end = HEADER_LEN;
        for r in records {
            r.emit(&mut buf[end..]);
            end += r.wire_len();
        }
        let len = seal(&mut buf, end, records.len() as u16, header, &key());
        (buf, len)
    }

    const HEADER: Header = Header { kind: Kind::Update, epoch: 0x1122_3344_5566_7788, seq: 42, echo: 9 };

    #[test]
    fn records_come_back_as_they_were_sent() {
        let removal = match flow_record() {
            Record::Flow(f) => Record::Removal(f.key),
            _ => unreachable!(),
        };
        let sent = [flow_record(), removal, pin_record()];
        let (buf, len) = message(&sent, &HEADER);
        assert_eq!(len, HEADER_LEN + FLOW_LEN + KEY_LEN + PIN_LEN + TAG_LEN);
        let m = Message::parse(&buf[..len], &key()).unwrap();
        assert_eq!(m.header, HEADER);
        let mut got = m.records();
        for r in sent {
            assert_eq!(got.next(), Some(r));
        }
        assert_eq!(got.next(), None);
    }

    #[test]
    fn a_message_under_another_key_or_altered_fails_its_tag() {
        let (mut buf, len) = message(&[flow_record()], &HEADER);
        let other = Key::new(b"another key of the right length!").unwrap();
        assert_eq!(Message::parse(&buf[..len], &other).err(), Some(Rejected::BadMac));
        // Any bit flipped anywhere, header, record or tag.
        for at in [field::SEQ.start, HEADER_LEN + 3, len - 1] {
            buf[at] ^= 1;
            assert_eq!(Message::parse(&buf[..len], &key()).err(), Some(Rejected::BadMac), "byte {at}");
            buf[at] ^= 1;
        }
        assert!(Message::parse(&buf[..len], &key()).is_ok());
    }

    #[test]
    fn truncated_and_hostile_messages_are_rejected_without_panic() {
        let (buf, len) = message(&[flow_record(), pin_record()], &HEADER);
        for cut in 0..len {
            assert!(Message::parse(&buf[..cut], &key()).is_err(), "cut at {cut}");
        }
        // Authenticated but wrong inside (a peer with the key and a bug): a count larger than
        // the records, an unknown record type, a state that does not exist, a request with
        // records, another version.
        let hostile = |edit: &dyn Fn(&mut [u8; 512]), records: u16| {
            let (mut b, len) = message(&[flow_record()], &HEADER);
            edit(&mut b);
            let end = len - TAG_LEN;
            let kind = if b[field::KIND] == 2 { Kind::TableRequest } else { Kind::Update };
            let header = Header { kind, ..HEADER };
            let version = b[field::VERSION];
            let len = seal(&mut b, end, records, &header, &key());
            b[field::VERSION] = version;
            // Re-tag after the version edit, so only the content is wrong.
            let mut mac = key().mac();
            mac.update(&b[..end]);
            b[end..len].copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
            Message::parse(&b[..len], &key()).err()
        };
        assert_eq!(hostile(&|_| {}, 2), Some(Rejected::Malformed));
        assert_eq!(hostile(&|_| {}, 0), Some(Rejected::Malformed));
        assert_eq!(hostile(&|b| b[HEADER_LEN] = 9, 1), Some(Rejected::Malformed));
        assert_eq!(hostile(&|b| b[HEADER_LEN + KEY_LEN] = 8, 1), Some(Rejected::Malformed));
        assert_eq!(hostile(&|b| b[field::KIND] = 2, 1), Some(Rejected::Malformed));
        assert_eq!(hostile(&|b| b[field::VERSION] = 2, 1), Some(Rejected::Malformed));
        assert_eq!(hostile(&|_| {}, 1), None);
    }

    #[test]
    fn keys_outside_the_allowed_lengths_are_refused() {
        assert!(Key::new(&KEY[..KEY_MIN - 1]).is_none());
        assert!(Key::new(&KEY[..KEY_MIN]).is_some());
        assert!(Key::new(&[7; KEY_MAX]).is_some());
        assert!(Key::new(&[7; KEY_MAX + 1]).is_none());
    }
}
