use super::*;

fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
    CorsPolicy::compile(&CorsSpec {
        name: Some("web".into()),
        origins: origins
            .iter()
            .map(|o| OriginRule::parse(o).unwrap())
            .collect(),
        methods: Allowed::List(vec![Method::GET, Method::POST, Method::DELETE]),
        headers: Allowed::List(vec![
            HeaderName::from_static("content-type"),
            HeaderName::from_static("x-api-key"),
        ]),
        expose: Allowed::List(vec![HeaderName::from_static("x-request-id")]),
        credentials,
        max_age: Some(600),
    })
}

fn req(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn get<'a>(a: &'a CorsAnswer, name: &HeaderName) -> Option<&'a str> {
    a.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
}

#[test]
fn origin_syntax() {
    for good in [
        "https://app.example.com",
        "http://localhost:3000",
        "https://[::1]:8443",
        "null",
        "chrome-extension://abcdef",
    ] {
        assert!(valid_origin(good), "{good}");
    }
    for bad in [
        "",
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "https://app example.com",
        "https://app.example.com:0",
        "https://app.example.com:99999",
        "https://",
        "1http://x",
        "https://[::1",
        "https://a..b",
    ] {
        assert!(!valid_origin(bad), "{bad:?}");
    }
    assert!(!valid_origin(&format!("https://{}.com", "a".repeat(3000))));
}

#[test]
fn origin_rules() {
    let wild = OriginRule::parse("https://*.Example.com").unwrap();
    assert!(wild.matches("https://app.example.com"));
    assert!(wild.matches("https://a.b.example.com"));
    assert!(
        !wild.matches("https://example.com"),
        "never the bare domain"
    );
    assert!(!wild.matches("http://app.example.com"), "scheme must match");
    assert!(
        !wild.matches("https://app.example.com:8443"),
        "port must match"
    );
    assert!(!wild.matches("https://evilexample.com"));
    let ported = OriginRule::parse("https://*.example.com:8443").unwrap();
    assert!(ported.matches("https://app.example.com:8443"));
    for bad in [
        "app.example.com",
        "https://app.example.com/",
        "https://*example.com",
        "https://app.*.com",
        "https://*.com",
        "*.example.com",
    ] {
        assert!(OriginRule::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn actual_requests() {
    let p = policy(&["https://app.example.com", "https://*.example.org"], true);
    let a = p.actual(&req(&[("origin", "https://app.example.com")]));
    assert_eq!(
        get(&a, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some("https://app.example.com")
    );
    assert_eq!(
        get(&a, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some("true")
    );
    assert_eq!(
        get(&a, &header::ACCESS_CONTROL_EXPOSE_HEADERS),
        Some("x-request-id")
    );
    assert!(a.vary_origin);
    // Origins are compared case-insensitively, echoed as sent.
    let a = p.actual(&req(&[("origin", "https://API.example.org")]));
    assert_eq!(
        get(&a, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some("https://API.example.org")
    );
    for other in [
        "https://evil.example.net",
        "https://app.example.com.evil.net",
        "null",
        "not an origin",
        "https://app.example.com/",
    ] {
        let a = p.actual(&req(&[("origin", other)]));
        assert!(a.headers.is_empty(), "{other}");
        assert!(a.vary_origin, "the answer still depends on Origin");
    }
    let a = p.actual(&HeaderMap::new());
    assert!(a.headers.is_empty() && a.vary_origin);

    let any = policy(&["*"], false);
    let a = any.actual(&req(&[("origin", "https://x.test")]));
    assert_eq!(get(&a, &header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
    assert!(
        !a.vary_origin,
        "* without credentials answers everyone alike"
    );
    assert_eq!(get(&a, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
}

#[test]
fn preflights() {
    let p = policy(&["https://app.example.com"], false);
    let ok = p
        .preflight(&req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "content-type, X-Api-Key"),
        ]))
        .unwrap();
    assert_eq!(
        get(&ok, &header::ACCESS_CONTROL_ALLOW_METHODS),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        get(&ok, &header::ACCESS_CONTROL_ALLOW_HEADERS),
        Some("content-type, x-api-key")
    );
    assert_eq!(get(&ok, &header::ACCESS_CONTROL_MAX_AGE), Some("600"));
    assert!(ok.vary_origin);
    let refused = |pairs: &[(&str, &str)]| p.preflight(&req(pairs)).unwrap_err();
    assert_eq!(
        refused(&[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "GET")
        ]),
        Refusal::Origin
    );
    assert_eq!(
        refused(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PATCH")
        ]),
        Refusal::Method
    );
    assert_eq!(
        refused(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "BAD METHOD")
        ]),
        Refusal::Method
    );
    assert_eq!(
        refused(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "content-type, x-secret")
        ]),
        Refusal::Headers
    );
    assert_eq!(
        refused(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "bad header")
        ]),
        Refusal::Headers
    );
}

#[test]
fn any_methods_and_headers_echo_the_request() {
    let p = CorsPolicy::compile(&CorsSpec {
        name: None,
        origins: vec![OriginRule::parse("https://app.example.com").unwrap()],
        methods: Allowed::Any,
        headers: Allowed::Any,
        expose: Allowed::List(vec![]),
        credentials: true,
        max_age: None,
    });
    let ok = p
        .preflight(&req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "authorization,x-trace"),
        ]))
        .unwrap();
    assert_eq!(
        get(&ok, &header::ACCESS_CONTROL_ALLOW_METHODS),
        Some("PATCH")
    );
    assert_eq!(
        get(&ok, &header::ACCESS_CONTROL_ALLOW_HEADERS),
        Some("authorization, x-trace")
    );
    assert!(ok.vary_request);
    assert_eq!(get(&ok, &header::ACCESS_CONTROL_MAX_AGE), None);
}

#[test]
fn vary_is_merged_once() {
    let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
    resp.insert_header(header::VARY, "Accept-Encoding, origin")
        .unwrap();
    let answer = CorsAnswer {
        headers: vec![],
        vary_origin: true,
        vary_request: true,
    };
    CorsModule::apply(&answer, &mut resp);
    let vary: Vec<_> = resp.headers.get_all(header::VARY).iter().collect();
    assert_eq!(
        vary,
        [
            "Accept-Encoding, origin",
            "access-control-request-method",
            "access-control-request-headers"
        ]
    );
    let mut star = HeaderMap::new();
    star.insert(header::VARY, HeaderValue::from_static("*"));
    assert!(!needs_vary(&star, &header::ORIGIN));
}
