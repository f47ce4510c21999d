use super::*;

fn counts(s: &WeightedSchedule, n: usize, k: usize) -> Vec<usize> {
    let mut c = vec![0; k];
    for _ in 0..n {
        c[s.pick()] += 1;
    }
    c
}

#[test]
fn weighted_schedule_is_proportional_and_smooth() {
    let s = WeightedSchedule::new(&[5, 1, 1]);
    // nginx's smooth WRR for {5,1,1}: a a b a c a a
    let seq: Vec<usize> = (0..7).map(|_| s.pick()).collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(counts(&s, 700, 3), vec![500, 100, 100]);
}

#[test]
fn zero_weights_never_chosen() {
    let s = WeightedSchedule::new(&[0, 3]);
    assert_eq!(counts(&s, 30, 2), vec![0, 30]);
}

#[test]
fn huge_weights_are_scaled() {
    let s = WeightedSchedule::new(&[1_000_000, 1_000_000, 2_000_000]);
    let c = counts(&s, 4000, 3);
    assert_eq!(c, vec![1000, 1000, 2000]);
}

fn spec_of(lb: LoadBalancing, endpoints: &[(String, u32)]) -> UpstreamSpec {
    UpstreamSpec {
        kubernetes: None,
        endpoints: endpoints
            .iter()
            .map(|(address, weight)| policy::EndpointSpec {
                address: address.clone(),
                weight: *weight,
                draining: false,
                app_protocol: None,
            })
            .collect(),
        load_balancing: lb,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        health_check: None,
        outlier_detection: Some(OutlierDetection::default()),
        panic_threshold: 50,
        retry_budget: RetryBudgetPolicy::default(),
        limits: Limits::default(),
        sticky_cookie: None,
        transport: Default::default(),
    }
}

fn pool(lb: LoadBalancing, weights: &[u32]) -> UpstreamPool {
    let endpoints: Vec<(String, u32)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("127.0.0.1:{}", 1000 + i), *w))
        .collect();
    UpstreamPool::compile("p", &spec_of(lb, &endpoints), String::new(), None).unwrap()
}

fn distribution(pool: &UpstreamPool, n: usize) -> Vec<usize> {
    let mut c = vec![0; pool.endpoints.len()];
    for _ in 0..n {
        c[pool.select(None, &[]).unwrap().0] += 1;
    }
    c
}

#[test]
fn round_robin_ignores_weights() {
    let p = pool(LoadBalancing::RoundRobin, &[10, 1]);
    let order: Vec<usize> = (0..4).map(|_| p.select(None, &[]).unwrap().0).collect();
    assert_eq!(order, vec![0, 1, 0, 1]);
}

#[test]
fn weighted_algorithms_follow_weights_within_5_percent() {
    let weights = [1, 2, 3, 4];
    for lb in [LoadBalancing::WeightedRoundRobin, LoadBalancing::Random] {
        let p = pool(lb.clone(), &weights);
        // 100k picks: 5% of the smallest share is 5 standard deviations, so the
        // outcome does not hinge on the per-thread RNG seed (which depends on how
        // many tests the harness runs).
        let counts = distribution(&p, 100_000);
        for (c, w) in counts.iter().zip(weights) {
            let want = 100_000.0 * f64::from(w) / 10.0;
            assert!(
                (*c as f64 - want).abs() <= want * 0.05,
                "{lb:?}: {counts:?} for weights {weights:?}"
            );
        }
    }
}

#[test]
fn least_outstanding_avoids_busy_endpoints_and_rotates_ties() {
    let p = pool(LoadBalancing::LeastOutstanding, &[1, 1, 1]);
    let busy: Vec<Attempt> = (0..3)
        .map(|_| Attempt::begin(&p.endpoints[0].state))
        .collect();
    let _one = Attempt::begin(&p.endpoints[1].state);
    for _ in 0..10 {
        assert_eq!(p.select(None, &[]).unwrap().0, 2);
    }
    drop(busy);
    drop(_one);
    // All idle: ties rotate instead of piling onto one endpoint.
    assert_eq!(distribution(&p, 300), vec![100, 100, 100]);
}

#[test]
fn peak_ewma_prefers_fast_idle_endpoints() {
    let p = pool(LoadBalancing::PeakEwma, &[1, 1]);
    p.endpoints[0].state.observe(Duration::from_millis(200));
    p.endpoints[1].state.observe(Duration::from_millis(2));
    // With two endpoints, both are always the two choices: the cheaper one wins.
    assert_eq!(distribution(&p, 100), vec![0, 100]);
    // Enough queued work on the fast one makes the slow one cheaper.
    let _queue: Vec<Attempt> = (0..200)
        .map(|_| Attempt::begin(&p.endpoints[1].state))
        .collect();
    assert_eq!(distribution(&p, 10)[0], 10);
}

fn hash_pool(n: usize, bounded_load: Option<f64>) -> UpstreamPool {
    pool(
        LoadBalancing::ConsistentHash {
            on: HashOn::Path,
            bounded_load,
        },
        &vec![1; n],
    )
}

fn hash_pool_at(base: u16, n: usize) -> UpstreamPool {
    let endpoints: Vec<(String, u32)> = (0..n)
        .map(|i| (format!("127.0.0.1:{}", base as usize + i), 1))
        .collect();
    let lb = LoadBalancing::ConsistentHash {
        on: HashOn::Path,
        bounded_load: None,
    };
    UpstreamPool::compile("p", &spec_of(lb, &endpoints), String::new(), None).unwrap()
}

#[test]
fn consistent_hash_moves_few_keys_when_an_endpoint_is_added() {
    // Several address layouts, so the result is not a lucky hash.
    for base in [1000u16, 8080, 31000] {
        let ten = hash_pool_at(base, 10);
        let eleven = hash_pool_at(base, 11);
        let keys = 20_000;
        let mut same = 0;
        let mut counts = vec![0; 10];
        for k in 0..keys {
            let key = hash64(format!("/users/{k}").as_bytes());
            let a = ten.select(Some(key), &[]).unwrap().1.socket;
            let b = eleven.select(Some(key), &[]).unwrap().1.socket;
            counts[usize::from(a.port() - base)] += 1;
            same += usize::from(a == b);
        }
        let kept = same as f64 / keys as f64;
        // The ideal is 10/11 = 90.9%: only the new endpoint's share moves.
        assert!(
            kept >= 0.90,
            "base {base}: only {:.2}% of keys stayed",
            kept * 100.0
        );
        // And the ring spreads keys evenly (within 15% of a tenth each).
        assert!(
            counts.iter().all(|c| (*c as f64 - 2000.0).abs() < 300.0),
            "base {base}: {counts:?}"
        );
    }
    // No key: spread at random rather than pinned.
    assert!(
        distribution(&hash_pool(10, None), 1000)
            .iter()
            .all(|c| *c > 0)
    );
}

#[test]
fn bounded_load_caps_a_hot_key() {
    let p = hash_pool(4, Some(1.25));
    let key = hash64(b"/hot");
    let home = p.select(Some(key), &[]).unwrap().0;
    // Pile in-flight requests for the hot key: the home endpoint fills to its cap and
    // the overflow spills to others instead of queueing without bound.
    let mut held = Vec::new();
    for _ in 0..40 {
        let e = p.select(Some(key), &[]).unwrap().1;
        held.push((Attempt::begin(&e.state), p.state.try_connection(None)));
    }
    let home_load = p.endpoints[home].state.outstanding();
    // cap = ceil(1.25 * (total + 1) / 4) stays close to 1.25 x the average of 10.
    assert!(
        home_load <= 13,
        "home endpoint has {home_load} of 40 in flight"
    );
    assert!(p.endpoints.iter().all(|e| e.state.outstanding() > 0));
    // Without a bound, every request for the key goes home.
    let unbounded = hash_pool(4, None);
    let first = unbounded.select(Some(key), &[]).unwrap().1.socket;
    let _hold: Vec<Attempt> = (0..40)
        .map(|_| Attempt::begin(&unbounded.endpoints[0].state))
        .collect();
    assert!((0..40).all(|_| unbounded.select(Some(key), &[]).unwrap().1.socket == first));
}

fn pool_with(lb: LoadBalancing, n: usize, draining: &[usize]) -> UpstreamPool {
    let mut spec = spec_of(
        lb,
        &(0..n)
            .map(|i| (format!("127.0.0.1:{}", 1000 + i), 1))
            .collect::<Vec<_>>(),
    );
    for i in draining {
        spec.endpoints[*i].draining = true;
    }
    UpstreamPool::compile("p", &spec, String::new(), None).unwrap()
}

fn picks(p: &UpstreamPool, tried: &[usize], n: usize) -> Vec<usize> {
    let mut c = vec![0; p.endpoints.len()];
    for _ in 0..n {
        c[p.select(Some(hash64(b"k")), tried).unwrap().0] += 1;
    }
    c
}

#[test]
fn selection_skips_unhealthy_draining_and_tried_endpoints() {
    let algorithms = [
        LoadBalancing::RoundRobin,
        LoadBalancing::WeightedRoundRobin,
        LoadBalancing::Random,
        LoadBalancing::LeastOutstanding,
        LoadBalancing::PeakEwma,
        LoadBalancing::ConsistentHash {
            on: HashOn::Path,
            bounded_load: None,
        },
    ];
    for lb in algorithms {
        let p = pool_with(lb.clone(), 4, &[3]);
        p.endpoints[0].state.set_healthy(false);
        let c = picks(&p, &[], 200);
        assert_eq!(
            (c[0], c[3]),
            (0, 0),
            "{lb:?}: unhealthy or draining picked: {c:?}"
        );
        // A retry avoids the endpoint it already tried while others are usable.
        let first = p.select(Some(hash64(b"k")), &[]).unwrap().0;
        let c = picks(&p, &[first], 100);
        assert_eq!(c[first], 0, "{lb:?}: retried on the same endpoint: {c:?}");
        // Only tried endpoints left: better the same one again than none.
        assert!(p.select(Some(hash64(b"k")), &[1, 2]).is_some(), "{lb:?}");
    }
}

#[test]
fn panic_mode_spreads_over_unhealthy_endpoints_but_never_draining_ones() {
    // 4 endpoints, 1 draining; of the other 3, only 1 available: 33% < 50%: panic.
    let p = pool_with(LoadBalancing::RoundRobin, 4, &[3]);
    p.endpoints[0].state.set_healthy(false);
    p.endpoints[1].state.set_healthy(false);
    let c = picks(&p, &[], 300);
    assert!(
        c[0] > 0 && c[1] > 0 && c[2] > 0,
        "panic mode uses all: {c:?}"
    );
    assert_eq!(c[3], 0, "draining endpoints stay out even in panic: {c:?}");
    // With 2 of 3 available (67%) health is respected again.
    p.endpoints[1].state.set_healthy(true);
    let c = picks(&p, &[], 300);
    assert_eq!(c[0], 0, "{c:?}");
    // Everything draining: nothing to pick.
    let all = pool_with(LoadBalancing::RoundRobin, 2, &[0, 1]);
    assert!(all.select(None, &[]).is_none());
}

#[test]
fn ejection_cap_limits_how_much_of_a_pool_is_ejected() {
    let p = pool_with(LoadBalancing::RoundRobin, 4, &[]);
    let od = p.outlier_detection.unwrap();
    let mut ejected = 0;
    for e in &p.endpoints {
        for _ in 0..od.consecutive_failures {
            ejected += usize::from(e.state.record_failure(&od, || p.may_eject()));
        }
    }
    // max_ejection_percent 50 of 4 endpoints.
    assert_eq!(ejected, 2);
}

#[test]
fn hash_keys_from_requests() {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers.append(
        http::header::COOKIE,
        "a=1; session=s3cr3t; b=2".parse().unwrap(),
    );
    let with = |on| {
        pool(
            LoadBalancing::ConsistentHash {
                on,
                bounded_load: None,
            },
            &[1, 1],
        )
    };
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let key = |on| with(on).hash_key(&headers, "/p", Some(ip));
    assert_eq!(
        key(HashOn::Header(HeaderName::from_static("x-user"))),
        Some(hash64(b"alice"))
    );
    assert_eq!(key(HashOn::Header(HeaderName::from_static("x-none"))), None);
    assert_eq!(
        key(HashOn::Cookie("session".into())),
        Some(hash64(b"s3cr3t"))
    );
    assert_eq!(key(HashOn::Cookie("sess".into())), None);
    assert_eq!(key(HashOn::Path), Some(hash64(b"/p")));
    assert_eq!(key(HashOn::ClientIp), Some(hash64(&[10, 1, 2, 3])));
    assert_eq!(
        pool(LoadBalancing::Random, &[1]).hash_key(&headers, "/p", Some(ip)),
        None
    );
}
