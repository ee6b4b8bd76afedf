//! What the engine did with each frame, counted: one counter per drop reason, so that every
//! dropped frame is explained.

reasons! {
    /// Why a frame was dropped.
    pub enum DropReason {
        /// Shorter than the headers it announces.
        Truncated => "truncated",
        /// An IPv4 header that is not one (version, header length, total length).
        Malformed => "malformed",
        /// IPv4 header checksum wrong.
        BadChecksum => "bad_checksum",
        /// An IPv4 packet longer than the link's MTU (1500 bytes), which no host on it may send.
        Oversized => "oversized",
        /// TCP or UDP from or to port 0, which no stack uses.
        ZeroPort => "zero_port",
        /// A TCP flag combination no stack sends (SYN with FIN, no ACK on a FIN, a null or
        /// Christmas-tree scan): the combinations nf_conntrack calls invalid.
        BadTcpFlags => "bad_tcp_flags",
        /// Unicast to another MAC (a bridge floods those to every port).
        OtherMac => "other_mac",
        /// IPv4 to an address that is not the node's: the gateway is not a router.
        OtherAddress => "other_address",
        /// Neither IPv4 nor ARP.
        UnsupportedEthertype => "unsupported_ethertype",
        /// Broadcast, multicast or unspecified source address, or one of the node's own (a node
        /// address, clusterIP or externalIP) arriving from the wire.
        MartianSource => "martian_source",
        /// A later fragment of a datagram whose first fragment did not pass (or passed too long ago).
        Fragment => "fragment",
        /// TCP segment other than a SYN to a service port, for no tracked flow (with high
        /// availability: other than a SYN or a plain mid-stream segment, which is taken up).
        TcpNoFlow => "tcp_no_flow",
        /// A FIN or RST of a tracked flow far from its sender's sequence: a blind attempt to end it.
        TcpOutOfWindow => "tcp_out_of_window",
        /// A service with no ready endpoint: answered with TCP RST or ICMP port unreachable (within
        /// the rate limit).
        NoEndpoint => "no_endpoint",
        /// externalTrafficPolicy Local and no ready endpoint on this node.
        NoLocalEndpoint => "no_local_endpoint",
        /// The client is outside the service's loadBalancerSourceRanges.
        SourceRange => "source_range",
        /// TTL ran out: answered with ICMP time exceeded (not an ICMP error, and within the rate
        /// limit).
        TtlExceeded => "ttl_exceeded",
        /// An ICMP error about a tracked flow that is not addressed to the host that sent the
        /// quoted packet, or whose checksum is wrong.
        BadIcmpError => "bad_icmp_error",
        /// The connection table is full of live flows.
        ConntrackFull => "conntrack_full",
        /// No free SNAT source port towards the endpoint.
        SnatExhausted => "snat_exhausted",
        /// The endpoint is on none of the node's subnets and the node has no gateway.
        NoRoute => "no_route",
        /// The next hop did not answer ARP in time, or too many frames were waiting for it.
        NeighborMissing => "neighbor_missing",
        /// Service traffic reaching a standby gateway of a high-availability pair (the active one
        /// carries it).
        Standby => "standby",
        /// A BFD control packet refused (its reason in the BFD counters).
        Bfd => "bfd",
        /// The TAP device would not take the frame.
        TxBusy => "tx_busy",
    }
}

/// Totals since start. Every frame received ends in exactly one of the others: forwarded, to
/// the stack, answered, or dropped with a reason (a reply to a dropped frame, an RST or an ICMP
/// error, counts as its drop); a frame waiting for ARP is counted when it leaves. So at any
/// moment `received == forwarded + to_stack + answered + drops + frames waiting`, leaving out
/// `tx_busy`, which counts frames already counted that the TAP then refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames the engine was given.
    pub received: u64,
    pub drops: [u64; DropReason::ALL.len()],
    /// Frames rewritten and sent on.
    pub forwarded: u64,
    /// Frames handed to the node's own stack (ARP, ping, its sockets).
    pub to_stack: u64,
    /// ARP requests for the services' virtual IPs, answered by the engine.
    pub answered: u64,
    /// Flows created.
    pub new_flows: u64,
    /// RSTs of tracked flows near their sender's sequence but not at it: passed on, the flow
    /// kept (the endpoint answers with a challenge ACK, RFC 5961).
    pub resets_not_exact: u64,
    /// Mid-stream TCP segments of untracked tuples taken up as established flows (with high
    /// availability: flows another gateway carried).
    pub flows_picked_up: u64,
    /// UDP flows taken out because their endpoint stopped taking new flows (it failed its
    /// health checks, or a reload took it out or made it not ready).
    pub udp_flows_flushed: u64,
    /// RSTs and ICMP errors not sent because of the rate limit (their frames are counted
    /// dropped under their reason).
    pub replies_suppressed: u64,
}

impl Counters {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}
