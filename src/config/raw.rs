//! The JSON shape of a config file, as serde-json-core reads it: strings stay borrowed text and
//! numbers stay wide, so that [`super::validate`] can reject bad values with the field's path
//! instead of serde's pathless error.

use core::fmt;
use heapless::Vec;
use serde::de::{Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::board;

/// A list that keeps up to `N` items and counts the rest, so that a list longer than the board
/// holds is reported with its path and its length rather than as an anonymous parse error.
#[derive(Debug)]
pub struct Bounded<T, const N: usize> {
    pub items: Vec<T, N>,
    pub len: usize,
}

impl<T, const N: usize> Default for Bounded<T, N> {
    fn default() -> Self {
        Self { items: Vec::new(), len: 0 }
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Bounded::default();
        Self::deserialize_in_place(deserializer, &mut out)?;
        Ok(out)
    }

    fn deserialize_in_place<D: Deserializer<'de>>(deserializer: D, place: &mut Self) -> Result<(), D::Error> {
        struct SeqVisitor<'p, T, const N: usize>(&'p mut Bounded<T, N>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for SeqVisitor<'_, T, N> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                let out = self.0;
                out.items.clear();
                out.len = 0;
                while out.items.len() < N {
                    match seq.next_element()? {
                        Some(item) => {
                            // Cannot fail: the loop stops at capacity.
                            let _ = out.items.push(item);
                            out.len += 1;
                        }
                        None => return Ok(()),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.len += 1;
                }
                Ok(())
            }
        }
        deserializer.deserialize_seq(SeqVisitor(place))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawConfig<'a> {
    #[serde(borrow)]
    pub node_port_range: Option<&'a str>,
    #[serde(borrow, default)]
    pub nodes: Bounded<RawNode<'a>, { board::MAX_NODES }>,
    #[serde(borrow, default)]
    pub services: Bounded<RawService<'a>, { board::MAX_SERVICES }>,
    #[serde(borrow)]
    pub high_availability: Option<RawHighAvailability<'a>>,
    #[serde(borrow)]
    pub bfd: Option<RawBfd<'a>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawBfd<'a> {
    #[serde(borrow, default)]
    pub sessions: Bounded<RawBfdSession<'a>, { board::MAX_BFD_SESSIONS }>,
    pub shutdown_drain_millis: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawBfdSession<'a> {
    pub peer: Option<&'a str>,
    pub desired_min_tx_millis: Option<u32>,
    pub required_min_rx_millis: Option<u32>,
    pub detect_multiplier: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawHighAvailability<'a> {
    pub snat_address: Option<&'a str>,
    pub endpoint_gateway_address: Option<&'a str>,
    #[serde(borrow)]
    pub sync: Option<RawSync<'a>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawSync<'a> {
    pub key_file: Option<&'a str>,
    pub port: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawNode<'a> {
    pub name: Option<&'a str>,
    pub tap: Option<&'a str>,
    pub bridge: Option<&'a str>,
    pub mac: Option<&'a str>,
    #[serde(borrow, default)]
    pub addresses: Bounded<&'a str, { board::MAX_ADDRESSES_PER_NODE }>,
    pub gateway: Option<&'a str>,
    pub metrics_port: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawService<'a> {
    pub name: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: Option<&'a str>,
    pub external_traffic_policy: Option<&'a str>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<&'a str>,
    #[serde(rename = "externalIPs", borrow, default)]
    pub external_ips: Bounded<&'a str, { board::MAX_EXTERNAL_IPS_PER_SERVICE }>,
    pub session_affinity: Option<&'a str>,
    pub session_affinity_config: Option<RawAffinityConfig>,
    #[serde(borrow, default)]
    pub load_balancer_source_ranges: Bounded<&'a str, { board::MAX_SOURCE_RANGES_PER_SERVICE }>,
    pub health_check_node_port: Option<u32>,
    #[serde(borrow)]
    pub health_check: Option<RawHealthCheck<'a>>,
    #[serde(borrow, default)]
    pub ports: Bounded<RawPort<'a>, { board::MAX_PORTS_PER_SERVICE }>,
    #[serde(borrow, default)]
    pub endpoints: Bounded<RawEndpoint<'a>, { board::MAX_ENDPOINTS_PER_SERVICE }>,
}

#[derive(Debug, serde::Deserialize)]
pub struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<RawClientIp>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawClientIp {
    pub timeout_seconds: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawHealthCheck<'a> {
    pub interval_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
    #[serde(rename = "type")]
    pub kind: Option<&'a str>,
    pub port: Option<u32>,
    pub path: Option<&'a str>,
    pub host: Option<&'a str>,
    #[serde(default)]
    pub expected_statuses: Bounded<u32, { super::HTTP_STATUSES }>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawPort<'a> {
    pub name: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub port: Option<u32>,
    pub target_port: Option<u32>,
    pub node_port: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEndpoint<'a> {
    pub ip: Option<&'a str>,
    pub node_name: Option<&'a str>,
    pub weight: Option<u32>,
    pub ready: Option<bool>,
    pub terminating: Option<bool>,
}
