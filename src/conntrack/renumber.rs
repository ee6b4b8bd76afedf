//! Where a reload moved each service, port and endpoint: tracked flows name their owner by
//! index, and a new config numbers its services, ports and endpoints afresh.

use super::Owner;
use crate::board;

/// Index maps from a running config to the next one, computed off the packet thread; the table
/// applies them to each flow ([`super::Table::renumber`]). An index that left maps to
/// [`Renumbering::GONE`], and so does every index outside the board.
// Indices are u8, and GONE must be none of them.
const _: () =
    assert!(board::MAX_SERVICES < 255 && board::MAX_PORTS_PER_SERVICE < 255 && board::MAX_ENDPOINTS_PER_SERVICE < 255);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renumbering {
    service: [u8; board::MAX_SERVICES],
    port: [[u8; board::MAX_PORTS_PER_SERVICE]; board::MAX_SERVICES],
    endpoint: [[u8; board::MAX_ENDPOINTS_PER_SERVICE]; board::MAX_SERVICES],
}

impl Renumbering {
    /// The index of something that is not in the config (any more).
    pub const GONE: u8 = u8::MAX;

    /// Everything gone: the maps of a config that shares nothing with the running one.
    pub const fn new() -> Self {
        Renumbering {
            service: [Self::GONE; board::MAX_SERVICES],
            port: [[Self::GONE; board::MAX_PORTS_PER_SERVICE]; board::MAX_SERVICES],
            endpoint: [[Self::GONE; board::MAX_ENDPOINTS_PER_SERVICE]; board::MAX_SERVICES],
        }
    }

    /// Service `from` of the running config is service `to` of the next.
    pub fn service(&mut self, from: usize, to: usize) {
        if let Some(s) = self.service.get_mut(from) {
            *s = to as u8;
        }
    }

    /// Port `from` of running service `service` is port `to` of its successor.
    pub fn port(&mut self, service: usize, from: usize, to: usize) {
        if let Some(p) = self.port.get_mut(service).and_then(|ports| ports.get_mut(from)) {
            *p = to as u8;
        }
    }

    /// Endpoint `from` of running service `service` is endpoint `to` of its successor.
    pub fn endpoint(&mut self, service: usize, from: usize, to: usize) {
        if let Some(e) = self.endpoint.get_mut(service).and_then(|endpoints| endpoints.get_mut(from)) {
            *e = to as u8;
        }
    }

    /// Where service `s` went, if it stayed.
    pub fn service_of(&self, s: usize) -> Option<usize> {
        self.service.get(s).filter(|&&to| to != Self::GONE).map(|&to| usize::from(to))
    }

    /// Where endpoint `e` of service `s` went, if it stayed.
    pub fn endpoint_of(&self, s: usize, e: usize) -> Option<usize> {
        let to = *self.endpoint.get(s)?.get(e)?;
        (to != Self::GONE).then_some(usize::from(to))
    }

    /// Where port `p` of service `s` went, if it stayed.
    pub fn port_of(&self, s: usize, p: usize) -> Option<usize> {
        let to = *self.port.get(s)?.get(p)?;
        (to != Self::GONE).then_some(usize::from(to))
    }

    /// A flow's owner in the next config.
    pub fn owner(&self, o: Owner) -> Owner {
        let (s, p, e) = (usize::from(o.service_index), usize::from(o.port_index), usize::from(o.endpoint_index));
        // The port and endpoint maps of a service that left are all GONE.
        let gone_or = |i: Option<usize>| i.map_or(Self::GONE, |i| i as u8);
        Owner {
            service_index: gone_or(self.service_of(s)),
            port_index: gone_or(self.port_of(s, p)),
            endpoint_index: gone_or(self.endpoint_of(s, e)),
        }
    }
}

impl Default for Renumbering {
    fn default() -> Self {
        Self::new()
    }
}
