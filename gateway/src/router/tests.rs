//! Table-driven routing tests, and a randomized comparison of the fast table against
//! the linear reference matcher.

use http::{HeaderMap, Method};

use super::*;
use crate::runtime::{Runtime, compile};

const HEAD: &str = "\
listeners: [{name: main, address: 127.0.0.1:1}]
upstreams:
  u: {endpoints: [{address: 127.0.0.1:9}]}
routes:
";

fn runtime(routes: &str) -> Runtime {
    let text = format!("{HEAD}{routes}");
    let spec = crate::config::parse(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    compile(&spec, 1, None).unwrap()
}

fn find(
    rt: &Runtime,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut buf = [0u8; MAX_HOST_LEN];
    let host = normalize_host(host, &mut buf);
    let view = RequestView {
        method: &method,
        host,
        path,
        query,
        headers: &map,
    };
    let fast = rt.table.find(&view).map(|h| h.route);
    let slow = reference_find(rt.table.matchers(), &view);
    assert_eq!(
        fast, slow,
        "fast and reference disagree for {method} {host}{target}"
    );
    fast.map(|i| rt.routes[i].id.to_string())
}

/// GET each path on `host` and compare the winning route id.
fn check_gets(rt: &Runtime, host: &str, cases: &[(&str, Option<&str>)]) {
    for (path, want) in cases {
        assert_eq!(
            find(rt, "GET", host, path, &[]).as_deref(),
            *want,
            "GET {host}{path}"
        );
    }
}

#[test]
fn template_without_capture_is_rejected() {
    let err = crate::config::parse(
        &format!("{HEAD}  - {{id: me, match: {{path: {{template: '/users/me'}}}}, upstream: u}}\n"),
        "t.yaml",
    )
    .unwrap_err();
    assert!(err.to_string().contains("no captures"), "{err}");
}

#[test]
fn path_kinds_in_order() {
    let rt = runtime(
        "
  - {id: root, match: {path: {prefix: /}}, upstream: u}
  - {id: api, match: {path: {prefix: /api}}, upstream: u}
  - {id: api-v1, match: {path: {prefix: /api/v1/}}, upstream: u}
  - {id: exact-users, match: {path: {exact: /api/v1/users}}, upstream: u}
  - {id: user-by-id, match: {path: {template: '/api/v1/users/{id}'}}, upstream: u}
  - {id: user-orders, match: {path: {template: '/api/v1/users/{id}/orders'}}, upstream: u}
  - {id: files, match: {path: {template: '/files/{*rest}'}}, upstream: u}
  - {id: files-meta, match: {path: {template: '/files/{name}/meta'}}, upstream: u}
",
    );
    let cases = [
        ("/", Some("root")),
        ("/other", Some("root")),
        ("/api", Some("api")),
        ("/apix", Some("root")),
        ("/api/v2", Some("api")),
        ("/api/v1", Some("api-v1")),
        ("/api/v1/orders", Some("api-v1")),
        ("/api/v1/users", Some("exact-users")),
        ("/api/v1/users/", Some("api-v1")),
        ("/api/v1/users/42", Some("user-by-id")),
        ("/api/v1/users/42/orders", Some("user-orders")),
        ("/api/v1/users/42/orders/7", Some("api-v1")),
        ("/files/a", Some("files")),
        ("/files/a/meta", Some("files-meta")),
        ("/files/a/b/meta", Some("files")),
        ("/files", Some("root")),
    ];
    check_gets(&rt, "", &cases);
}

#[test]
fn regex_routes_come_after_prefixes() {
    let rt = runtime(
        "
  - {id: numeric, match: {path: {regex: '/n/[0-9]+'}}, upstream: u}
  - {id: any-n, match: {path: {regex: '/n/.*'}}, upstream: u}
  - {id: api, match: {path: {prefix: /api}}, upstream: u}
  - {id: api-regex, match: {path: {regex: '/api/.*'}}, upstream: u}
",
    );
    let cases = [
        ("/n/12", Some("numeric")),
        ("/n/x", Some("any-n")),
        ("/n/12/x", Some("any-n")), // regexes match the whole path
        ("/api/x", Some("api")),
        ("/nothing", None),
    ];
    check_gets(&rt, "", &cases);
}

#[test]
fn host_tiers_fall_through() {
    let rt = runtime(
        "
  - {id: any, match: {path: {prefix: /}}, upstream: u}
  - {id: wild, match: {hosts: ['*.example.com'], path: {prefix: /}}, upstream: u}
  - {id: wild-deep, match: {hosts: ['*.eu.example.com'], path: {prefix: /}}, upstream: u}
  - {id: exact, match: {hosts: [api.example.com], path: {prefix: /v1}}, upstream: u}
  - {id: two-hosts, match: {hosts: [a.test, b.test], path: {exact: /x}}, upstream: u}
",
    );
    let cases = [
        ("api.example.com", "/v1/x", Some("exact")),
        ("API.Example.COM:8080", "/v1", Some("exact")),
        // The exact host has no route for /v2: fall through to the wildcard.
        ("api.example.com", "/v2", Some("wild")),
        ("www.example.com", "/", Some("wild")),
        ("a.eu.example.com", "/", Some("wild-deep")),
        ("eu.example.com", "/", Some("wild")),
        ("example.com", "/", Some("any")),
        ("other.org", "/", Some("any")),
        ("", "/", Some("any")),
        ("b.test", "/x", Some("two-hosts")),
        ("b.test", "/y", Some("any")),
        ("[::1]:8080", "/", Some("any")),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            find(&rt, "GET", host, path, &[]).as_deref(),
            want,
            "{host}{path}"
        );
    }
}

#[test]
fn methods_headers_query_and_declaration_order() {
    let rt = runtime(
        "
  - {id: plain, match: {path: {prefix: /items}}, upstream: u}
  - {id: delete, match: {path: {prefix: /items}, methods: [DELETE]}, upstream: u}
  - {id: post, match: {path: {prefix: /items}, methods: [POST, PUT]}, upstream: u}
  - id: beta
    match:
      path: {prefix: /items}
      headers: [{name: x-beta, exact: '1'}]
    upstream: u
  - id: beta-post
    match:
      path: {prefix: /items}
      methods: [POST]
      headers: [{name: x-beta, present: true}]
    upstream: u
  - id: debug
    match:
      path: {prefix: /items}
      query: [{name: debug, present: true}]
    upstream: u
  - id: no-tenant
    match:
      path: {exact: /t}
      headers: [{name: x-tenant, present: false}]
    upstream: u
  - id: tenant-re
    match:
      path: {exact: /t}
      headers: [{name: x-tenant, regex: 'acme-[0-9]+'}]
    upstream: u
  - id: q-exact
    match:
      path: {exact: /q}
      query: [{name: v, exact: 'a b'}]
    upstream: u
",
    );
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case<'_>; 14] = [
        ("GET", "/items", &[], Some("plain")),
        ("DELETE", "/items/1", &[], Some("delete")),
        ("PUT", "/items", &[], Some("post")),
        ("POST", "/items", &[], Some("post")),
        // Two matchers beat one: method+header wins over header or method alone.
        ("POST", "/items", &[("x-beta", "1")], Some("beta-post")),
        ("GET", "/items", &[("x-beta", "1")], Some("beta")),
        ("GET", "/items", &[("x-beta", "2")], Some("plain")),
        // beta (declared before debug) and debug both have one matcher: order decides.
        ("GET", "/items?debug", &[("x-beta", "1")], Some("beta")),
        ("GET", "/items?debug=1", &[], Some("debug")),
        ("GET", "/t", &[], Some("no-tenant")),
        ("GET", "/t", &[("x-tenant", "acme-12")], Some("tenant-re")),
        ("GET", "/t", &[("x-tenant", "acme-x")], None),
        ("GET", "/q?v=a+b", &[], Some("q-exact")),
        ("GET", "/q?v=a%20c", &[], None),
    ];
    for (method, target, headers, want) in cases {
        assert_eq!(
            find(&rt, method, "", target, headers).as_deref(),
            want,
            "{method} {target} {headers:?}"
        );
    }
}

#[test]
fn template_captures_are_spans_of_the_path() {
    let rt = runtime(
        "
  - {id: t, match: {path: {template: '/u/{id}/f/{*rest}'}}, upstream: u}
",
    );
    let method = Method::GET;
    let headers = HeaderMap::new();
    let path = "/u/42/f/a/b.txt";
    let view = RequestView {
        method: &method,
        host: "",
        path,
        query: None,
        headers: &headers,
    };
    let hit = rt.table.find(&view).unwrap();
    assert_eq!(hit.captures.len(), 2);
    assert_eq!(hit.captures.get(path, 0), Some("42"));
    assert_eq!(hit.captures.get(path, 1), Some("a/b.txt"));
    assert_eq!(hit.captures.get(path, 2), None);
}

#[test]
fn normalizes_paths() {
    let cases = [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../etc", "/etc"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E./admin/", "/admin/"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/...", "/a/..."),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
    }
    assert!(matches!(
        normalize_path("/plain/path").unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(normalize_path("*"), Err(PathError::NotOriginForm));
    assert_eq!(normalize_path("a/b"), Err(PathError::NotOriginForm));
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Random route sets and requests over a small alphabet (so that overlaps are common):
/// the fast table must pick exactly what the linear reference picks.
#[test]
fn fast_table_agrees_with_reference() {
    let segs = ["a", "b", "c", "A"];
    let hosts = ["x.test", "y.test", "*.test", "*.y.test"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rounds = 0;
    for _ in 0..60 {
        let mut routes = String::new();
        for i in 0..25 {
            let depth = 1 + rng.next() % 3;
            let mut path = String::new();
            let kind = rng.next() % 4;
            let mut had_capture = false;
            for d in 0..depth {
                let last = d + 1 == depth;
                let seg = match (kind, rng.next() % 3) {
                    (2, 0) => {
                        had_capture = true;
                        format!("{{p{d}}}")
                    }
                    (2, 1) if last => {
                        had_capture = true;
                        "{*rest}".to_owned()
                    }
                    (3, 0) => "[a-c]".to_owned(),
                    (3, 1) => ".*".to_owned(),
                    _ => rng.pick(&segs).to_owned(),
                };
                path.push('/');
                path.push_str(&seg);
            }
            let ci = if rng.next().is_multiple_of(3) {
                ", case_insensitive: true"
            } else {
                ""
            };
            let path_yaml = match kind {
                0 => format!("{{exact: '{path}'{ci}}}"),
                1 => format!("{{prefix: '{path}'{ci}}}"),
                2 if had_capture => format!("{{template: '{path}'}}"),
                2 => format!("{{exact: '{path}'}}"),
                _ => format!("{{regex: '{path}'}}"),
            };
            let host = match rng.next() % 3 {
                0 => String::new(),
                _ => format!("hosts: ['{}'], ", rng.pick(&hosts)),
            };
            let methods = if rng.next().is_multiple_of(4) {
                "methods: [POST], "
            } else {
                ""
            };
            let header = if rng.next().is_multiple_of(5) {
                "headers: [{name: x-h, present: true}], "
            } else {
                ""
            };
            routes.push_str(&format!(
                "  - {{id: r{i}, match: {{{host}{methods}{header}path: {path_yaml}}}, upstream: u}}\n"
            ));
        }
        // Identical random matches are a config error; skip those rounds.
        let text = format!("{HEAD}{routes}");
        let Ok(spec) = crate::config::parse(&text, "random.yaml") else {
            continue;
        };
        let rt = compile(&spec, 1, None).unwrap();
        rounds += 1;
        for _ in 0..200 {
            let depth = rng.next() % 4;
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                path.push_str(rng.pick(&["a", "b", "c", "d", "", "A", "B"]));
            }
            if path.is_empty() {
                path.push('/');
            }
            let host = rng.pick(&["x.test", "y.test", "z.y.test", "q.test", "", "other"]);
            let method = rng.pick(&["GET", "POST"]);
            let headers: &[(&str, &str)] = if rng.next().is_multiple_of(2) {
                &[("x-h", "1")]
            } else {
                &[]
            };
            // `find` asserts agreement with the reference.
            let _ = find(&rt, method, host, &path, headers);
        }
    }
    assert!(rounds >= 30, "only {rounds} random route sets were valid");
}
