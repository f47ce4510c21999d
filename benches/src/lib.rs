//! Owns the shared fixtures of the gateway micro-benchmarks: a generator of realistic
//! route configs of any size and the requests that exercise each lookup path.
//!
//! Routes come in blocks of 20 (see [`SLOTS`]), one block per exact host
//! `h{b}.example.com`, so a config of `n` routes has about `n / 20` exact hosts. Every path
//! carries its block number, which keeps match criteria unique across the whole file.
//! The mix per block is 8 prefix (40%), 7 exact (35%), 4 template (20%) and 1 regex (5%)
//! routes; 2 of them sit on one of [`WILDCARD_HOSTS`] wildcard hosts and 3 (4 in every
//! fifth block) have no host; some carry method, header or query matchers.
//!
//! The first ten slots of a block hold one route of every kind a request fixture aims at,
//! so even the 10-route config has a hit for each.

use std::fmt::Write as _;

use gateway::router::RequestView;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Number of distinct wildcard hosts (`*.w{j}.example.com`).
pub const WILDCARD_HOSTS: usize = 4;

/// Routes per block (and per exact host).
pub const BLOCK: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Template,
    Regex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostClass {
    Exact,
    Wildcard,
    None,
}

/// One route of a block: `{b}` in `path` is replaced by the block number; `extra` is
/// spliced into the route's `match` mapping as written.
struct Slot {
    kind: Kind,
    host: HostClass,
    path: &'static str,
    extra: &'static str,
}

const fn slot(kind: Kind, host: HostClass, path: &'static str, extra: &'static str) -> Slot {
    Slot {
        kind,
        host,
        path,
        extra,
    }
}

/// The 20 routes of a block. Slots 0-4 are the fixtures' targets (see [`requests`]).
const SLOTS: [Slot; BLOCK] = {
    use HostClass as H;
    use Kind as K;
    [
        slot(K::Prefix, H::Exact, "/svc{b}/api/v2/orders/items", ""),
        slot(K::Exact, H::Exact, "/svc{b}/api/v1/status", ""),
        slot(
            K::Template,
            H::Exact,
            "/svc{b}/users/{id}/orders/{order}",
            "",
        ),
        slot(
            K::Prefix,
            H::Wildcard,
            "/svc{b}/tenant",
            "headers: [{name: x-tenant, exact: acme}]",
        ),
        // Host-less in every fifth block, see `route_host`.
        slot(
            K::Regex,
            H::Exact,
            "/svc{b}/reports/[0-9]{4}-[0-9]{2}/[a-z]+",
            "",
        ),
        slot(K::Exact, H::None, "/svc{b}/healthz", ""),
        slot(K::Prefix, H::Exact, "/svc{b}/api", ""),
        slot(
            K::Template,
            H::Exact,
            "/svc{b}/users/{id}",
            "methods: [GET, HEAD]",
        ),
        slot(K::Exact, H::Exact, "/svc{b}/api/v1/me", "methods: [GET]"),
        slot(K::Prefix, H::None, "/svc{b}/static", ""),
        slot(K::Prefix, H::Exact, "/svc{b}/api/v1", ""),
        slot(
            K::Exact,
            H::Exact,
            "/svc{b}/api/v1/login",
            "methods: [POST]",
        ),
        slot(K::Template, H::None, "/svc{b}/files/{*path}", ""),
        slot(
            K::Prefix,
            H::Exact,
            "/svc{b}/api/v2",
            "headers: [{name: x-canary, exact: '1'}]",
        ),
        slot(K::Exact, H::Wildcard, "/svc{b}/tenant/whoami", ""),
        slot(
            K::Prefix,
            H::Exact,
            "/svc{b}/admin",
            "headers: [{name: authorization, present: true}]",
        ),
        slot(
            K::Exact,
            H::Exact,
            "/svc{b}/api/v2/orders",
            "methods: [GET, POST]",
        ),
        slot(
            K::Template,
            H::Exact,
            "/svc{b}/api/v2/orders/{id}/items/{item}",
            "",
        ),
        slot(
            K::Prefix,
            H::Exact,
            "/svc{b}/docs",
            "query: [{name: version, present: true}]",
        ),
        slot(K::Exact, H::Exact, "/svc{b}/metrics", ""),
    ]
};

fn route_host(slot: &Slot, block: usize) -> HostClass {
    if slot.kind == Kind::Regex && block % 5 == 4 {
        HostClass::None
    } else {
        slot.host
    }
}

/// A gateway config with `n` routes (see the module doc for the mix).
pub fn routes_yaml(n: usize) -> String {
    let mut out = String::with_capacity(200 + n * 130);
    out.push_str(
        "listeners: [{name: main, address: '127.0.0.1:1'}]\n\
         upstreams:\n  u: {endpoints: [{address: '127.0.0.1:9'}]}\nroutes:\n",
    );
    for i in 0..n {
        let (block, s) = (i / BLOCK, &SLOTS[i % BLOCK]);
        let path = s.path.replace("{b}", &block.to_string());
        let kind = match s.kind {
            Kind::Exact => "exact",
            Kind::Prefix => "prefix",
            Kind::Template => "template",
            Kind::Regex => "regex",
        };
        let hosts = match route_host(s, block) {
            HostClass::Exact => format!("hosts: ['h{block}.example.com'], "),
            HostClass::Wildcard => {
                format!("hosts: ['*.w{}.example.com'], ", block % WILDCARD_HOSTS)
            }
            HostClass::None => String::new(),
        };
        let extra = if s.extra.is_empty() {
            String::new()
        } else {
            format!(", {}", s.extra)
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "  - {{id: r{i}, match: {{{hosts}path: {{{kind}: '{path}'}}{extra}}}, upstream: u}}"
        );
    }
    out
}

/// An owned request; [`Request::view`] borrows it as the router sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl Request {
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}

/// One benchmark request and the route id it must reach (`None`: a 404).
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub request: Request,
    pub expect: Option<String>,
}

/// The block the fixtures aim at: the middle of the table, so that neither the first
/// nor the last entry of any list is favoured.
fn target_block(n: usize) -> usize {
    (n / BLOCK) / 2
}

/// Requests for a config made by `routes_yaml(n)`: exact hit, deep prefix hit, template
/// hit (two captures), wildcard-host hit (with a header matcher), regex hit and a miss.
///
/// # Panics
/// If `n < 10`: smaller configs do not contain every kind of route.
pub fn requests(n: usize) -> Vec<Fixture> {
    assert!(
        n >= 10,
        "requests() needs routes_yaml(n) with n >= 10, got {n}"
    );
    let b = target_block(n);
    let id = |slot: usize| Some(format!("r{}", b * BLOCK + slot));
    let host = format!("h{b}.example.com");
    let get = |host: &str, path: String| Request {
        method: Method::GET,
        host: host.to_owned(),
        path,
        query: None,
        headers: HeaderMap::new(),
    };
    let mut tenant = get(
        &format!("acme.w{}.example.com", b % WILDCARD_HOSTS),
        format!("/svc{b}/tenant/profile/settings"),
    );
    tenant.headers.insert(
        HeaderName::from_static("x-tenant"),
        HeaderValue::from_static("acme"),
    );
    tenant.headers.insert(
        HeaderName::from_static("user-agent"),
        HeaderValue::from_static("bench/1.0"),
    );
    let regex_host = if b % 5 == 4 { "" } else { host.as_str() };
    vec![
        Fixture {
            name: "exact",
            request: get(&host, format!("/svc{b}/api/v1/status")),
            expect: id(1),
        },
        Fixture {
            name: "prefix_deep",
            request: get(&host, format!("/svc{b}/api/v2/orders/items/12345/lines/7")),
            expect: id(0),
        },
        Fixture {
            name: "template",
            request: get(&host, format!("/svc{b}/users/42/orders/1001")),
            expect: id(2),
        },
        Fixture {
            name: "wildcard_host",
            request: tenant,
            expect: id(3),
        },
        Fixture {
            name: "regex",
            request: get(regex_host, format!("/svc{b}/reports/2024-05/daily")),
            expect: id(4),
        },
        Fixture {
            name: "miss",
            request: get(&host, format!("/svc{b}/no/such/page")),
            expect: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::router::reference_find;

    #[test]
    fn configs_compile_and_fixtures_reach_their_routes() {
        for n in [10, 20, 99, 1_000, 2_345] {
            let spec = gateway::config::parse(&routes_yaml(n), "bench.yaml")
                .unwrap_or_else(|e| panic!("routes_yaml({n}) does not parse:\n{e}"));
            assert_eq!(spec.routes.len(), n);
            let runtime = gateway::runtime::compile(&spec, 1, None).unwrap();
            let table = &runtime.table;
            for f in requests(n) {
                let view = f.request.view();
                let got = table.find(&view).map(|h| &*runtime.routes[h.route].id);
                assert_eq!(got, f.expect.as_deref(), "n={n} fixture {}", f.name);
                let reference = reference_find(table.matchers(), &view);
                assert_eq!(
                    table.find(&view).map(|h| h.route),
                    reference,
                    "n={n} fixture {}: table and reference disagree",
                    f.name
                );
            }
        }
    }

    #[test]
    fn mix_matches_the_documented_shares() {
        let yaml = routes_yaml(1_000);
        let count = |needle: &str| yaml.matches(needle).count();
        assert_eq!(count("{prefix: "), 400);
        assert_eq!(count("{exact: "), 350);
        assert_eq!(count("{template: "), 200);
        assert_eq!(count("{regex: "), 50);
        assert_eq!(count("hosts: ['*."), 100);
        // 3 host-less slots per block, plus the regex of every fifth block.
        assert_eq!(count("match: {path:"), 150 + 10);
    }
}
