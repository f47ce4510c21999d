//! Every file in `config/` must pass `gateway check`, and `check` must fail, with
//! located messages, on a broken file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

#[test]
fn every_config_file_passes_check() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected config files in {:?}",
        config_dir()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gateway check failed:\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn check_fails_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{name: a, address: '127.0.0.1:1'}]\nroutes:\n  - id: x\n    upstream: missing\n",
    )
    .unwrap();
    let good = config_dir().join("local.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:4:5: routes[0].upstream: unknown upstream \"missing\"",
        bad.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

#[test]
fn explain_shows_route_actions_and_near_misses() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["explain", "--config"])
        .arg(config_dir().join("example.yaml"))
        .args([
            "GET",
            "http://api.example.com/api/users/7",
            "-H",
            "x-canary: always",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "result: route users-canary-header (routes[0]), proxy to upstream users-v2 as /users/7",
        "because: exact host; path prefix /api/users; 1 more matcher(s)",
        "rewrite: strip prefix /api",
        "upstream: users-v2",
        "users-api (routes[1]): matches too, but has lower precedence",
        "users-v2-split (routes[2]): path /api/users/7 does not match prefix /api/v2/users",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["explain", "--config"])
        .arg(config_dir().join("local.yaml"))
        .args(["POST", "http://localhost:8080/api/v2/orders"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "result: route orders (routes[3]), proxy to upstream orders as /v2/orders",
        "rate limit: orders-per-user (30 per 1m, burst 10, local)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["explain", "--config"])
        .arg(config_dir().join("example.yaml"))
        .args(["GET", "/nowhere"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("result: 404 route_not_found"), "{text}");
}

/// The gateway config inside the Kubernetes manifests (a ConfigMap's `gateway.yaml`)
/// must pass `gateway check` too: it is what the cluster runs.
#[test]
fn manifest_gateway_configs_pass_check() {
    use serde::Deserialize;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
            let Some(config) = value["data"]["gateway.yaml"].as_str() else {
                continue;
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let file = tmp.path().join(format!("{name}.gateway.yaml"));
            std::fs::write(&file, config).unwrap();
            checked.push(file);
        }
    }
    assert!(
        !checked.is_empty(),
        "no ConfigMap with gateway.yaml in {dir:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .args(&checked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
