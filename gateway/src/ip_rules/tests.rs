use super::*;

fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
    let nets = |v: &[&str]| v.iter().map(|s| parse_net(s).unwrap()).collect();
    IpRules::compile(&IpRulesSpec {
        allow: nets(allow),
        deny: nets(deny),
    })
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn deny_wins_and_allow_lists_restrict() {
    let r = rules(
        &["10.0.0.0/8", "2001:db8::/32"],
        &["10.1.0.0/16", "10.9.9.9"],
    );
    let cases = [
        ("10.2.3.4", true),
        ("10.1.2.3", false),
        ("10.9.9.9", false),
        ("10.9.9.8", true),
        ("11.0.0.1", false),
        ("2001:db8::5", true),
        ("2001:db9::5", false),
        // An IPv4 client of a [::] listener.
        ("::ffff:10.2.3.4", true),
        ("::ffff:10.1.2.3", false),
    ];
    for (addr, want) in cases {
        assert_eq!(r.allows(ip(addr)), want, "{addr}");
    }
    assert!(!r.allows(None), "unknown address with an allow list");
}

#[test]
fn deny_only_rules_pass_everything_else() {
    let r = rules(&[], &["192.0.2.0/24"]);
    assert!(r.allows(ip("192.0.3.1")));
    assert!(!r.allows(ip("192.0.2.200")));
    assert!(r.allows(None));
    assert!(rules(&[], &[]).allows(ip("1.2.3.4")));
}

#[test]
fn overlapping_and_adjacent_networks_merge() {
    let r = rules(
        &["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "0.0.0.0/32"],
        &[],
    );
    for (addr, want) in [
        ("10.0.0.0", true),
        ("10.0.1.255", true),
        ("10.0.2.0", false),
        ("0.0.0.0", true),
        ("0.0.0.1", false),
        ("255.255.255.255", false),
    ] {
        assert_eq!(r.allows(ip(addr)), want, "{addr}");
    }
    let all = rules(&["0.0.0.0/0", "::/0"], &[]);
    assert!(all.allows(ip("255.255.255.255")));
    assert!(all.allows(ip("ffff::1")));
}

#[test]
fn bad_networks_are_refused() {
    for bad in [
        "10.0.0.0/33",
        "10.0.0.1/8",
        "300.1.1.1",
        "10.0.0.0/",
        "",
        "::/129",
    ] {
        assert!(parse_net(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_net("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
    assert!(parse_net("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
}
