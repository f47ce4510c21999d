//! Owns finding the client's address: the peer, or, behind trusted proxies, the hop
//! their forwarding headers name. Rate limits, consistent hashing and the access log
//! all use this one value.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// untrusted hop of `X-Forwarded-For` (or `Forwarded: for=`).
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for element in v.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k.eq_ignore_ascii_case("for")
                {
                    let val = val.trim_matches('"');
                    let val = val
                        .strip_prefix('[')
                        .and_then(|v| v.split(']').next())
                        .unwrap_or(val);
                    let val = if val.matches(':').count() == 1 {
                        val.split(':').next().unwrap_or(val)
                    } else {
                        val
                    };
                    if let Ok(ip) = val.parse() {
                        hops.push(ip);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            hops.extend(v.split(',').filter_map(|h| h.trim().parse::<IpAddr>().ok()));
        }
    }
    // Right to left: the first address not of our own proxies is the client.
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_honours_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        let stranger: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            resolve(Some(proxy), &h, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            resolve(Some(stranger), &h, &trusted),
            Some(stranger),
            "untrusted peers cannot claim an address"
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.9.9.9"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            resolve(Some(proxy), &f, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            resolve(Some(proxy), &HeaderMap::new(), &trusted),
            Some(proxy)
        );
    }
}
