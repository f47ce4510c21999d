use super::*;

const ALL: [(Algo, u32); 3] = [(Algo::Zstd, 3), (Algo::Brotli, 4), (Algo::Gzip, 6)];

fn pick(ae: &[&str]) -> Option<&'static str> {
    let mut h = HeaderMap::new();
    for v in ae {
        h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
    }
    negotiate(&h, &ALL).map(|(a, _)| a.token())
}

#[test]
fn q_values_decide() {
    assert_eq!(pick(&[]), None, "no header: identity");
    assert_eq!(pick(&["gzip"]), Some("gzip"));
    assert_eq!(
        pick(&["gzip, deflate, br, zstd"]),
        Some("zstd"),
        "ties: server order"
    );
    assert_eq!(pick(&["gzip;q=1.0, br;q=0.8, zstd;q=0.5"]), Some("gzip"));
    assert_eq!(pick(&["gzip;q=0.5, br;q=0.9"]), Some("br"));
    assert_eq!(pick(&["GZIP; Q=0.7"]), Some("gzip"), "case-insensitive");
    assert_eq!(pick(&["gzip;q=0"]), None, "q=0 refuses");
    assert_eq!(pick(&["zstd;q=0, gzip"]), Some("gzip"));
    assert_eq!(pick(&["*"]), Some("zstd"));
    assert_eq!(pick(&["*;q=0.1, gzip;q=0.5"]), Some("gzip"));
    assert_eq!(pick(&["*;q=0, br"]), Some("br"));
    assert_eq!(pick(&["identity"]), None);
    assert_eq!(pick(&["deflate, compress"]), None, "nothing we make");
    assert_eq!(
        pick(&["gzip", "br;q=0.9"]),
        Some("gzip"),
        "over several lines"
    );
}

#[test]
fn bad_q_values_are_ignored_not_errors() {
    for bad in [
        "gzip;q=2",
        "gzip;q=1.5",
        "gzip;q=abc",
        "gzip;q=0.1234",
        "gzip;q=",
        "gzip;q=-1",
        "gzip;q=1.001",
    ] {
        assert_eq!(pick(&[bad]), None, "{bad}");
    }
    assert_eq!(pick(&["gzip;q=abc, br;q=0.2"]), Some("br"));
    assert_eq!(pick(&[",,;;, gzip ;q=0.3 ,"]), Some("gzip"));
    assert_eq!(
        pick(&["gzip;level=9;q=0.4"]),
        Some("gzip"),
        "other parameters are ignored"
    );
    assert_eq!(qvalue("0.5"), Some(500));
    assert_eq!(qvalue("1.000"), Some(1000));
    assert_eq!(qvalue("0"), Some(0));
    assert_eq!(qvalue("0."), Some(0));
}

#[test]
fn content_type_patterns() {
    let spec = CompressionSpec {
        algorithms: ALL.to_vec(),
        min_bytes: 1024,
        content_types: DEFAULT_TYPES
            .iter()
            .map(|t| TypePattern::parse(t).unwrap())
            .collect(),
    };
    let ct = |v: &str| spec.compressible_type(Some(&HeaderValue::from_str(v).unwrap()));
    assert!(ct("text/html; charset=utf-8"));
    assert!(ct("Application/JSON"));
    assert!(ct("application/problem+json"));
    assert!(ct("application/atom+xml"));
    assert!(ct("image/svg+xml"));
    assert!(!ct("image/png"));
    assert!(!ct("application/octet-stream"));
    assert!(!ct("application/zip"));
    assert!(
        !ct("text/event-stream"),
        "streams of events are never held back"
    );
    assert!(!spec.compressible_type(None));
    for bad in [
        "json",
        "text/",
        "/json",
        "text/**",
        "a b/c",
        "application/*+",
    ] {
        assert!(TypePattern::parse(bad).is_err(), "{bad}");
    }
}
