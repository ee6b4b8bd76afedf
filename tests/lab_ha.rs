//! Lab tests of high availability: the roles a gateway takes at keepalived's word, and the check
//! keepalived runs. They need root (see `common::lab_available`).

mod common;

use common::{Lab, sample};
use std::thread::sleep;
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.50";

/// One service on an external IP of the lab's subnet, the floating SNAT address 10.77.0.5, and
/// health checks quick enough for the test to see an endpoint go.
const HA: &str = r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                                 "addresses": ["10.77.0.1/24"], "metricsPort": 9100 }],
     "highAvailability": { "snatAddress": "10.77.0.5" },
     "services": [{ "name": "web", "externalIPs": ["10.77.0.50"],
                    "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                    "healthCheck": { "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 1 },
                    "endpoints": [{ "ip": "10.77.0.11" }] }] }"#;

fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_standby_gateway_serves_nothing_until_it_is_made_active_and_the_check_follows_the_endpoints() {
    let Some(lab) = Lab::started("a_standby_gateway_serves_nothing_until_it_is_made_active", "ha1", HA) else {
        return;
    };
    let status = said(&lab.nodegate("status", &[]));
    assert!(status.lines().next().is_some_and(|l| l.ends_with(", standby")), "{status}");
    assert_eq!(sample(&lab.scrape("client"), "nodegate_ha_active"), 0);
    assert_eq!(lab.backends("client", VIP, 80, 1), ["FAILED"], "a standby answers nothing for the VIP");

    let out = lab.nodegate("ha", &["active"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(said(&out), "active (was standby)\n");
    // The client asked for the VIP's MAC and got no answer; the gratuitous ARP answers it.
    let answers = lab.backends("client", VIP, 80, 3);
    assert_eq!(answers, ["web-frontend-1"; 3], "{}", lab.gateway_log());
    assert_eq!(sample(&lab.scrape("client"), "nodegate_ha_active"), 1);
    let neighbours = lab.ip("client", &["neigh", "show", VIP]);
    assert!(neighbours.contains("02:00:00:00:00:01"), "the client knows the VIP at the gateway's MAC: {neighbours}");
    // Taking the role again changes nothing.
    assert_eq!(said(&lab.nodegate("ha", &["active"])), "active (was active)\n");

    // keepalived's check: fit while the service has an endpoint taking new flows.
    let check = lab.nodegate("status", &["--check"]);
    assert!(check.status.success() && check.stdout.is_empty(), "{}", said(&check));
    lab.backend(1, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let check = loop {
        let check = lab.nodegate("status", &["--check"]);
        if !check.status.success() || Instant::now() > deadline {
            break check;
        }
        sleep(Duration::from_millis(200));
    };
    assert_eq!(check.status.code(), Some(1), "{}", said(&check));
    assert_eq!(said(&check), "service web has no endpoint taking new flows\n");
    lab.backend(1, true);

    assert_eq!(said(&lab.nodegate("ha", &["standby"])), "standby (was active)\n");
    assert_eq!(lab.backends("client", VIP, 80, 1), ["FAILED"], "a standby again: nothing for the VIP");
    let metrics = lab.scrape("client");
    assert!(sample(&metrics, r#"nodegate_drops_total{reason="standby"}"#) > 0, "{metrics}");
    let log = lab.gateway_log();
    assert!(
        log.contains("high availability: active now (was standby)") && log.contains("standby now (was active)"),
        "{log}"
    );
}
