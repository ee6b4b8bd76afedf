//! Endpoint health: the up/down thresholds of active checks, and the answer of a service's
//! healthCheckNodePort.

use core::fmt::Write;

use crate::text::SliceWriter;

/// Counts results in a row and says when an endpoint goes down or comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    pub up: bool,
    streak: u32,
}

impl Tracker {
    /// A tracker that starts where the engine has the endpoint: up at start (a gateway that
    /// starts serves at once and takes out what fails), as it was across a reload.
    pub const fn starting(up: bool) -> Tracker {
        Tracker { up, streak: 0 }
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { healthy_threshold } else { unhealthy_threshold };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// The HTTP answer of a healthCheckNodePort, as kube-proxy gives it: 200 with at least one
/// local endpoint, 503 without, and the count in the body. Returns the length written to `out`,
/// or `None` when `out` is too small.
pub fn render_response(service: &str, local_endpoints: usize, out: &mut [u8]) -> Option<usize> {
    let status = if local_endpoints > 0 { "200 OK" } else { "503 Service Unavailable" };
    let mut body = [0u8; 160];
    let mut b = SliceWriter::new(&mut body);
    write!(b, "{{\"service\":{{\"name\":\"{service}\"}},\"localEndpoints\":{local_endpoints}}}").ok()?;
    let body_len = b.len();
    let mut w = SliceWriter::new(out);
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    w.write_str(core::str::from_utf8(&body[..body_len]).ok()?).ok()?;
    Some(w.len())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn thresholds() {
        let mut t = Tracker::starting(true);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), None, "a success breaks the run of failures");
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), Some(false));
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), Some(true));
        let mut down = Tracker::starting(false);
        assert_eq!(down.record(true, 1, 3), Some(true), "a tracker that starts down comes up on successes");
    }

    #[test]
    fn response_like_kube_proxy() {
        let mut out = [0u8; 256];
        let n = render_response("web", 1, &mut out).unwrap();
        let text = core::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"service\":{\"name\":\"web\"},\"localEndpoints\":1}"));
        assert!(text.contains("Content-Length: 45\r\n"));
        let n = render_response("web", 0, &mut out).unwrap();
        assert!(core::str::from_utf8(&out[..n]).unwrap().starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert_eq!(render_response("web", 1, &mut [0u8; 20]), None);
    }
}
