//! TLS listeners through the real gateway binary: SNI picks the certificate (exact,
//! wildcard, default), ALPN h2, 421 for another certificate's host, X-Forwarded-Proto
//! and redirects on https, mTLS, bad input closed and counted, config errors naming the
//! file, certificate rotation (a Kubernetes Secret symlink swap, a bad pair kept
//! out, SIGHUP) under a running connection, and the served certificates' expiry in
//! `/admin/status`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "protocols/client.rs"]
mod client;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use client::{h2, h2_request, http1_request, served_names, tls_config, tls_connect};
use common::{Gateway, echo_upstream};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`: (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names` valid until `not_after`: (cert PEM, key PEM).
    fn leaf_until(&self, names: &[&str], not_after: std::time::SystemTime) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

fn client_identity(
    pem: &(String, String),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(pem.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (
        chain,
        PrivateKeyDer::from_pem_slice(pem.1.as_bytes()).unwrap(),
    )
}

fn write_pair(dir: &Path, name: &str, pem: &(String, String)) -> (String, String) {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &pem.0).unwrap();
    std::fs::write(&k, &pem.1).unwrap();
    (c.display().to_string(), k.display().to_string())
}

const TLS12_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_misdirected_requests_and_bad_input() {
    let up = echo_upstream("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let api = write_pair(certs.path(), "api", &ca.leaf(&["api.test"], false));
    let shop = write_pair(
        certs.path(),
        "shop",
        &ca.leaf(&["shop.test", "*.shop.test"], false),
    );
    let strict_port = common::free_port();
    let template = format!(
        r#"
listeners:
  - name: https
    address: "127.0.0.1:{{PORT}}"
    tls:
      certificates:
        - {{cert_file: "{}", key_file: "{}"}}
        - {{cert_file: "{}", key_file: "{}"}}
  - name: strict
    address: "127.0.0.1:{strict_port}"
    tls:
      certificates: [{{cert_file: "{}", key_file: "{}"}}]
      min_version: "1.3"
      alpn: [http/1.1]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - {{id: moved, match: {{path: {{exact: /old}}}}, redirect: {{path: /new}}}}
  - {{id: shop, match: {{hosts: ["*.shop.test", "shop.test"], path: {{prefix: /}}}}, upstream: app, request_headers: {{set: {{x-site: shop}}}}}}
  - {{id: root, match: {{path: {{prefix: /}}}}, upstream: app}}
"#,
        api.0, api.1, shop.0, shop.1, api.0, api.1
    );
    let gw = Gateway::start_with_env(&template, &[("RUST_LOG", "info,gateway=debug")]).await;
    let roots = [ca.der()];
    let both = tls_config(&roots, &["h2", "http/1.1"], None, TLS12_13);
    let h1 = tls_config(&roots, &["http/1.1"], None, TLS12_13);

    // SNI picks the certificate: exact, wildcard, unknown -> the first, none -> the first.
    for (sni, want) in [
        ("api.test", "api.test"),
        ("www.shop.test", "shop.test"),
        ("shop.test", "shop.test"),
        ("other.test", "api.test"),
        ("127.0.0.1", "api.test"),
    ] {
        let s = tls_connect(gw.port, sni, client::tls_config_any(&["http/1.1"]))
            .await
            .unwrap();
        assert_eq!(served_names(&s)[0], want, "SNI {sni}");
    }

    // HTTP/1.1 over TLS: routed by Host, forwarded as https.
    let mut s = tls_connect(gw.port, "www.shop.test", h1.clone())
        .await
        .unwrap();
    let r = http1_request(&mut s, "www.shop.test", "/cart").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["headers"]["x-site"], "shop");
    // A host another certificate serves: 421, JSON; the same certificate's host is fine.
    let r = http1_request(&mut s, "api.test", "/x").await;
    assert_eq!(r.status, 421);
    assert_eq!(r.json()["error"]["code"], "misdirected_request");
    let r = http1_request(&mut s, "shop.test", "/x").await;
    assert_eq!(r.status, 200);
    // A host no certificate names routes as usual; redirects stay on https.
    let r = http1_request(&mut s, "elsewhere.test", "/old").await;
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["location"], "https://elsewhere.test/new");

    // ALPN h2: HTTP/2 over TLS; :authority is checked against the SNI too.
    let s = tls_connect(gw.port, "api.test", both.clone())
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let c = h2(s).await;
    let r = h2_request(&c, "GET", "https://api.test/h2", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    let r = h2_request(&c, "GET", "https://www.shop.test/h2", &[]).await;
    assert_eq!(r.status, 421);

    // The strict listener: TLS 1.3 only, HTTP/1.1 only.
    let tls12 = tls_config(&roots, &["http/1.1"], None, &[&rustls::version::TLS12]);
    assert!(tls_connect(strict_port, "api.test", tls12).await.is_err());
    let s = tls_connect(strict_port, "api.test", both.clone())
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let h2_only = tls_config(&roots, &["h2"], None, TLS12_13);
    assert!(tls_connect(strict_port, "api.test", h2_only).await.is_err());

    // Plain HTTP on the TLS port: a JSON 400, then a close.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await
        .unwrap();
    let r = client::read_http1(&mut raw).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "plain_http_on_tls_port");
    // Garbage: closed without a byte.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    raw.write_all(&[0u8; 64]).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(n.is_err() || buf.is_empty());

    let text = gw
        .wait_metrics(&[
            "gateway_tls_handshakes_total{listener=\"https\",sni=\"matched\"}",
            "gateway_tls_handshakes_total{listener=\"https\",sni=\"unmatched\"} 1",
            "gateway_tls_handshakes_total{listener=\"https\",sni=\"absent\"} 1",
            "gateway_tls_handshake_failures_total{listener=\"https\",reason=\"not_tls\"} 2",
            "gateway_tls_handshake_failures_total{listener=\"strict\",reason=\"no_common_protocol\"} 2",
            "gateway_requests_by_protocol_total{protocol=\"h2\",tls=\"true\"} 2",
            "gateway_tls_certificate_expiry_seconds{listener=\"https\",name=\"api.test\"}",
            "gateway_tls_certificate_expiry_seconds{listener=\"https\",name=\"shop.test\"}",
        ])
        .await;
    let expiry: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(
                "gateway_tls_certificate_expiry_seconds{listener=\"https\",name=\"api.test\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "{expiry} <= {now}");
    assert!(gw.log().contains("TLS handshake failed"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_verified_client_certificates_only() {
    let up = echo_upstream("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("another CA");
    let api = write_pair(certs.path(), "api", &ca.leaf(&["api.test"], false));
    let ca_file = certs.path().join("clients.pem");
    std::fs::write(&ca_file, clients.cert.pem()).unwrap();
    let template = format!(
        r#"
listeners:
  - name: mtls
    address: "127.0.0.1:{{PORT}}"
    tls: {{certificates: [{{cert_file: "{}", key_file: "{}"}}], client_ca_file: "{}"}}
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - {{id: root, match: {{path: {{prefix: /}}}}, upstream: app}}
"#,
        api.0,
        api.1,
        ca_file.display()
    );
    let gw = Gateway::start(&template).await;
    let roots = [ca.der()];
    let good = client_identity(&clients.leaf(&["client.test"], false));
    let config = tls_config(&roots, &["http/1.1"], Some(good), TLS12_13);
    let mut s = tls_connect(gw.port, "api.test", config).await.unwrap();
    assert_eq!(http1_request(&mut s, "api.test", "/ok").await.status, 200);

    // No certificate, or one from another CA: the handshake fails (in TLS 1.3 the
    // client learns it on its first read).
    let strangers = client_identity(&other.leaf(&["client.test"], false));
    for identity in [None, Some(strangers)] {
        let config = tls_config(&roots, &["http/1.1"], identity, TLS12_13);
        let refused = match tls_connect(gw.port, "api.test", config).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                !matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap(), Ok(n) if n > 0)
            }
        };
        assert!(refused);
    }
    gw.wait_metrics(&[
        "gateway_tls_handshake_failures_total{listener=\"mtls\",reason=\"client_certificate\"} 2",
    ])
    .await;
}

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn certificate_problems_are_config_errors_naming_the_file() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let good = write_pair(certs.path(), "good", &ca.leaf(&["api.test"], false));
    let expired = write_pair(certs.path(), "expired", &ca.leaf(&["api.test"], true));
    let other = write_pair(certs.path(), "other", &ca.leaf(&["api.test"], false));
    let garbage = certs.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let listener = |cert: &str, key: &str| {
        format!(
            "listeners:\n  - name: https\n    address: 127.0.0.1:8443\n    tls: {{certificates: [{{cert_file: \"{cert}\", key_file: \"{key}\"}}]}}\n"
        )
    };
    let (ok, text) = check(&listener(&good.0, &good.1));
    assert!(ok, "{text}");
    for (config, file, field) in [
        (
            listener(&expired.0, &expired.1),
            expired.0.clone(),
            "cert_file",
        ),
        (listener(&good.0, &other.1), other.1.clone(), "key_file"),
        (
            listener(&garbage.display().to_string(), &good.1),
            garbage.display().to_string(),
            "cert_file",
        ),
        (
            listener("/nonexistent/x.crt", &good.1),
            "/nonexistent/x.crt".to_owned(),
            "cert_file",
        ),
    ] {
        let (ok, text) = check(&config);
        assert!(!ok, "{config}");
        assert!(text.contains(&file), "{text}");
        assert!(
            text.contains(&format!("listeners[0].tls.certificates[0].{field}")),
            "{text}"
        );
    }
    let (ok, text) = check(&listener(&expired.0, &expired.1));
    assert!(!ok && text.contains("expired"), "{text}");
    let (ok, text) = check(&format!(
        "{}      min_version: \"1.1\"\n",
        listener(&good.0, &good.1)
            .replace("tls: {", "tls:\n      {")
            .replace("}]}", "}]\n")
            .replace("{certificates:", "certificates:")
    ));
    assert!(!ok, "{text}");
    // h2c is for plaintext listeners.
    let (ok, text) = check(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:8443\n    h2c: true\n    tls: {{certificates: [{{cert_file: \"{}\", key_file: \"{}\"}}]}}\n",
        good.0, good.1
    ));
    assert!(!ok && text.contains("listeners[0].h2c"), "{text}");
}

/// Poll new handshakes until the served leaf is `want` (DER), up to 10 s.
async fn wait_served(port: u16, config: std::sync::Arc<rustls::ClientConfig>, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls_connect(port, "api.test", config.clone()).await.unwrap();
        if s.get_ref().1.peer_certificates().unwrap()[0].as_ref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A Kubernetes Secret volume: `tls.crt` -> `..data/tls.crt`, `..data` -> a
/// timestamped directory, swapped by renaming a new `..data` symlink over the old.
fn secret_swap(dir: &Path, generation: u32, pem: &(String, String)) {
    let data = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &pem.0).unwrap();
    std::fs::write(data.join("tls.key"), &pem.1).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(f), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let up = echo_upstream("app").await;
    let secret = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let v1 = ca.leaf(&["api.test"], false);
    secret_swap(secret.path(), 1, &v1);
    let crt = secret.path().join("tls.crt");
    let key = secret.path().join("tls.key");
    let template = format!(
        r#"
server: {{reload_debounce: 20ms}}
listeners:
  - name: https
    address: "127.0.0.1:{{PORT}}"
    tls: {{certificates: [{{cert_file: "{}", key_file: "{}"}}]}}
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - {{id: root, match: {{path: {{prefix: /}}}}, upstream: app}}
"#,
        crt.display(),
        key.display()
    );
    let gw = Gateway::start(&template).await;
    let config = tls_config(&[ca.der()], &["http/1.1"], None, TLS12_13);
    let mut running = tls_connect(gw.port, "api.test", config.clone())
        .await
        .unwrap();
    assert_eq!(
        http1_request(&mut running, "api.test", "/1").await.status,
        200
    );
    assert_eq!(
        running.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        der_of(&v1.0)
    );

    // The Secret is updated: new handshakes get the new pair...
    let v2 = ca.leaf(&["api.test"], false);
    secret_swap(secret.path(), 2, &v2);
    wait_served(gw.port, config.clone(), &der_of(&v2.0)).await;
    // ...and the connection from before keeps working.
    assert_eq!(
        http1_request(&mut running, "api.test", "/2").await.status,
        200
    );

    // A bad pair (a key of another certificate) is refused and reported; v2 stays.
    let failures = gw.metric("gateway_config_reload_failures_total").await;
    let v3 = ca.leaf(&["api.test"], false);
    secret_swap(secret.path(), 3, &(v3.0.clone(), v2.1.clone()));
    let cfg = gw
        .wait_config("the bad pair's rejection", |v| {
            v["last_reload"]["error_text"]
                .to_string()
                .contains("does not match")
        })
        .await;
    assert!(cfg.to_string().contains("tls.key"), "{cfg}");
    assert!(gw.metric("gateway_config_reload_failures_total").await > failures);
    let s = tls_connect(gw.port, "api.test", config.clone())
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        der_of(&v2.0)
    );

    // Files rewritten in place, then SIGHUP: the good pair is served.
    let v4 = ca.leaf(&["api.test"], false);
    std::fs::write(secret.path().join("..gen_3/tls.crt"), &v4.0).unwrap();
    std::fs::write(secret.path().join("..gen_3/tls.key"), &v4.1).unwrap();
    gw.signal("HUP");
    wait_served(gw.port, config.clone(), &der_of(&v4.0)).await;
    assert_eq!(
        http1_request(&mut running, "api.test", "/3").await.status,
        200
    );
}

/// A forward-auth check over TLS tells the auth service the request came over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_hears_https_from_a_tls_listener() {
    let up = echo_upstream("app").await;
    let (authz_addr, seen) = common::header_recorder("/check", &["x-forwarded-proto"]).await;
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let api = write_pair(certs.path(), "api", &ca.leaf(&["api.test"], false));
    let plain_port = common::free_port();
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: https
    address: "127.0.0.1:{{PORT}}"
    tls: {{certificates: [{{cert_file: "{}", key_file: "{}"}}]}}
  - {{name: plain, address: "127.0.0.1:{plain_port}"}}
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  app: {{endpoints: [{{address: "{up}"}}]}}
routes:
  - id: guarded
    match: {{path: {{prefix: /}}}}
    auth: {{forward: {{url: "http://{authz_addr}/check"}}}}
    upstream: app
"#,
        api.0, api.1
    ))
    .await;
    let roots = [ca.der()];
    let mut s = tls_connect(
        gw.port,
        "api.test",
        tls_config(&roots, &["http/1.1"], None, TLS12_13),
    )
    .await
    .unwrap();
    let r = http1_request(&mut s, "api.test", "/x").await;
    assert_eq!(r.status, 200, "{}", gw.log());
    let r = reqwest::get(format!("http://127.0.0.1:{plain_port}/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(*seen.lock().unwrap(), [["https"], ["http"]]);
}

/// `/admin/status` lists what the TLS listeners serve: one entry per certificate with
/// its listener, names, notAfter, the seconds left (computed per request), its file and
/// when it was loaded; a plaintext listener has none; a rotation shows the new pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_served_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    const TEN_DAYS: u64 = 10 * 86_400;
    let until = std::time::SystemTime::now() + Duration::from_secs(TEN_DAYS);
    let api = write_pair(
        certs.path(),
        "api",
        &ca.leaf_until(&["api.test", "*.api.test"], until),
    );
    let shop = write_pair(certs.path(), "shop", &ca.leaf(&["shop.test"], false));
    let plain_port = common::free_port();
    let template = format!(
        r#"
server: {{reload_debounce: 20ms}}
listeners:
  - name: plain
    address: "127.0.0.1:{plain_port}"
  - name: https
    address: "127.0.0.1:{{PORT}}"
    tls:
      certificates:
        - {{cert_file: "{}", key_file: "{}"}}
        - {{cert_file: "{}", key_file: "{}"}}
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
routes: [{{id: hello, direct_response: {{status: 200, body: hi}}}}]
"#,
        api.0, api.1, shop.0, shop.1
    );
    let gw = Gateway::start(&template).await;
    let s = gw.admin_json("/admin/status").await;
    let tls = s["tls"].as_array().unwrap();
    assert_eq!(tls.len(), 2, "{s:#}");
    let first = &tls[0];
    assert_eq!(first["listener"], "https");
    assert_eq!(first["name"], "api.test");
    assert_eq!(
        first["names"],
        serde_json::json!(["api.test", "*.api.test"])
    );
    assert_eq!(first["default"], true);
    assert_eq!(first["cert_file"], api.0.as_str());
    // The certificate ends ten days after it was made (to the second), and the gateway
    // was started and asked after that: at most ten days are left, and not much less.
    let left = first["seconds_left"].as_i64().unwrap();
    assert!(
        (TEN_DAYS as i64 - 3600..=TEN_DAYS as i64).contains(&left),
        "{left}"
    );
    let not_after = humantime::parse_rfc3339(first["not_after"].as_str().unwrap()).unwrap();
    let drift = not_after
        .duration_since(until - Duration::from_secs(1))
        .unwrap();
    assert!(drift <= Duration::from_secs(1), "{first}");
    let loaded_at = first["loaded_at"].as_str().unwrap().to_owned();
    humantime::parse_rfc3339(&loaded_at).unwrap();
    assert_eq!(tls[1]["name"], "shop.test");
    assert_eq!(tls[1]["default"], false);
    assert!(tls[1]["seconds_left"].as_i64().unwrap() > left);
    assert!(!s["tls"].to_string().contains("PRIVATE KEY"), "{s}");

    // The first pair is renewed in place: after the reload the status shows the
    // running runtime's new notAfter (a year out).
    let renewed = ca.leaf_until(
        &["api.test"],
        std::time::SystemTime::now() + Duration::from_secs(365 * 86_400),
    );
    std::fs::write(&api.1, &renewed.1).unwrap();
    std::fs::write(&api.0, &renewed.0).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.admin_json("/admin/status").await;
        if s["tls"][0]["seconds_left"].as_i64().unwrap() > 300 * 86_400 {
            assert_eq!(s["tls"][0]["names"], serde_json::json!(["api.test"]));
            break;
        }
        assert!(Instant::now() < deadline, "the renewal never showed: {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
