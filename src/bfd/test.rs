use super::*;

const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
const CONFIG: BfdSession =
    BfdSession { peer: PEER, desired_min_tx_millis: 100, required_min_rx_millis: 100, detect_multiplier: 3 };

fn session() -> Session {
    let mut s = Session::new(&CONFIG, Ipv4Addr::new(10, 77, 0, 1), 49152, 0xabcd);
    s.peer_mac = Some([2, 0, 0, 0, 0, 0xfe]);
    s
}

/// What the router (BIRD's defaults: 100 ms, multiplier 5) sends in `state`.
fn from_peer(state: State, your_disc: u32) -> Control {
    Control {
        diag: 0,
        state,
        poll: false,
        final_: false,
        demand: false,
        detect_mult: 5,
        my_disc: 77,
        your_disc,
        desired_min_tx_us: 100_000,
        required_min_rx_us: 10_000,
    }
}

/// Brought up by the three-way handshake at time 0; the poll it starts is answered.
fn up() -> Session {
    let mut s = session();
    s.receive(&from_peer(State::Down, 0), Millis(0));
    s.receive(&from_peer(State::Up, 0xabcd), Millis(0));
    let poll = s.transmit(Millis(0), || 0).unwrap();
    assert!(poll.poll);
    s.receive(&Control { final_: true, ..from_peer(State::Up, 0xabcd) }, Millis(0));
    s
}

#[test]
fn a_passive_session_is_silent_until_the_peer_speaks() {
    let mut s = session();
    assert_eq!(s.transmit(Millis(0), || 0), None);
    assert_eq!(s.next_deadline(), None);
    s.receive(&from_peer(State::Down, 0), Millis(5));
    let init = s.transmit(Millis(5), || 0).expect("Down -> Init answers at once");
    assert_eq!((init.state, init.your_disc, init.my_disc), (State::Init, 77, 0xabcd));
    assert_eq!(init.desired_min_tx_us, 1_000_000, "slow until up (RFC 5880 6.8.3)");
}

#[test]
fn the_three_way_handshake_brings_it_up_and_a_poll_announces_the_fast_rate() {
    let mut s = session();
    s.receive(&from_peer(State::Down, 0), Millis(0));
    assert_eq!(s.state, State::Init);
    s.receive(&from_peer(State::Up, 0xabcd), Millis(10));
    assert_eq!(s.state, State::Up);
    let p = s.transmit(Millis(10), || 0).expect("Init -> Up answers at once");
    assert_eq!((p.state, p.poll, p.final_, p.desired_min_tx_us), (State::Up, true, false, 100_000));
    // Polls go on until the peer's final.
    assert!(s.transmit(Millis(200), || 0).unwrap().poll);
    s.receive(&Control { final_: true, ..from_peer(State::Up, 0xabcd) }, Millis(250));
    assert!(!s.transmit(Millis(400), || 0).unwrap().poll);
    assert_eq!(s.counters.up_transitions, 1);
}

#[test]
fn a_peers_poll_is_answered_at_once_with_the_final_bit() {
    let mut s = up();
    s.transmit(Millis(0), || 0);
    s.receive(&Control { poll: true, ..from_peer(State::Up, 0xabcd) }, Millis(20));
    let f = s.transmit(Millis(20), || 0).expect("a poll is answered at once, not 75 ms on");
    assert!(f.final_ && !f.poll);
}

#[test]
fn packets_go_at_the_slower_of_our_rate_and_the_peers_with_jitter() {
    let mut s = up();
    s.transmit(Millis(1000), || 0);
    // 75 % of max(100 ms desired, 10 ms the peer takes) at the lowest jitter; 100 % at the highest.
    assert_eq!(s.transmit(Millis(1074), || 0), None);
    assert!(s.transmit(Millis(1075), || 25).is_some());
    assert_eq!(s.transmit(Millis(1174), || 0), None);
    assert!(s.transmit(Millis(1175), || 0).is_some());
    // The peer asks for no more than one in 300 ms.
    s.receive(&Control { required_min_rx_us: 300_000, ..from_peer(State::Up, 0xabcd) }, Millis(1200));
    assert!(s.transmit(Millis(1250), || 0).is_some(), "due at 1175 + 75");
    assert_eq!(s.transmit(Millis(1474), || 0), None);
    assert!(s.transmit(Millis(1475), || 0).is_some());
    // With a multiplier of 1, never later than 90 %.
    let mut one = Session::new(&BfdSession { detect_multiplier: 1, ..CONFIG }, Ipv4Addr::new(10, 77, 0, 1), 49152, 9);
    one.peer_mac = s.peer_mac;
    one.receive(&from_peer(State::Down, 0), Millis(0));
    one.transmit(Millis(0), || 25);
    assert!(one.transmit(Millis(900), || 0).is_some(), "1 s slow rate at 90 %");
}

#[test]
fn a_silent_peer_is_down_after_the_detection_time() {
    let mut s = up();
    // 5 (its multiplier) x max(100 ms we take, 100 ms it sends at) = 500 ms.
    assert_eq!(s.detection_time_us(), 500_000);
    s.tick(Millis(499));
    assert_eq!(s.state, State::Up);
    s.tick(Millis(500));
    assert_eq!((s.state, s.diag, s.remote_disc), (State::Down, Diag::DetectionTimeExpired, 0));
    assert_eq!(s.counters.down_transitions, 1);
    let down = s.transmit(Millis(500), || 0).unwrap();
    assert_eq!((down.state, down.your_disc, down.diag), (State::Down, 0, 1));
}

#[test]
fn the_peer_going_down_or_admin_down_takes_the_session_down() {
    for remote in [State::Down, State::AdminDown] {
        let mut s = up();
        s.receive(&from_peer(remote, 0xabcd), Millis(50));
        assert_eq!((s.state, s.diag), (State::Down, Diag::NeighborSignaledDown));
    }
}

#[test]
fn admin_down_is_sent_at_once_ignores_the_peer_and_ends_in_down() {
    let mut s = up();
    s.transmit(Millis(0), || 0);
    s.set_admin_down(true, Millis(30));
    let p = s.transmit(Millis(30), || 0).unwrap();
    assert_eq!((p.state, p.diag, p.desired_min_tx_us), (State::AdminDown, 7, 1_000_000));
    s.receive(&from_peer(State::Up, 0xabcd), Millis(40));
    assert_eq!(s.transmit(Millis(40), || 0), None, "the peer's Up is not answered");
    assert_eq!(s.state, State::AdminDown);
    s.tick(Millis(10_000));
    assert_eq!(s.state, State::AdminDown, "no detection timer while admin down");
    s.set_admin_down(false, Millis(10_000));
    assert_eq!(s.state, State::Down);
    s.receive(&from_peer(State::Down, 0xabcd), Millis(10_010));
    s.receive(&from_peer(State::Up, 0xabcd), Millis(10_020));
    assert_eq!(s.state, State::Up);
}

#[test]
fn a_peer_that_asks_for_no_packets_gets_none_but_the_final_it_is_owed() {
    let mut s = up();
    s.transmit(Millis(0), || 0);
    s.receive(&Control { required_min_rx_us: 0, ..from_peer(State::Up, 0xabcd) }, Millis(10));
    assert_eq!(s.transmit(Millis(5000), || 0), None);
    assert_eq!(s.next_deadline(), Some(Millis(510)), "only the detection timer: no busy wake-ups");
    s.receive(&Control { required_min_rx_us: 0, poll: true, ..from_peer(State::Up, 0xabcd) }, Millis(20));
    assert!(s.transmit(Millis(20), || 0).unwrap().final_);
    assert_eq!(s.transmit(Millis(5000), || 0), None);
}
