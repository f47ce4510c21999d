//! Route lookup and endpoint selection must not allocate (DESIGN.md, "Hot path"). A
//! counting global allocator checks that `RouteTable::find` and `UpstreamPool::select`
//! make zero heap allocations for every kind of request once per-thread caches are warm.

// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]
// Test code: a fixture that does not build should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use gateway::router::{RequestView, RouteTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

thread_local! {
    // Per thread, so that tests running in parallel do not count each other's work.
    // A const-initialised `Cell<usize>` needs no allocation and no destructor, so it is
    // safe to touch from inside the allocator.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` and `layout` come from this allocator, which is `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, which is `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations (alloc, alloc_zeroed, realloc) made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// Every path kind (exact, prefix, template with and without catch-all, regex), every
/// host kind (exact, wildcard at two depths, none), methods, header and query matchers.
const CONFIG: &str = r#"
listeners: [{name: main, address: '127.0.0.1:1'}]
upstreams:
  u: {endpoints: [{address: '127.0.0.1:9'}]}
routes:
  - {id: api-status, match: {hosts: [api.example.com], path: {exact: /v1/status}}, upstream: u}
  - {id: api-me-get, match: {hosts: [api.example.com], path: {exact: /v1/me}, methods: [GET, HEAD]}, upstream: u}
  - {id: api-me-post, match: {hosts: [api.example.com], path: {exact: /v1/me}, methods: [POST]}, upstream: u}
  - {id: api-v1, match: {hosts: [api.example.com, api.example.net], path: {prefix: /v1}}, upstream: u}
  - {id: api-archive, match: {hosts: [api.example.com], path: {prefix: /v1/orders/archive}}, upstream: u}
  - {id: api-order, match: {hosts: [api.example.com], path: {template: '/v1/users/{user}/orders/{order}'}}, upstream: u}
  - {id: api-user, match: {hosts: [api.example.com], path: {template: '/v1/users/{user}'}, methods: [GET]}, upstream: u}
  - {id: api-files, match: {hosts: [api.example.com], path: {template: '/v1/files/{*rest}'}}, upstream: u}
  - {id: api-report, match: {hosts: [api.example.com], path: {regex: '/reports/[0-9]{4}-[0-9]{2}/[a-z]+'}}, upstream: u}
  - {id: api-export, match: {hosts: [api.example.com], path: {regex: '/exports/[a-f0-9]{8}\.(csv|json)'}, methods: [GET]}, upstream: u}
  - {id: api-canary, match: {hosts: [api.example.com], path: {prefix: /v2}, headers: [{name: x-canary, exact: '1'}], query: [{name: debug, present: true}]}, upstream: u}
  - {id: api-v2, match: {hosts: [api.example.com], path: {prefix: /v2}}, upstream: u}
  - {id: api-search, match: {hosts: [api.example.com], path: {exact: /search}, query: [{name: q, regex: '[a-z ]+'}]}, upstream: u}
  - {id: tenant, match: {hosts: ['*.tenants.example.com'], path: {prefix: /app}, headers: [{name: x-tenant, regex: '[a-z]+'}], query: [{name: lang, exact: en}]}, upstream: u}
  - {id: tenant-eu, match: {hosts: ['*.eu.tenants.example.com'], path: {exact: /app/home}}, upstream: u}
  - {id: health, match: {path: {exact: /healthz}}, upstream: u}
  - {id: static, match: {path: {prefix: /static/assets}}, upstream: u}
  - {id: item, match: {path: {template: '/items/{id}'}, methods: [GET, HEAD]}, upstream: u}
  - {id: legacy, match: {path: {regex: '/legacy/[a-z]+\.php'}}, upstream: u}
"#;

struct Case {
    name: &'static str,
    method: Method,
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    /// The route id the request must reach (`None`: no route, a 404).
    expect: Option<&'static str>,
    /// Captures the hit must carry, in order.
    captures: &'static [&'static str],
}

const fn get(name: &'static str, host: &'static str, path: &'static str) -> Case {
    Case {
        name,
        method: Method::GET,
        host,
        path,
        query: None,
        headers: &[],
        expect: None,
        captures: &[],
    }
}

impl Case {
    const fn hits(mut self, id: &'static str) -> Self {
        self.expect = Some(id);
        self
    }
}

fn cases() -> Vec<Case> {
    vec![
        get("exact", "api.example.com", "/v1/status").hits("api-status"),
        Case {
            method: Method::POST,
            ..get("exact with methods", "api.example.com", "/v1/me").hits("api-me-post")
        },
        get("prefix", "api.example.net", "/v1/anything").hits("api-v1"),
        get(
            "deep prefix",
            "api.example.com",
            "/v1/orders/archive/2023/01",
        )
        .hits("api-archive"),
        Case {
            query: Some("x=1&debug"),
            headers: &[("x-canary", "1")],
            ..get(
                "prefix with header and query",
                "api.example.com",
                "/v2/list",
            )
            .hits("api-canary")
        },
        Case {
            captures: &["42", "7"],
            ..get("template", "api.example.com", "/v1/users/42/orders/7").hits("api-order")
        },
        Case {
            captures: &["a/b/c.txt"],
            ..get(
                "template catch-all",
                "api.example.com",
                "/v1/files/a/b/c.txt",
            )
            .hits("api-files")
        },
        Case {
            query: Some("lang=en"),
            headers: &[("x-tenant", "acme"), ("user-agent", "test/1.0")],
            ..get(
                "wildcard host",
                "acme.tenants.example.com",
                "/app/dashboard",
            )
            .hits("tenant")
        },
        get("longest wildcard", "x.eu.tenants.example.com", "/app/home").hits("tenant-eu"),
        get(
            "host-less fallback",
            "api.example.com",
            "/static/assets/app.js",
        )
        .hits("static"),
        Case {
            captures: &["9"],
            ..get("no host header", "", "/items/9").hits("item")
        },
        get("regex", "api.example.com", "/reports/2024-05/daily").hits("api-report"),
        get(
            "regex, host-less",
            "unknown.example.org",
            "/legacy/index.php",
        )
        .hits("legacy"),
        Case {
            query: Some("q=rust"),
            ..get("query regex", "api.example.com", "/search").hits("api-search")
        },
        Case {
            query: Some("q=hello+world"),
            ..get("query regex, encoded value", "api.example.com", "/search").hits("api-search")
        },
        get("miss", "api.example.com", "/nope/nothing"),
        get("miss, unknown host", "nobody.example.org", "/v1/status"),
        Case {
            method: Method::DELETE,
            ..get("miss on method", "", "/items/9")
        },
    ]
}

fn table() -> (RouteTable, Vec<String>) {
    let spec = gateway::config::parse(CONFIG, "lookup_alloc.yaml")
        .unwrap_or_else(|e| panic!("test config does not parse:\n{e}"));
    let runtime = gateway::runtime::compile(&spec, 1, None)
        .unwrap_or_else(|e| panic!("test config does not compile: {e:?}"));
    let ids = runtime.routes.iter().map(|r| r.id.to_string()).collect();
    (runtime.table, ids)
}

const LOOKUPS: usize = 1_000;

#[test]
fn counter_counts_allocations() {
    assert_eq!(
        allocations(|| drop(black_box(Vec::<u8>::with_capacity(1)))),
        1
    );
    assert_eq!(allocations(|| drop(black_box(Box::new(7u64)))), 1);
    assert_eq!(allocations(|| drop(black_box(Vec::<u8>::new()))), 0);
}

#[test]
fn route_lookup_does_not_allocate() {
    let (table, ids) = table();
    let mut failures = Vec::new();
    for case in cases() {
        let mut headers = HeaderMap::new();
        for (name, value) in case.headers {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let req = RequestView {
            method: &case.method,
            host: case.host,
            path: case.path,
            query: case.query,
            headers: &headers,
        };
        // Warm-up, and proof that the case reaches the route it claims to measure. The
        // regex engine fills a per-thread cache on first use.
        let hit = table.find(&req);
        let got = hit.map(|h| ids[h.route].as_str());
        assert_eq!(got, case.expect, "{}: wrong route", case.name);
        if let Some(hit) = hit {
            let captures: Vec<_> = (0..hit.captures.len())
                .map(|i| hit.captures.get(case.path, i).unwrap())
                .collect();
            assert_eq!(captures, case.captures, "{}: captures", case.name);
        }

        // The counter must still see this thread's allocations here and now.
        assert_eq!(
            allocations(|| drop(black_box(Vec::<u8>::with_capacity(1)))),
            1
        );
        let n = allocations(|| {
            for _ in 0..LOOKUPS {
                black_box(table.find(black_box(&req)));
            }
        });
        if n != 0 {
            failures.push(format!(
                "{:?} ({} {}{}{}): {n} allocations in {LOOKUPS} lookups",
                case.name,
                case.host,
                case.path,
                if case.query.is_some() { "?" } else { "" },
                case.query.unwrap_or(""),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "route lookup allocated:\n  {}",
        failures.join("\n  ")
    );
}

/// Endpoint selection is on the hot path too: no algorithm may allocate per pick.
#[test]
fn endpoint_selection_does_not_allocate() {
    let algorithms = [
        "load_balancing: round_robin",
        "load_balancing: weighted_round_robin",
        "load_balancing: random",
        "load_balancing: least_outstanding",
        "load_balancing: peak_ewma",
        "load_balancing: consistent_hash, hash_on: 'header:x-user', bounded_load: 1.25",
        "load_balancing: consistent_hash, hash_on: path, sticky_cookie: {name: s}",
    ];
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    headers.insert(
        "cookie",
        HeaderValue::from_static("a=1; s=00000000000000ff"),
    );
    for settings in algorithms {
        let endpoints: Vec<String> = (1..=20)
            .map(|i| format!("{{address: '127.0.0.{i}:80', weight: {}}}", 1 + i % 3))
            .collect();
        let text = format!(
            "listeners: [{{name: m, address: '127.0.0.1:1'}}]\nupstreams:\n  u: {{{settings}, endpoints: [{}]}}\nroutes: [{{id: r, upstream: u}}]\n",
            endpoints.join(", ")
        );
        let spec = gateway::config::parse(&text, "alloc.yaml").unwrap();
        let rt = gateway::runtime::compile(&spec, 1, None).unwrap();
        let pool = &rt.upstreams["u"];
        // Some endpoints unavailable, so the slow path (skipping them) is exercised too.
        pool.endpoints[0].state.set_healthy(false);
        pool.endpoints[5].state.set_healthy(false);
        let pick = || {
            let key = pool.hash_key(&headers, "/p", None);
            let sticky = pool.sticky_choice(&headers, &[]);
            black_box((
                sticky.map(|s| s.0),
                pool.select(black_box(key), &[3, 7]).map(|s| s.0),
            ));
        };
        pick();
        let n = allocations(|| {
            for _ in 0..LOOKUPS {
                pick();
            }
        });
        assert_eq!(n, 0, "{settings}: {n} allocations in {LOOKUPS} picks");
    }
}

/// Reading the path before lookup borrows an already-normal path: no allocation.
#[test]
fn normalizing_a_normal_path_does_not_allocate() {
    for case in cases() {
        let n = allocations(|| {
            for _ in 0..LOOKUPS {
                let normal = gateway::router::path::normalize(black_box(case.path)).unwrap();
                assert!(normal.findings.is_empty());
                black_box(normal);
            }
        });
        assert_eq!(n, 0, "{}: normalizing {} allocated", case.name, case.path);
    }
}
