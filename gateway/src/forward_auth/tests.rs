use super::*;

fn cache(key: Vec<KeyPart>, max: usize) -> DecisionCache {
    DecisionCache::new(&CacheSpec {
        ttl: Duration::from_secs(30),
        key,
        max_entries: max,
    })
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn allow() -> Decision {
    Decision::Allow(Arc::new(vec![]))
}

#[test]
fn keys_cover_exactly_the_named_parts() {
    let c = cache(
        vec![
            KeyPart::Header(HeaderName::from_static("authorization")),
            KeyPart::Cookie("session".into()),
        ],
        100,
    );
    let k = |h: &HeaderMap, uri: &str| c.key(&Method::GET, uri, None, h);
    let a = headers(&[("authorization", "Bearer a")]);
    let b = headers(&[("authorization", "Bearer b")]);
    assert_eq!(
        k(&a, "/x"),
        k(&a, "/y?z=1"),
        "the path is not part of this key"
    );
    assert_ne!(k(&a, "/x"), k(&b, "/x"));
    assert_ne!(k(&a, "/x"), k(&HeaderMap::new(), "/x"));
    let with_cookie = headers(&[("authorization", "Bearer a"), ("cookie", "session=s1")]);
    assert_ne!(k(&a, "/x"), k(&with_cookie, "/x"));
    // Concatenation cannot collide: ("ab", absent) vs ("a", "b").
    let c2 = cache(
        vec![
            KeyPart::Header(HeaderName::from_static("x-a")),
            KeyPart::Header(HeaderName::from_static("x-b")),
        ],
        100,
    );
    assert_ne!(
        c2.key(&Method::GET, "/", None, &headers(&[("x-a", "ab")])),
        c2.key(
            &Method::GET,
            "/",
            None,
            &headers(&[("x-a", "a"), ("x-b", "b")])
        )
    );
    let by_path = cache(
        vec![KeyPart::Method, KeyPart::Path, KeyPart::Query("t".into())],
        100,
    );
    let h = HeaderMap::new();
    assert_ne!(
        by_path.key(&Method::GET, "/a", None, &h),
        by_path.key(&Method::GET, "/b", None, &h)
    );
    assert_ne!(
        by_path.key(&Method::GET, "/a", None, &h),
        by_path.key(&Method::POST, "/a", None, &h)
    );
    assert_eq!(
        by_path.key(&Method::GET, "/a?u=1", None, &h),
        by_path.key(&Method::GET, "/a?u=2", None, &h)
    );
    assert_ne!(
        by_path.key(&Method::GET, "/a?t=1", None, &h),
        by_path.key(&Method::GET, "/a?t=2", None, &h)
    );
}

#[test]
fn decisions_expire_and_errors_are_not_kept() {
    let c = cache(vec![KeyPart::Method], 100);
    let t0 = Instant::now();
    let key = [7u8; 32];
    c.insert(key, &allow(), t0);
    assert!(matches!(
        c.get(&key, t0 + Duration::from_secs(29)),
        Some(Decision::Allow(_))
    ));
    assert!(c.get(&key, t0 + Duration::from_secs(30)).is_none());
    let other = [8u8; 32];
    c.insert(other, &Decision::Error("timed out"), t0);
    assert!(c.get(&other, t0).is_none());
    let big = Decision::Deny(Arc::new(Denial {
        status: StatusCode::FOUND,
        headers: vec![],
        body: Bytes::from(vec![b'x'; 10_000]),
    }));
    c.insert(other, &big, t0);
    assert!(
        c.get(&other, t0).is_none(),
        "large refusals are asked again"
    );
}

#[test]
fn the_cache_stays_bounded() {
    let c = cache(vec![KeyPart::Method], 160);
    let t0 = Instant::now();
    for i in 0..10_000u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        c.insert(key, &allow(), t0);
    }
    assert!(c.len() <= 160, "{}", c.len());
    assert!(c.len() > 100, "{}", c.len());
}
