//! Edge-policy config: every field parsed, every mistake a located error.

use crate::config::parse;

fn errors(text: &str) -> Vec<String> {
    parse(text, "gw.yaml")
        .err()
        .unwrap_or_else(|| panic!("expected errors for:\n{text}"))
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

const DIGEST: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[test]
fn every_policy_parses() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(
        &keys,
        format!("# acme\n{}\n", hex::encode(crate::apikey::digest(b"k2"))),
    )
    .unwrap();
    let text = format!(
        "
listeners:
  - name: main
    address: '0.0.0.0:8080'
    ip: {{deny: [192.0.2.0/24]}}
    cors: web
    compression: {{algorithms: [gzip], level: 5}}
consumers:
  - {{name: acme, groups: [partners], keys: ['{DIGEST}'], keys_file: '{}'}}
  - {{name: old, keys: [], disabled: true}}
cors_policies:
  web:
    allow_origins: ['https://app.example.com', 'https://*.example.org']
    allow_methods: [get, POST]
    allow_headers: [content-type, x-api-key]
    expose_headers: [x-request-id]
    allow_credentials: true
    max_age: 10m
upstreams:
  u: {{endpoints: [{{address: '127.0.0.1:1'}}]}}
jwt_providers:
  h: {{algorithms: [HS256], secret: '0123456789abcdef0123456789abcdef', issuer: i}}
rate_limit_policies:
  per-consumer: {{rate: 10/s, key: [consumer, route]}}
routes:
  - id: keyed
    match: {{path: {{prefix: /k}}}}
    ip: {{allow: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7], deny: [10.1.0.0/16]}}
    cors: false
    compression: {{enabled: false}}
    auth: {{api_key: {{sources: ['header:x-api-key', 'query:api_key'], allow_groups: [partners]}}}}
    rate_limits: [per-consumer]
    upstream: u
  - id: either
    match: {{path: {{prefix: /e}}}}
    cors: {{allow_origins: ['*'], allow_methods: ['*'], allow_headers: ['*'], expose_headers: ['*']}}
    compression: {{algorithms: [zstd, br, gzip], min_bytes: 10, content_types: [text/*, application/*+json], level: {{zstd: 5, gzip: 9}}}}
    auth:
      any_of:
        - {{jwt: {{providers: [h]}}}}
        - {{api_key: {{consumer_header: X-Partner, strip: false}}}}
      forward:
        url: http://127.0.0.1:3005/check
        timeout: 500ms
        send_headers: ['*']
        send_body: true
        max_body: 1024
        copy_response_headers: [X-Auth-User]
        cache: {{ttl: 30s, key: ['header:authorization', 'cookie:session', client_ip, method, path, 'query:t']}}
        on_error: allow
    upstream: u
",
        keys.display()
    );
    let spec = parse(&text, "gw.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.policies.consumers.len(), 2);
    assert_eq!(spec.policies.consumers[0].keys.len(), 2);
    assert_eq!(spec.policies.watched_files, std::slice::from_ref(&keys));
    assert_eq!(spec.policies.listeners.len(), 1);
    let keyed = &spec.routes[0].policies;
    assert_eq!(keyed.ip.as_ref().unwrap().allow.len(), 3);
    assert!(keyed.api_key.as_ref().unwrap().strip);
    let either = &spec.routes[1];
    assert!(either.jwt.is_some() && either.policies.api_key.is_some());
    let fa = either.policies.forward_auth.as_ref().unwrap();
    assert_eq!(fa.cache.as_ref().unwrap().key.len(), 6);
    let rt = crate::runtime::compile(&spec, 1, None).unwrap();
    let names: Vec<&str> = rt.identity_headers.iter().map(|h| h.as_str()).collect();
    for h in ["x-consumer", "x-partner", "x-auth-user"] {
        assert!(names.contains(&h), "{h} is an identity header: {names:?}");
    }
    assert!(
        rt.policies
            .listener(Some("10.1.2.3:8080".parse().unwrap()))
            .is_some()
    );
    assert!(
        rt.policies
            .listener(Some("10.1.2.3:8081".parse().unwrap()))
            .is_none()
    );
}

#[test]
fn policy_errors_are_located() {
    let text = "\
listeners: [{name: m, address: '127.0.0.1:1', ip: {allow: [10.0.0.0/33]}}]
consumers:
  - {name: a, keys: [not-a-digest]}
  - {name: a, keys: []}
  - {name: b, keys_file: /no/such/file}
cors_policies:
  bad:
    allow_origins: ['*']
    allow_credentials: true
upstreams:
  u: {endpoints: [{address: '127.0.0.1:1'}]}
routes:
  - id: r1
    match: {path: {prefix: /a}}
    ip: {deny: [10.0.0.1/8]}
    cors: missing
    compression: {algorithms: [lz4], level: 30}
    auth: {api_key: {sources: ['form:key']}}
    upstream: u
  - id: r2
    match: {path: {prefix: /b}}
    cors: {allow_origins: ['https://app.example.com/'], max_age: 48h}
    auth:
      forward: {url: 'ftp://x', cache: {ttl: 1s, key: []}, on_error: maybe, max_body: 10}
    upstream: u
";
    let got = errors(text);
    let want = [
        "gw.yaml:1:60: listeners[0].ip.allow[0]: invalid CIDR \"10.0.0.0/33\"",
        "gw.yaml:3:22: consumers[0].keys[0]: not a SHA-256 digest",
        "consumers[1].name: duplicate consumer \"a\"",
        "consumers[2].keys_file: cannot read \"/no/such/file\"",
        "cors_policies.bad.allow_credentials: allow_credentials: true cannot be used with allow_origins \"*\"",
        "routes[0].ip.deny[0]: \"10.0.0.1/8\" has host bits set",
        "routes[0].cors: unknown CORS policy \"missing\"",
        "routes[0].compression.algorithms[0]: unknown algorithm \"lz4\"",
        "routes[0].auth.api_key.sources[0]: invalid key source",
        "routes[1].cors.allow_origins[0]: invalid origin",
        "routes[1].cors.max_age: max_age \"48h\" is longer than 24h",
        "routes[1].auth.forward.url: invalid URL",
        "routes[1].auth.forward.cache.key: name what a decision depends on",
        "routes[1].auth.forward.on_error: on_error \"maybe\" must be deny or allow",
        "routes[1].auth.forward.max_body: max_body applies only with send_body: true",
    ];
    for w in want {
        assert!(has(&got, w), "missing {w:?} in\n{}", got.join("\n"));
    }
}

#[test]
fn auth_combinations() {
    let base = "
listeners: [{name: m, address: '127.0.0.1:1'}]
upstreams: {u: {endpoints: [{address: '127.0.0.1:1'}]}}
jwt_providers:
  h: {algorithms: [HS256], secret: '0123456789abcdef0123456789abcdef', issuer: i}
routes:
  - id: r
    upstream: u
    auth: AUTH
";
    let cases = [
        ("{}", "auth needs jwt, api_key, any_of or forward"),
        (
            "{jwt: {providers: [h]}, api_key: {}}",
            "to accept either, write any_of",
        ),
        (
            "{any_of: [{jwt: {providers: [h]}}], api_key: {}}",
            "set any_of, or jwt / api_key, not both",
        ),
        (
            "{any_of: [{jwt: {providers: [h]}}]}",
            "any_of takes one jwt and one api_key alternative",
        ),
        (
            "{any_of: [{jwt: {providers: [h]}, api_key: {}}, {api_key: {}}]}",
            "each alternative is exactly one of jwt or api_key",
        ),
        (
            "{api_key: {consumer_header: authorization}}",
            "cannot carry the consumer name",
        ),
        (
            "{jwt: {providers: [h], claims_to_headers: {sub: X-Who}}, forward: {url: 'http://a/b', copy_response_headers: [x-who]}}",
            "header x-who is set by both claims_to_headers and forward.copy_response_headers",
        ),
        (
            "{forward: {url: 'http://a/b', copy_response_headers: [cookie]}}",
            "cookie cannot be copied from the auth service",
        ),
        (
            "{forward: {url: 'http://a/b', send_body: true, max_body: 100000}}",
            "max_body must be 1-65536",
        ),
    ];
    for (auth, want) in cases {
        let got = errors(&base.replace("AUTH", auth));
        assert!(has(&got, want), "{auth}: missing {want:?} in {got:?}");
    }
}

#[test]
fn cors_and_compression_rules() {
    let base = "
listeners: [{name: m, address: '127.0.0.1:1'}]
upstreams: {u: {endpoints: [{address: '127.0.0.1:1'}]}}
routes:
  - id: r
    upstream: u
    BLOCK
";
    let cases = [
        (
            "cors: {allow_origins: ['https://a.test'], allow_credentials: true, expose_headers: ['*']}",
            "browsers read \"*\" as a header named *",
        ),
        ("cors: {allow_methods: [GET]}", "list the allowed origins"),
        ("cors: true", "cors: true names no policy"),
        (
            "cors: {allow_origins: ['https://*.com']}",
            "a wildcard needs at least two labels",
        ),
        ("compression: {level: 0}", "level 0 must be"),
        ("compression: {algorithms: [gzip, gzip]}", "listed twice"),
        (
            "compression: {algorithms: [gzip], level: {zstd: 3}}",
            "not one of this block's algorithms",
        ),
        (
            "compression: {content_types: [json]}",
            "invalid content type",
        ),
        (
            "compression: {enabled: false, min_bytes: 1}",
            "enabled: false takes no other settings",
        ),
        ("ip: {}", "an ip block needs allow or deny"),
        ("ip: {allow: ['300.0.0.1']}", "invalid CIDR"),
    ];
    for (block, want) in cases {
        let got = errors(&base.replace("BLOCK", block));
        assert!(has(&got, want), "{block}: missing {want:?} in {got:?}");
    }
}

#[test]
fn keys_shared_by_two_consumers_are_refused() {
    let got = errors(&format!(
        "
listeners: [{{name: m, address: '127.0.0.1:1'}}]
consumers:
  - {{name: a, keys: ['{DIGEST}']}}
  - {{name: b, keys: ['{}']}}
",
        DIGEST.to_uppercase()
    ));
    assert!(
        has(
            &got,
            "consumers[1]: a key of \"b\" is also a key of consumers[0]"
        ),
        "{got:?}"
    );
}
