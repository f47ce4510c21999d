//! Owns IP allow/deny rules (`ip: {allow, deny}` on listeners and routes): the typed
//! spec, its compiled form (sorted, merged address ranges searched in O(log n)), and the
//! request-phase check on the client address the gateway derives (`client_ip`).
//!
//! Deny wins: an address in `deny` is refused whatever `allow` says; with a non-empty
//! `allow`, an address in none of its networks is refused too. An unknown client address
//! (no IP peer) passes only rules without `allow`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

/// A validated `ip:` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRulesSpec {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Disjoint, sorted address ranges (inclusive) of one family, as integers.
#[derive(Debug, Default)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn search<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or below `x` is the only one that can hold it.
    let i = ranges.partition_point(|(start, _)| *start <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl Ranges {
    fn build(nets: &[IpNet]) -> Ranges {
        let mut r = Ranges::default();
        for net in IpNet::aggregate(&nets.to_vec()) {
            match net {
                IpNet::V4(n) => {
                    r.v4.push((u32::from(n.network()), u32::from(n.broadcast())))
                }
                IpNet::V6(n) => {
                    r.v6.push((u128::from(n.network()), u128::from(n.broadcast())))
                }
            }
        }
        r.v4.sort_unstable();
        r.v6.sort_unstable();
        r
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => search(&self.v4, u32::from(a)),
            IpAddr::V6(a) => search(&self.v6, u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Compiled rules; immutable, shared by the runtime.
#[derive(Debug)]
pub struct IpRules {
    allow: Ranges,
    deny: Ranges,
    spec: IpRulesSpec,
}

impl IpRules {
    pub fn compile(spec: &IpRulesSpec) -> IpRules {
        IpRules {
            allow: Ranges::build(&spec.allow),
            deny: Ranges::build(&spec.deny),
            spec: spec.clone(),
        }
    }

    /// Whether a request from `ip` may pass. IPv4-mapped IPv6 addresses (an IPv4 client
    /// of a `[::]` listener) are checked as the IPv4 address they are.
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty();
        };
        if self.deny.contains(ip) {
            return false;
        }
        self.allow.is_empty() || self.allow.contains(ip)
    }

    /// For `/admin/routes` and `explain`.
    pub fn describe(&self) -> Value {
        let list = |v: &[IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        json!({"allow": list(&self.spec.allow), "deny": list(&self.spec.deny)})
    }
}

/// Parse one CIDR (or a bare address, as a /32 or /128). A network written with host
/// bits set (`10.0.0.1/8`) is refused: it usually means a typo, and silently widening or
/// narrowing an access rule is worse than an error.
pub fn parse_net(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = raw.parse().map_err(|_| {
        format!("invalid CIDR {raw:?}: expected e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{raw:?} has host bits set beyond the /{} prefix; did you mean {}?",
            net.prefix_len(),
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests;
