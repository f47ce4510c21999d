//! Config errors: every problem at once, each with its path and line:column.

use super::*;

fn errors(text: &str) -> Vec<String> {
    parse(text, "gw.yaml")
        .err()
        .unwrap_or_else(|| panic!("expected errors for:\n{text}"))
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn valid_config_parses() {
    let spec = parse(
        "
listeners: [{name: main, address: '0.0.0.0:8080'}]
upstreams:
  users:
    endpoints: [{address: '127.0.0.1:3001', weight: 3}, {address: 'localhost:3002'}]
    load_balancing: round_robin
    connect_timeout: 500ms
routes:
  - id: users
    match: {hosts: ['*.example.com'], path: {prefix: /api/users}, methods: [GET]}
    rewrite: {strip_prefix: /api}
    request_headers: {set: {x-a: b}, add: {x-c: d}, remove: [x-e]}
    timeout: 5s
    upstream: users
  - id: old
    match: {path: {exact: /old}}
    redirect: {status: 308, scheme: https, path: /new}
  - id: ping
    match: {path: {exact: /ping}}
    direct_response: {status: 200, body: pong}
",
        "gw.yaml",
    )
    .unwrap();
    assert_eq!(spec.routes.len(), 3);
    assert_eq!(spec.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(spec.upstreams["users"].endpoints.len(), 2);
    assert_eq!(
        spec.routes[0].timeout,
        Some(std::time::Duration::from_secs(5))
    );
}

#[test]
fn reports_every_error_with_location() {
    let text = "\
listeners:
  - name: main
    address: not-an-address
upstreams:
  users:
    endpoints: [{address: 'nohost'}]
routes:
  - id: a
    match:
      path: {regex: '('}
    upstream: users
  - id: a
    match:
      path: {prefix: /x}
    upstream: missing
  - id: c
    match:
      path: {prefix: /y}
      methods: [get]
    timeout: forever
    upstream: users
";
    let got = errors(text);
    let want = [
        "gw.yaml:3:5: listeners[0].address: invalid address",
        "gw.yaml:6:18: upstreams.users.endpoints[0].address: invalid endpoint address",
        "gw.yaml:10:14: routes[0].match.path.regex: invalid regex",
        "gw.yaml:12:5: routes[1].id: duplicate route id \"a\"",
        "gw.yaml:15:5: routes[1].upstream: unknown upstream \"missing\"",
        "gw.yaml:19:7: routes[2].match.methods: method \"get\" must be upper case",
        "gw.yaml:20:5: routes[2].timeout: invalid duration",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
}

#[test]
fn shape_errors_come_from_serde_with_location() {
    let got = errors(
        "listeners: [{name: m, address: '127.0.0.1:1'}]\nroutes:\n  - id: a\n    match: {path: {prefix: /}, bogus: 1}\n    upstream: u\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("gw.yaml:4:"), "{}", got[0]);
    assert!(got[0].contains("routes[0].match"), "{}", got[0]);
    assert!(got[0].contains("unknown field `bogus`"), "{}", got[0]);

    let got = errors("listeners: [\n");
    assert!(got[0].starts_with("gw.yaml:"), "{}", got[0]);
    assert_eq!(errors("")[0], "gw.yaml: config file is empty");
}

#[test]
fn semantic_rules() {
    let head = "listeners: [{name: m, address: '127.0.0.1:1'}]
upstreams:
  u: {endpoints: [{address: '127.0.0.1:2'}]}
  h: {load_balancing: consistent_hash, endpoints: [{address: '127.0.0.1:2'}]}
  x: {load_balancing: round_robin, hash_on: path, endpoints: [{address: '127.0.0.1:2'}]}
  b: {load_balancing: consistent_hash, hash_on: 'query:q', endpoints: [{address: '127.0.0.1:2'}]}
  c: {load_balancing: consistent_hash, hash_on: client_ip, bounded_load: 0.5, endpoints: [{address: '127.0.0.1:2'}]}
  d: {load_balancing: fastest, endpoints: [{address: '127.0.0.1:2'}]}
routes:
";
    let cases = [
        (
            "  - {id: a, match: {path: {prefix: /}}}\n",
            "exactly one of upstream, split, redirect or direct_response",
        ),
        (
            "  - {id: a, upstream: u, redirect: {status: 301}}\n",
            "exactly one of upstream",
        ),
        (
            "  - {id: a, redirect: {status: 200}}\n",
            "redirect status 200",
        ),
        (
            "  - {id: a, split: [{upstream: u, weight: 0}]}\n",
            "at least one split weight",
        ),
        ("  - {id: 'bad id', upstream: u}\n", "route id \"bad id\""),
        (
            "  - {id: a, upstream: u, request_headers: {set: {content-length: '1'}}}\n",
            "managed by the proxy",
        ),
        (
            "  - {id: a, upstream: u, match: {path: {exact: /a, prefix: /b}}}\n",
            "only one of exact",
        ),
        (
            "  - {id: a, upstream: u, match: {headers: [{name: x}]}}\n",
            "set one of `exact`, `regex` or `present`",
        ),
        (
            "  - {id: a, upstream: u, match: {hosts: ['http://x']}}\n",
            "invalid host",
        ),
        (
            "  - {id: a, upstream: u, rewrite: {path: '/x/{id}'}}\n",
            "needs a `template` path match",
        ),
        (
            "  - {id: a, upstream: u, match: {path: {template: '/u/{id}'}}, rewrite: {path: '/x/{name}'}}\n",
            "{name} is not a capture",
        ),
        (
            "  - {id: a, direct_response: {status: 200}, timeout: 1s}\n",
            "only apply to routes with upstream or split",
        ),
        (
            "  - {id: a, upstream: u}\n  - {id: b, upstream: u}\n",
            "could never be selected",
        ),
        (
            "  - {id: a, upstream: u, timeout: 0s}\n",
            "greater than zero",
        ),
        (
            "  - {id: a, upstream: h}\n",
            "consistent_hash needs hash_on",
        ),
        (
            "  - {id: a, upstream: x}\n",
            "need load_balancing: consistent_hash",
        ),
        ("  - {id: a, upstream: b}\n", "invalid hash_on \"query:q\""),
        (
            "  - {id: a, upstream: c}\n",
            "bounded_load 0.5 must be above 1.0",
        ),
        (
            "  - {id: a, upstream: d}\n",
            "unknown load_balancing \"fastest\"",
        ),
    ];
    for (routes, want) in cases {
        let got = errors(&format!("{head}{routes}"));
        assert!(
            got.iter().any(|g| g.contains(want)),
            "{routes}: want {want:?} in {got:#?}"
        );
    }
    let no_listener = errors("routes: []\n");
    assert!(
        no_listener[0].contains("at least one listener"),
        "{no_listener:?}"
    );
}

#[test]
fn cache_blocks_parse_into_policies() {
    use crate::cache::{QueryKey, SetCookie};
    let spec = parse(
        "
server: {cache: {max_bytes: 1048576, lock_timeout: 2s}}
listeners: [{name: main, address: '0.0.0.0:8080'}]
upstreams: {u: {endpoints: [{address: '127.0.0.1:3001'}]}}
routes:
  - id: a
    match: {path: {prefix: /a}}
    upstream: u
    cache:
      default_ttl: 2h
      max_object_size: 1000
      set_cookie: strip
      key: {query: [page], headers: [X-Tenant], claims: [sub]}
  - id: b
    match: {path: {prefix: /b}}
    upstream: u
    cache: {key: {query: none}}
  - id: off
    match: {path: {prefix: /off}}
    upstream: u
    cache: {enabled: false}
",
        "gw.yaml",
    )
    .unwrap();
    assert_eq!(spec.server.cache.max_bytes, 1_048_576);
    assert_eq!(
        spec.server.cache.lock_timeout,
        std::time::Duration::from_secs(2)
    );
    let a = spec.routes[0].cache.as_deref().unwrap();
    assert_eq!(a.default_ttl, Some(std::time::Duration::from_secs(7200)));
    assert_eq!(a.max_object_size, 1000);
    assert_eq!(a.set_cookie, SetCookie::Strip);
    assert_eq!(a.key.query, QueryKey::Names(vec!["page".into()]));
    assert_eq!(a.key.headers[0].as_str(), "x-tenant");
    assert_eq!(a.key.claims, ["sub"]);
    let b = spec.routes[1].cache.as_deref().unwrap();
    assert_eq!(b.key.query, QueryKey::None);
    // The default object size never exceeds a small cache's cap.
    assert_eq!(b.max_object_size, 1_048_576);
    assert!(spec.routes[2].cache.is_none());
}

#[test]
fn cache_errors_have_paths() {
    let errs = errors(
        "
server: {cache: {max_bytes: 10, lock_timeout: soon}}
listeners: [{name: main, address: '0.0.0.0:8080'}]
upstreams: {u: {endpoints: [{address: '127.0.0.1:3001'}]}}
routes:
  - id: a
    match: {path: {prefix: /a}}
    upstream: u
    cache:
      default_ttl: 0s
      max_object_size: 0
      set_cookie: keep
      key: {query: some, headers: ['bad header'], claims: ['']}
  - id: d
    match: {path: {exact: /d}}
    direct_response: {status: 200}
    cache: {}
",
    )
    .join("\n");
    for want in [
        "server.cache.max_bytes",
        "server.cache.lock_timeout",
        "routes[0].cache.default_ttl",
        "routes[0].cache.max_object_size",
        "routes[0].cache.set_cookie",
        "routes[0].cache.key.query",
        "routes[0].cache.key.headers[0]",
        "routes[0].cache.key.claims[0]",
        "routes[1].cache",
    ] {
        assert!(errs.contains(want), "missing {want} in:\n{errs}");
    }
    let errs = errors(
        "
server: {cache: {max_bytes: 100000}}
listeners: [{name: main, address: '0.0.0.0:8080'}]
upstreams: {u: {endpoints: [{address: '127.0.0.1:3001'}]}}
routes:
  - {id: a, match: {path: {prefix: /a}}, upstream: u, cache: {max_object_size: 200000}}
",
    )
    .join("\n");
    assert!(errs.contains("routes[0].cache.max_object_size"), "{errs}");
}

#[test]
fn kubernetes_upstreams_and_discovery_parse() {
    let spec = parse(
        "
listeners: [{name: main, address: '0.0.0.0:8080'}]
discovery:
  zone: eu-west-1a
  kubernetes:
    kubeconfig: /etc/gateway/kubeconfig
    namespaces: [shop, payments]
    label_selector: 'app.kubernetes.io/part-of=shop,tier in (web, api)'
    source: endpoints
    quiet: 50ms
    max_delay: 500ms
    max_removed_percent: 30
upstreams:
  orders:
    kubernetes: {namespace: shop, service: orders, port: http}
    load_balancing: least_outstanding
    limits: {max_in_flight: 10}
  catalog:
    kubernetes: {namespace: shop, service: catalog, port: 8080}
routes:
  - {id: orders, match: {path: {prefix: /orders}}, upstream: orders}
  - {id: catalog, match: {path: {prefix: /catalog}}, upstream: catalog}
",
        "gw.yaml",
    )
    .unwrap();
    let orders = &spec.upstreams["orders"];
    assert!(orders.endpoints.is_empty());
    let k = orders.kubernetes.as_ref().unwrap();
    assert_eq!(k.service, discovery::ServiceKey::new("shop", "orders"));
    assert_eq!(k.port, discovery::PortRef::Name("http".into()));
    assert_eq!(
        spec.upstreams["catalog"].kubernetes.as_ref().unwrap().port,
        discovery::PortRef::Number(8080)
    );
    let d = spec.discovery.as_ref().unwrap();
    assert_eq!(d.zone.as_deref(), Some("eu-west-1a"));
    let DiscoverySource::Kubernetes(w) = &d.source else {
        panic!("{d:?}")
    };
    assert_eq!(w.namespaces, ["shop", "payments"]);
    assert_eq!(w.source, ApiSource::Endpoints);
    assert_eq!(w.quiet, std::time::Duration::from_millis(50));
    assert_eq!(w.max_delay, std::time::Duration::from_millis(500));
    assert_eq!(w.max_removed_percent, 30);
    assert_eq!(
        w.kubeconfig.as_deref(),
        Some(std::path::Path::new("/etc/gateway/kubeconfig"))
    );

    let cp = parse(
        "
listeners: [{name: main, address: '0.0.0.0:8080'}]
discovery:
  control_plane: {url: 'https://discovery.gateway-system:8081/', token_env: DISCOVERY_TOKEN, ca_file: /etc/gateway/discovery-ca.crt}
upstreams:
  orders: {kubernetes: {namespace: shop, service: orders, port: 80}}
routes: [{id: orders, upstream: orders}]
",
        "gw.yaml",
    )
    .unwrap();
    assert_eq!(
        cp.discovery.unwrap().source,
        DiscoverySource::ControlPlane {
            url: "https://discovery.gateway-system:8081".into(),
            token: TokenSource::Env("DISCOVERY_TOKEN".into()),
            ca_file: Some("/etc/gateway/discovery-ca.crt".into()),
        }
    );
}

#[test]
fn kubernetes_and_discovery_errors_have_paths() {
    let head = "listeners: [{name: m, address: '127.0.0.1:1'}]\n";
    let cases = [
        (
            "upstreams:\n  k: {kubernetes: {namespace: shop, service: orders, port: http}}\nroutes: [{id: a, upstream: k}]\n",
            "gw.yaml:3:7: upstreams.k.kubernetes: a kubernetes upstream needs a top-level discovery section",
        ),
        (
            "discovery: {kubernetes: {}}\nupstreams:\n  k: {endpoints: [{address: '127.0.0.1:2'}], kubernetes: {namespace: shop, service: orders, port: 80}}\nroutes: [{id: a, upstream: k}]\n",
            "gw.yaml:4:3: upstreams.k: set only one of endpoints or kubernetes",
        ),
        (
            "upstreams:\n  k: {load_balancing: random}\nroutes: [{id: a, upstream: k}]\n",
            "upstreams.k.endpoints: an upstream needs endpoints or kubernetes",
        ),
        (
            "discovery: {kubernetes: {}}\nupstreams:\n  k: {kubernetes: {namespace: Shop, service: orders_v2, port: 0}}\nroutes: [{id: a, upstream: k}]\n",
            "upstreams.k.kubernetes.namespace: invalid namespace \"Shop\"",
        ),
        (
            "discovery: {kubernetes: {}}\nupstreams:\n  k: {kubernetes: {namespace: shop, service: orders_v2, port: 0}}\nroutes: [{id: a, upstream: k}]\n",
            "upstreams.k.kubernetes.service: invalid service name \"orders_v2\"",
        ),
        (
            "discovery: {kubernetes: {}}\nupstreams:\n  k: {kubernetes: {namespace: shop, service: orders, port: 0}}\nroutes: [{id: a, upstream: k}]\n",
            "upstreams.k.kubernetes.port: port 0 must be between 1 and 65535",
        ),
        (
            "discovery: {kubernetes: {}}\nupstreams:\n  k: {kubernetes: {namespace: shop, service: orders, port: HTTP}}\nroutes: [{id: a, upstream: k}]\n",
            "upstreams.k.kubernetes.port: invalid port name \"HTTP\"",
        ),
        (
            "discovery: {}\nroutes: []\n",
            "gw.yaml:2:1: discovery: set one of kubernetes (embedded watcher) or control_plane",
        ),
        (
            "discovery: {kubernetes: {}, control_plane: {url: 'http://x:1'}}\nroutes: []\n",
            "discovery: set only one of kubernetes or control_plane",
        ),
        (
            "discovery:\n  kubernetes: {source: pods}\nroutes: []\n",
            "gw.yaml:3:16: discovery.kubernetes.source: unknown source \"pods\"",
        ),
        (
            "discovery:\n  kubernetes: {namespaces: [ok, Not_Ok]}\nroutes: []\n",
            "discovery.kubernetes.namespaces[1]: invalid namespace \"Not_Ok\"",
        ),
        (
            "discovery:\n  kubernetes: {label_selector: 'app in (a'}\nroutes: []\n",
            "discovery.kubernetes.label_selector: invalid label_selector",
        ),
        (
            "discovery:\n  kubernetes: {quiet: 2s, max_delay: 1s}\nroutes: []\n",
            "discovery.kubernetes.max_delay: max_delay 1s must be at least quiet 2s",
        ),
        (
            "discovery:\n  kubernetes: {max_removed_percent: 0}\nroutes: []\n",
            "discovery.kubernetes.max_removed_percent: max_removed_percent is a percent",
        ),
        (
            "discovery:\n  control_plane: {url: 'ftp://x'}\nroutes: []\n",
            "discovery.control_plane.url: invalid control-plane url \"ftp://x\"",
        ),
        (
            "discovery:\n  control_plane: {url: 'http://x:1', token_file: /t, token_env: T}\nroutes: []\n",
            "discovery.control_plane: set only one of token_file or token_env",
        ),
        (
            "discovery:\n  control_plane: {url: 'http://x:1', token_env: 'A-B'}\nroutes: []\n",
            "discovery.control_plane.token_env: invalid environment variable name",
        ),
        (
            "discovery:\n  control_plane: {url: 'http://discovery:8081'}\nroutes: []\n",
            "discovery.control_plane.url: \"http://discovery:8081\" is plain http to another host",
        ),
        (
            "discovery:\n  control_plane: {url: 'http://127.0.0.1:8081', ca_file: /ca.crt}\nroutes: []\n",
            "discovery.control_plane.ca_file: ca_file verifies an https control plane",
        ),
        (
            "discovery:\n  kubernetes: {relist_interval: 0s}\nroutes: []\n",
            "discovery.kubernetes.relist_interval",
        ),
        (
            "discovery:\n  zone: 'eu west'\n  kubernetes: {}\nroutes: []\n",
            "discovery.zone: invalid zone",
        ),
        (
            "discovery:\n  kubernetes: {bogus: 1}\nroutes: []\n",
            "unknown field `bogus`",
        ),
    ];
    for (body, want) in cases {
        let got = errors(&format!("{head}{body}"));
        assert!(
            got.iter().any(|g| g.contains(want)),
            "{body}: want {want:?} in {got:#?}"
        );
    }
}
