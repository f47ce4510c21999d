//! Builds `ip:` blocks (routes and listeners) into the IP-rules feature's spec: every
//! CIDR parsed, with its path.

use super::{Errors, wire};
use crate::ip_rules::{IpRulesSpec, parse_net};

pub(super) fn ip_rules(e: &mut Errors, path: &str, r: &wire::IpRules) -> Option<IpRulesSpec> {
    let before = e.len();
    if r.allow.is_empty() && r.deny.is_empty() {
        e.push(path, "an ip block needs allow or deny (CIDRs or addresses)");
    }
    let mut list = |field: &str, raw: &[String]| {
        raw.iter()
            .enumerate()
            .filter_map(|(i, n)| e.take(format!("{path}.{field}[{i}]"), parse_net(n)))
            .collect::<Vec<_>>()
    };
    let allow = list("allow", &r.allow);
    let deny = list("deny", &r.deny);
    (e.len() == before).then_some(IpRulesSpec { allow, deny })
}
