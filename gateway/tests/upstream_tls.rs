//! TLS to upstreams through the real gateway binary: an HTTPS upstream verified with a
//! `ca_file` (rcgen certificates), mTLS with a client certificate the upstream checks,
//! and refusals: an upstream whose certificate another CA signed, or one that wants a
//! client certificate the gateway does not send, gets 502 JSON (counted); bad TLS files
//! are config errors naming the file, and a reload with one keeps the running config.
//! Also `protocol: h2` over TLS (ALPN h2) to an upstream that speaks only HTTP/2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::Gateway;
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, as (certificate PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn der_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// A TLS acceptor with `cert` (and, with `client_ca`, required client certificates
/// from that CA) offering `alpn`, and the loopback listener it serves.
async fn tls_listener(
    cert: (String, String),
    client_ca: Option<&Ca>,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::TlsAcceptor,
    tokio::net::TcpListener,
    SocketAddr,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.1.as_bytes())
        .map_err(|_| ())
        .unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(der_certs(&cert.0), key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        listener,
        addr,
    )
}

/// An HTTPS/1.1 upstream with `cert`; with `client_ca`, it requires a client
/// certificate from that CA. Answers each request with `mtls=<yes|no>`.
async fn https_upstream(cert: (String, String), client_ca: Option<&Ca>) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(cert, client_ca, &[]).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mtls = tls.get_ref().1.peer_certificates().is_some();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("mtls={}", if mtls { "yes" } else { "no" });
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_verified_by_ca_with_mtls_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let other_ca = Ca::new();
    let clients = Ca::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let (client_cert, client_key) = clients.issue(&["gateway"]);
    let client_cert = write(dir.path(), "client.pem", &client_cert);
    let client_key = write(dir.path(), "client.key", &client_key);

    let plain = https_upstream(ca.issue(&["localhost", "127.0.0.1"]), None).await;
    let mutual = https_upstream(ca.issue(&["api.internal"]), Some(&clients)).await;
    let foreign = https_upstream(other_ca.issue(&["127.0.0.1"]), None).await;

    let template = format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  plain: {{tls: {{ca_file: "{ca_file}"}}, endpoints: [{{address: "{plain}"}}]}}
  mutual:
    tls: {{sni: api.internal, ca_file: "{ca_file}", client_cert_file: "{client_cert}", client_key_file: "{client_key}"}}
    endpoints: [{{address: "{mutual}"}}]
  no-client-cert:
    tls: {{sni: api.internal, ca_file: "{ca_file}"}}
    endpoints: [{{address: "{mutual}"}}]
  foreign: {{tls: {{ca_file: "{ca_file}"}}, endpoints: [{{address: "{foreign}"}}]}}
  skip: {{tls: {{insecure_skip_verify: true}}, endpoints: [{{address: "{foreign}"}}]}}
routes:
  - {{id: plain, match: {{path: {{prefix: /plain}}}}, upstream: plain}}
  - {{id: mutual, match: {{path: {{prefix: /mutual}}}}, upstream: mutual}}
  - {{id: no-client-cert, match: {{path: {{prefix: /no-client-cert}}}}, upstream: no-client-cert}}
  - {{id: foreign, match: {{path: {{prefix: /foreign}}}}, upstream: foreign}}
  - {{id: skip, match: {{path: {{prefix: /skip}}}}, upstream: skip}}
"#
    );
    let gw = Gateway::start(&template).await;
    let http = reqwest::Client::new();

    let r = http.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "mtls=no");
    let r = http.get(gw.url("/mutual")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "mtls=yes");
    // Verification off, only because the config says `true`.
    let r = http.get(gw.url("/skip")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Another CA's certificate, or no client certificate for an mTLS upstream: 502 JSON.
    for path in ["/foreign", "/no-client-cert"] {
        let r = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_unavailable", "{path}");
    }
    gw.wait_metrics(&[
        "gateway_requests_total{method=\"GET\",route=\"foreign\",status_class=\"5xx\"} 1",
        "gateway_requests_total{method=\"GET\",route=\"no-client-cert\",status_class=\"5xx\"} 1",
    ])
    .await;

    // A reload with a CA file that is not a certificate is refused, naming the file;
    // the running config keeps serving.
    let junk = write(dir.path(), "junk.pem", "not a certificate\n");
    let bad = template.replace(&ca_file, &junk);
    common::write_atomic(&gw.config, &common::render(&bad, gw.port, gw.admin_port));
    let cfg = gw
        .wait_config("the reload to fail", |v| v.to_string().contains("junk.pem"))
        .await;
    assert!(cfg.to_string().contains("ca_file"), "{cfg:#}");
    let r = http.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn bad_tls_files_are_config_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, _) = ca.issue(&["a.test"]);
    let (_, other_key) = ca.issue(&["b.test"]);
    let cert = write(dir.path(), "leaf.pem", &cert);
    let other_key = write(dir.path(), "other.key", &other_key);
    let config = write(
        dir.path(),
        "gateway.yaml",
        &format!(
            r#"
listeners: [{{name: main, address: "127.0.0.1:8080"}}]
upstreams:
  missing: {{tls: {{ca_file: /nonexistent/ca.pem}}, endpoints: [{{address: "127.0.0.1:1"}}]}}
  mismatch:
    tls: {{client_cert_file: "{cert}", client_key_file: "{other_key}"}}
    endpoints: [{{address: "127.0.0.1:1"}}]
  half: {{tls: {{client_cert_file: "{cert}"}}, endpoints: [{{address: "127.0.0.1:1"}}]}}
  h2c-tls: {{protocol: h2c, tls: {{}}, endpoints: [{{address: "127.0.0.1:1"}}]}}
  bad-protocol: {{protocol: http2, endpoints: [{{address: "127.0.0.1:1"}}]}}
routes:
  - {{id: r, match: {{path: {{prefix: /}}}}, upstream: missing}}
"#
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check", &config])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for needle in [
        "upstreams.missing.tls.ca_file",
        "/nonexistent/ca.pem",
        "upstreams.mismatch.tls.client_key_file",
        "does not fit the certificate",
        "upstreams.half.tls.client_key_file",
        "upstreams.h2c-tls.protocol",
        "upstreams.bad-protocol.protocol",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Every error has its line and column.
    assert!(text.contains("gateway.yaml:4:"), "{text}");
}

/// An HTTPS upstream that speaks only HTTP/2 (ALPN h2): answers `h2 <path>`, with the
/// request's `:authority` host in `x-seen-host`.
async fn h2_tls_upstream(cert: (String, String)) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(cert, None, &[b"h2"]).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return;
                }
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let body = format!("h2 {}", req.uri().path());
                    let host = req.uri().host().unwrap_or("").to_owned();
                    let resp = http::Response::builder()
                        .status(200)
                        .header("x-seen-host", host)
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(resp, false) else {
                        continue;
                    };
                    let _ = send.send_data(bytes::Bytes::from(body), true);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstreams_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let up = h2_tls_upstream(ca.issue(&["api.internal"])).await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{name: main, address: "127.0.0.1:{{PORT}}"}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
upstreams:
  h2:
    protocol: h2
    tls: {{sni: api.internal, ca_file: "{ca_file}"}}
    endpoints: [{{address: "{up}"}}]
  h1-to-h2-only:
    tls: {{sni: api.internal, ca_file: "{ca_file}"}}
    endpoints: [{{address: "{up}"}}]
routes:
  - {{id: h2, match: {{path: {{prefix: /h2}}}}, upstream: h2}}
  - {{id: h1, match: {{path: {{prefix: /h1}}}}, upstream: h1-to-h2-only}}
"#
    ))
    .await;
    let http = reqwest::Client::new();
    // An HTTP/1.1 client, an HTTP/2 upstream over TLS (ALPN h2), several requests on the
    // one multiplexed connection.
    for i in 0..5 {
        let r = http.get(gw.url(&format!("/h2/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", gw.log());
        let body = r.text().await.unwrap();
        assert_eq!(body, format!("h2 /h2/{i}"));
    }
    // The same upstream as HTTP/1.1 (the default): ALPN offers http/1.1, the upstream
    // refuses it, and the client gets a 502 JSON answer, not a hang.
    let r = http.get(gw.url("/h1")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
}
