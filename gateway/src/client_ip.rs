//! Owns who the client is and the forwarding headers that say so. One configured
//! source (`server.client_ip.source`) names the client behind trusted proxies:
//! `x_forwarded_for`, `forwarded` (RFC 7239 `for=`), `x_real_ip`, or `peer` (the TCP
//! peer, headers ignored). Chains are walked from the right, the hop nearest to us,
//! and the walk stops at the first address that is not a trusted proxy: that is the
//! client. `ip:port` and `[v6]:port` hops are read; a hop that is not an address at all
//! (`unknown`, `_hidden`, garbage) ends the walk too, and the client is then the
//! trusted proxy that reported it, so a client cannot pick a fresh identity per request.
//!
//! The proxy computes the client IP once per request and hands the same value to rate
//! limits, consistent hashing, IP rules and the access log. [`sanitize`] removes what an
//! untrusted peer may not say about itself before anything reads the request.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use pingora::http::RequestHeader;

/// Which header names the client behind a trusted proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// `X-Forwarded-For` (the default): what most load balancers append.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=` (RFC 7239).
    Forwarded,
    /// `X-Real-IP`, one address set by the proxy.
    XRealIp,
    /// The TCP peer; forwarding headers are never read.
    Peer,
}

impl Source {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "x_forwarded_for" => Ok(Source::XForwardedFor),
            "forwarded" => Ok(Source::Forwarded),
            "x_real_ip" => Ok(Source::XRealIp),
            "peer" => Ok(Source::Peer),
            other => Err(format!(
                "unknown client_ip source {other:?}: use x_forwarded_for, forwarded, x_real_ip or peer"
            )),
        }
    }
}

/// `server.client_ip`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIpSpec {
    pub source: Source,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// Headers that only a trusted proxy may set: from anyone else they are dropped before
/// routing. Rewrite headers (`X-Original-URL`, `X-Rewrite-URL`) make IIS, Symfony and
/// others serve another path than the one routed; port and prefix headers make
/// backends build URLs (and redirects) from them.
pub const PROXY_HEADERS: [&str; 9] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-original-url",
    "x-rewrite-url",
];

/// A hop of a forwarding chain: `ip`, `ip:port`, `[v6]`, `[v6]:port`, quoted or not.
/// IPv4-mapped IPv6 addresses become IPv4.
pub fn parse_hop(raw: &str) -> Option<IpAddr> {
    let hop = raw.trim().trim_matches('"');
    let ip = if let Some(rest) = hop.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok {
            return None;
        }
        inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?
    } else if let Some((host, port)) = hop.split_once(':')
        && !port.contains(':')
    {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)?
    } else {
        hop.parse::<IpAddr>().ok()?
    };
    Some(ip.to_canonical())
}

impl ClientIpSpec {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address (see the module doc); `None` only without a peer address
    /// (a Unix socket).
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if self.source == Source::Peer || !self.is_trusted(peer) {
            return Some(peer);
        }
        match self.source {
            Source::XForwardedFor => Some(self.walk(peer, hops(headers, "x-forwarded-for"))),
            Source::Forwarded => Some(self.walk(peer, forwarded_for(headers))),
            Source::XRealIp => Some(
                headers
                    .get_all("x-real-ip")
                    .iter()
                    .next_back()
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_hop)
                    .unwrap_or(peer),
            ),
            Source::Peer => Some(peer),
        }
    }

    /// Right to left: the first untrusted hop is the client; an unreadable one ends the
    /// walk at the trusted hop that reported it; all trusted: the leftmost.
    fn walk<'a>(&self, peer: IpAddr, hops: impl DoubleEndedIterator<Item = &'a str>) -> IpAddr {
        let mut client = peer;
        for hop in hops.rev() {
            match parse_hop(hop) {
                Some(ip) if !self.is_trusted(ip) => return ip,
                Some(ip) => client = ip,
                None => return client,
            }
        }
        client
    }
}

/// Every comma-separated entry of every line of `name`, in order.
fn hops<'a>(headers: &'a HeaderMap, name: &str) -> impl DoubleEndedIterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>()
        .into_iter()
}

/// The `for=` of each `Forwarded` element, in order; an element without one (or a line
/// that is not text) is an unreadable hop.
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    hops(headers, "forwarded").map(|element| {
        element
            .split(';')
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            })
            .unwrap_or("")
    })
}

/// `name` with `_` read as `-` (CGI, WSGI, PHP and Rack fold them so: `X_User_Id` is
/// `HTTP_X_USER_ID`, the same as `X-User-Id`).
fn folded(name: &str) -> Option<String> {
    name.contains('_').then(|| name.replace('_', "-"))
}

/// Before anything reads the request: drop headers whose name, with `_` read as `-`, is
/// an identity header or a proxy header (they can only be spoofs); and from a peer that
/// is not a trusted proxy, drop every [`PROXY_HEADERS`] entry (the gateway sets its own
/// `X-Forwarded-*` upstream).
pub fn sanitize(req: &mut RequestHeader, trusted_peer: bool, identity: &[HeaderName]) {
    let spoofs: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            folded(k.as_str()).is_some_and(|f| {
                identity.iter().any(|i| i.as_str() == f) || PROXY_HEADERS.contains(&f.as_str())
            })
        })
        .cloned()
        .collect();
    for name in &spoofs {
        req.remove_header(name);
    }
    if !trusted_peer {
        for name in PROXY_HEADERS {
            req.remove_header(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: Source) -> ClientIpSpec {
        ClientIpSpec {
            source,
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hops_with_ports_and_brackets() {
        let cases = [
            ("203.0.113.9", Some("203.0.113.9")),
            (" 203.0.113.9:4711 ", Some("203.0.113.9")),
            ("\"[2001:db8::1]:4711\"", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("::ffff:192.0.2.1", Some("192.0.2.1")),
            ("203.0.113.9:", None),
            ("203.0.113.9:x", None),
            ("[2001:db8::1]x", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_hop(raw), want.map(ip), "{raw:?}");
        }
    }

    #[test]
    fn x_forwarded_for_walks_from_the_right() {
        let s = spec(Source::XForwardedFor);
        let proxy = Some(ip("10.2.2.2"));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.1.1.1")],
                "198.51.100.7",
            ),
            (
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "198.51.100.7:80"),
                ],
                "198.51.100.7",
            ),
            // A client-written entry left of the real one never wins...
            (
                &[("x-forwarded-for", "1.1.1.1, 198.51.100.7")],
                "198.51.100.7",
            ),
            // ...not even behind an unreadable hop: it ends the walk at the proxy.
            (
                &[("x-forwarded-for", "1.1.1.1, garbage, 10.1.1.1")],
                "10.1.1.1",
            ),
            (
                &[("x-forwarded-for", "1.1.1.1, 203.0.113.9:1234")],
                "203.0.113.9",
            ),
            (&[("x-forwarded-for", "10.3.3.3, 10.1.1.1")], "10.3.3.3"),
            (&[], "10.2.2.2"),
            // Another source's header is not read.
            (&[("forwarded", "for=1.1.1.1")], "10.2.2.2"),
        ];
        for (h, want) in cases {
            assert_eq!(s.resolve(proxy, &headers(h)), Some(ip(want)), "{h:?}");
        }
        let stranger = Some(ip("192.0.2.5"));
        assert_eq!(
            s.resolve(stranger, &headers(&[("x-forwarded-for", "1.1.1.1")])),
            stranger,
            "untrusted peers cannot claim an address"
        );
    }

    #[test]
    fn forwarded_and_x_real_ip_and_peer() {
        let proxy = Some(ip("10.2.2.2"));
        let f = spec(Source::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https, for=10.9.9.9",
        )]);
        assert_eq!(f.resolve(proxy, &h), Some(ip("2001:db8::1")));
        let h = headers(&[("forwarded", "for=1.1.1.1, for=unknown, for=10.9.9.9")]);
        assert_eq!(f.resolve(proxy, &h), Some(ip("10.9.9.9")));
        let h = headers(&[("forwarded", "for=1.1.1.1, proto=https")]);
        assert_eq!(f.resolve(proxy, &h), Some(ip("10.2.2.2")));
        // The X-Forwarded-For a load balancer appended is not read with source forwarded.
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(f.resolve(proxy, &h), proxy);

        let r = spec(Source::XRealIp);
        let h = headers(&[("x-real-ip", "198.51.100.7")]);
        assert_eq!(r.resolve(proxy, &h), Some(ip("198.51.100.7")));
        assert_eq!(r.resolve(proxy, &headers(&[("x-real-ip", "nope")])), proxy);

        let p = spec(Source::Peer);
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(p.resolve(proxy, &h), proxy);
        assert_eq!(p.resolve(None, &h), None);
    }

    #[test]
    fn sanitize_drops_spoofs() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            ("X_User_Id", "alice"),
            ("x-user-id", "bob"),
            ("X_Forwarded_For", "1.1.1.1"),
            ("x-original-url", "/admin"),
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "host=evil"),
            ("x-other_header", "kept"),
        ] {
            req.append_header(k.to_owned(), v).unwrap();
        }
        let identity = [HeaderName::from_static("x-user-id")];
        let mut trusted = req.clone();
        sanitize(&mut trusted, true, &identity);
        let names = |r: &RequestHeader| {
            let mut n: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&trusted),
            [
                "forwarded",
                "x-forwarded-for",
                "x-original-url",
                "x-other_header",
                "x-user-id"
            ]
        );
        sanitize(&mut req, false, &identity);
        assert_eq!(names(&req), ["x-other_header", "x-user-id"]);
    }
}
