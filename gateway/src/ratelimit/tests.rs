use super::*;
use governor::clock::FakeRelativeClock;
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn spec(count: u32, period: Duration, burst: u32) -> PolicySpec {
    PolicySpec {
        name: "p".into(),
        count,
        period,
        burst,
        key: vec![KeyPart::ClientIp],
        max_keys: 1000,
        legacy_headers: true,
        cluster: None,
    }
}

fn input(headers: &HeaderMap) -> KeyInput<'_> {
    KeyInput {
        client_ip: Some("10.0.0.1".parse().unwrap()),
        headers,
        route_id: "r",
        consumer: None,
    }
}

#[test]
fn burst_then_refill_with_headers() {
    let clock = FakeRelativeClock::default();
    let l = Arc::new(PolicyLimiter::with_clock(
        spec(2, Duration::from_secs(1), 4),
        clock.clone(),
    ));
    let h = HeaderMap::new();
    let first = decide_local(&[Arc::clone(&l)], &input(&h));
    assert_eq!(first.entries[0], ("p".into(), 2, 1, 3, 1));
    let hs = first.headers();
    assert_eq!(hs[0], ("ratelimit-policy", "\"p\";q=2;w=1".into()));
    assert_eq!(hs[1], ("ratelimit", "\"p\";r=3;t=1".into()));
    assert!(
        hs.iter()
            .any(|(k, v)| *k == "x-ratelimit-remaining" && v == "3")
    );
    for want in [2, 1, 0] {
        assert_eq!(
            decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3,
            want
        );
    }
    // At the limit: refused, Retry-After until one cell (500 ms) refills -> 1 s.
    let limited = decide_local(&[Arc::clone(&l)], &input(&h));
    assert_eq!(limited.retry_after, Some(Duration::from_millis(500)));
    assert!(limited.headers().contains(&("retry-after", "1".into())));
    assert_eq!(limited.entries[0].3, 0);
    // After 1 s two cells are back.
    clock.advance(Duration::from_secs(1));
    assert_eq!(decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3, 1);
    assert_eq!(decide_local(&[Arc::clone(&l)], &input(&h)).entries[0].3, 0);
    assert!(decide_local(&[l], &input(&h)).retry_after.is_some());
}

#[test]
fn admits_burst_plus_rate_times_elapsed() {
    let clock = FakeRelativeClock::default();
    let l = PolicyLimiter::with_clock(spec(10, Duration::from_secs(1), 5), clock.clone());
    let mut admitted = 0;
    // Attempts every 10 ms from 0 to 3 s inclusive: burst 5 + 10/s x 3 s = 35.
    for _ in 0..=300 {
        admitted += usize::from(matches!(l.check("k"), Verdict::Allowed { .. }));
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(admitted, 35);
}

#[test]
fn keys_and_fallbacks() {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    let mut s = spec(1, Duration::from_secs(1), 1);
    s.key = vec![
        KeyPart::Header(HeaderName::from_static("x-user")),
        KeyPart::RouteId,
    ];
    assert_eq!(key_for(&s, &input(&headers)), "h=alice|r");
    // No header: the client IP stands in; the limit is never skipped.
    assert_eq!(key_for(&s, &input(&HeaderMap::new())), "ip=10.0.0.1|r");
}

#[test]
fn overflow_bucket_bounds_memory_but_still_limits() {
    let clock = FakeRelativeClock::default();
    let mut s = spec(1, Duration::from_secs(60), 1);
    s.max_keys = 2;
    let l = PolicyLimiter::with_clock(s, clock);
    assert!(matches!(l.check("a"), Verdict::Allowed { .. }));
    assert!(matches!(l.check("b"), Verdict::Allowed { .. }));
    // Third and fourth new keys share the overflow bucket: one passes, one does not.
    assert!(matches!(l.check("c"), Verdict::Allowed { .. }));
    assert!(matches!(l.check("d"), Verdict::Limited { .. }));
    assert_eq!(l.overflowed.load(Ordering::Relaxed), 2);
}

#[test]
fn consumer_keys_fall_back_to_the_client_ip() {
    let mut spec = spec(1, Duration::from_secs(1), 1);
    spec.key = vec![KeyPart::Consumer, KeyPart::RouteId];
    let h = HeaderMap::new();
    let mut i = input(&h);
    assert_eq!(key_for(&spec, &i), "ip=10.0.0.1|r");
    i.consumer = Some("acme");
    assert_eq!(key_for(&spec, &i), "c=acme|r");
}
