use super::*;

fn table() -> Arc<ConsumerTable> {
    Arc::new(ConsumerTable::compile(&[
        ConsumerSpec {
            name: "acme".into(),
            groups: vec!["partners".into(), "gold".into()],
            keys: vec![digest(b"acme-key-1"), digest(b"acme-key-2")],
            disabled: false,
        },
        ConsumerSpec {
            name: "banned".into(),
            groups: vec!["partners".into()],
            keys: vec![digest(b"banned-key")],
            disabled: true,
        },
        ConsumerSpec {
            name: "intern".into(),
            groups: vec!["interns".into()],
            keys: vec![digest(b"intern-key")],
            disabled: false,
        },
    ]))
}

fn route(allow: &[&str], deny: &[&str]) -> RouteApiKey {
    RouteApiKey {
        spec: RouteApiKeySpec {
            sources: vec![
                KeySource::Header(HeaderName::from_static("x-api-key")),
                KeySource::Query("api_key".into()),
                KeySource::Cookie("key".into()),
            ],
            consumer_header: HeaderName::from_static("x-consumer"),
            allow_groups: allow.iter().map(|s| s.to_string()).collect(),
            deny_groups: deny.iter().map(|s| s.to_string()).collect(),
            strip: true,
        },
        table: table(),
    }
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

#[test]
fn keys_are_found_by_digest_at_any_source() {
    let r = route(&[], &[]);
    let name = |o: KeyOutcome| match o {
        KeyOutcome::Verified { consumer, source } => format!("{}@{source}", consumer.name),
        other => other.label().to_owned(),
    };
    assert_eq!(
        name(r.authenticate(&headers(&[("x-api-key", "acme-key-1")]), None)),
        "acme@0"
    );
    assert_eq!(
        name(r.authenticate(&HeaderMap::new(), Some("a=1&api_key=acme-key-2"))),
        "acme@1"
    );
    assert_eq!(
        name(r.authenticate(&HeaderMap::new(), Some("api_key=acme%2Dkey%2D2"))),
        "acme@1",
        "query values are percent-decoded"
    );
    assert_eq!(
        name(r.authenticate(&headers(&[("cookie", "a=b; key=intern-key")]), None)),
        "intern@2"
    );
    assert_eq!(name(r.authenticate(&HeaderMap::new(), None)), "missing");
    assert_eq!(
        name(r.authenticate(&headers(&[("x-api-key", "")]), None)),
        "missing"
    );
    assert_eq!(
        name(r.authenticate(&headers(&[("x-api-key", "nope")]), None)),
        "invalid"
    );
    let huge = "k".repeat(10 * 1024);
    assert_eq!(
        name(r.authenticate(&headers(&[("x-api-key", &huge)]), None)),
        "invalid"
    );
    assert_eq!(
        name(r.authenticate(&headers(&[("x-api-key", "banned-key")]), None)),
        "disabled"
    );
}

#[test]
fn two_keys_are_ambiguous_the_same_key_twice_is_not() {
    let r = route(&[], &[]);
    let h = headers(&[("x-api-key", "acme-key-1")]);
    assert!(matches!(
        r.authenticate(&h, Some("api_key=acme-key-2")),
        KeyOutcome::Ambiguous
    ));
    assert!(matches!(
        r.authenticate(&h, Some("api_key=acme-key-1")),
        KeyOutcome::Verified { source: 0, .. }
    ));
    let twice = headers(&[("x-api-key", "acme-key-1"), ("x-api-key", "intern-key")]);
    assert!(matches!(
        r.authenticate(&twice, None),
        KeyOutcome::Ambiguous
    ));
    assert!(matches!(
        r.authenticate(&HeaderMap::new(), Some("api_key=a&api_key=b")),
        KeyOutcome::Ambiguous
    ));
}

#[test]
fn groups() {
    let h = |k: &str| headers(&[("x-api-key", k)]);
    let partners = route(&["partners"], &[]);
    assert!(matches!(
        partners.authenticate(&h("acme-key-1"), None),
        KeyOutcome::Verified { .. }
    ));
    assert!(matches!(
        partners.authenticate(&h("intern-key"), None),
        KeyOutcome::Forbidden(_)
    ));
    let no_gold = route(&[], &["gold"]);
    assert!(matches!(
        no_gold.authenticate(&h("acme-key-1"), None),
        KeyOutcome::Forbidden(_)
    ));
    assert!(matches!(
        no_gold.authenticate(&h("intern-key"), None),
        KeyOutcome::Verified { .. }
    ));
    // Deny wins over allow.
    let both = route(&["partners"], &["gold"]);
    assert!(matches!(
        both.authenticate(&h("acme-key-1"), None),
        KeyOutcome::Forbidden(_)
    ));
}

#[test]
fn digests_and_keys_files() {
    let d = digest(b"secret");
    let text = hex::encode(d);
    assert_eq!(
        text,
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
    assert_eq!(parse_digest(&text.to_uppercase()).unwrap(), d);
    for bad in [
        "",
        "abc",
        &text[..63],
        &format!("{text}0"),
        &text.replace('2', "g"),
    ] {
        assert!(parse_digest(bad).is_err(), "{bad:?}");
    }
    let file = format!(
        "# partner keys\n\n{text}  # rotated 2026-11\n{}\n",
        hex::encode(digest(b"x"))
    );
    assert_eq!(parse_keys_file(&file).unwrap().len(), 2);
    let err = parse_keys_file(&format!("{text}\nnot-a-digest\n")).unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
}

#[test]
fn stripping_the_query_key() {
    assert_eq!(strip_query("/a?api_key=k&x=1", "api_key"), "/a?x=1");
    assert_eq!(strip_query("/a?x=1&api_key=k", "api_key"), "/a?x=1");
    assert_eq!(strip_query("/a?api_key=k", "api_key"), "/a");
    assert_eq!(strip_query("/a?api%5Fkey=k&y", "api_key"), "/a?y");
    assert_eq!(strip_query("/a", "api_key"), "/a");
    assert_eq!(strip_query("/a?api_keyx=1", "api_key"), "/a?api_keyx=1");
}
