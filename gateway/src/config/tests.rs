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
