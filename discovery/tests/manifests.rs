//! Offline checks of `manifests/`: every file parses as multi-document YAML, the
//! objects reference each other consistently (RBAC bindings, selectors, ports, volumes,
//! the gateway's control-plane URL), RBAC is read-only with exactly the verbs
//! discovery needs, and every Deployment is probed, hardened and sized. Then `kubectl`
//! maps every document through the fake API server's discovery documents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use discovery::fake::FakeApiServer;
use serde::Deserialize;
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            // The Helm chart's templates are not YAML until rendered; the plain
            // manifests are rendered from it (.ci/render-manifests) and checked here.
            if path.file_name().is_some_and(|n| n == "helm") {
                continue;
            }
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every object in `manifests/` with the file it came from.
fn objects() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    assert!(!files.is_empty(), "no manifests found");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                out.push((file.clone(), value));
            }
        }
    }
    out
}

fn find<'a>(objects: &'a [(PathBuf, Value)], kind: &str, name: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .collect()
}

fn one<'a>(objects: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    let found = find(objects, kind, name);
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {}",
        found.len()
    );
    found[0]
}

fn strs(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The verbs a role grants on `group`/`resource`.
fn verbs(role: &Value, group: &str, resource: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        if strs(&rule["apiGroups"]).contains(group) && strs(&rule["resources"]).contains(resource) {
            out.extend(strs(&rule["verbs"]));
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const NAMESPACED: &[&str] = &[
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Role",
    "RoleBinding",
    "NetworkPolicy",
];

#[test]
fn manifests_parse_and_name_every_object() {
    let objects = objects();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        set(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    for (file, v) in &objects {
        let f = file.display();
        assert!(v["apiVersion"].is_string(), "{f}: no apiVersion");
        assert!(v["metadata"]["name"].is_string(), "{f}: no name");
        let kind = v["kind"].as_str().unwrap();
        assert_eq!(
            v["metadata"]["namespace"].is_string(),
            NAMESPACED.contains(&kind),
            "{f}: {kind} namespace"
        );
    }
    // The namespace is created before anything is put in it (files apply in name order).
    let first = &objects[0].1;
    // Sample services and the namespaced RBAC variant are opt-in: in subdirectories,
    // which `kubectl apply -f manifests/` does not descend into.
    for (file, v) in &objects {
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
        if ns == "shop" || v["kind"] == "Namespace" && v["metadata"]["name"] == "shop" {
            assert_ne!(
                file.parent().unwrap(),
                manifests_dir(),
                "{}",
                file.display()
            );
        }
    }
    assert_eq!(first["kind"], "Namespace");
    assert_eq!(first["metadata"]["name"], "gateway-system");
}

fn check_discovery_rules(role: &Value) {
    let name = &role["metadata"]["name"];
    assert_eq!(
        verbs(role, "discovery.k8s.io", "endpointslices"),
        set(&["list", "watch"]),
        "{name}"
    );
    assert_eq!(
        verbs(role, "", "services"),
        set(&["get", "list", "watch"]),
        "{name}"
    );
    assert_eq!(
        verbs(role, "", "endpoints"),
        set(&["list", "watch"]),
        "{name}"
    );
    // Read-only: nothing else, and no wildcard.
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strs(&rule[field]).contains("*"),
                "{name}: wildcard {field}"
            );
        }
        let write: BTreeSet<String> = strs(&rule["verbs"])
            .into_iter()
            .filter(|v| !["get", "list", "watch"].contains(&v.as_str()))
            .collect();
        assert!(write.is_empty(), "{name}: write verbs {write:?}");
    }
}

fn check_binding(objects: &[(PathBuf, Value)], binding: &Value, role_kind: &str) {
    assert_eq!(binding["roleRef"]["kind"], role_kind);
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    let role = one(
        objects,
        role_kind,
        binding["roleRef"]["name"].as_str().unwrap(),
    );
    if role_kind == "Role" {
        assert_eq!(
            role["metadata"]["namespace"],
            binding["metadata"]["namespace"]
        );
    }
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    let sa = one(
        objects,
        "ServiceAccount",
        subjects[0]["name"].as_str().unwrap(),
    );
    assert_eq!(sa["metadata"]["namespace"], subjects[0]["namespace"]);
}

#[test]
fn rbac_is_read_only_and_bound_to_the_discovery_service_account() {
    let objects = objects();
    check_discovery_rules(one(&objects, "ClusterRole", "gateway-discovery"));
    check_discovery_rules(one(&objects, "Role", "gateway-discovery"));
    check_binding(
        &objects,
        one(&objects, "ClusterRoleBinding", "gateway-discovery"),
        "ClusterRole",
    );
    check_binding(
        &objects,
        one(&objects, "RoleBinding", "gateway-discovery"),
        "Role",
    );
    // The namespaced variant lives apart, so `kubectl apply -f manifests/` applies
    // the cluster-wide one only.
    for (file, v) in &objects {
        if v["kind"] == "Role" || v["kind"] == "RoleBinding" {
            assert!(
                file.parent().unwrap().ends_with("namespaced"),
                "{}",
                file.display()
            );
        }
    }
}

fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .unwrap_or_else(|| panic!("no container port named {port}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The ConfigMap file mounted into `deployment` at `dir`, parsed.
fn mounted_config(objects: &[(PathBuf, Value)], deployment: &Value, file: &str) -> Value {
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let path = Path::new(file);
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{file} is not under a volume mount"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let map = one(
        objects,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    let key = path.file_name().unwrap().to_str().unwrap();
    serde_yaml_ng::from_str(map["data"][key].as_str().unwrap()).unwrap()
}

/// `file` is inside a read-only mount of the Secret `secret`.
fn assert_secret_file(deployment: &Value, file: &str, secret: &str) {
    let pod = &deployment["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(file).starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{file} is not mounted"));
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], secret);
    assert_eq!(Path::new(file).file_name().unwrap(), "token");
}

#[test]
fn deployments_are_probed_hardened_sized_and_wired() {
    let objects = objects();
    let deployments: Vec<&Value> = objects
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "Deployment")
        .collect();
    assert!(deployments.len() >= 2);
    for deployment in &deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (k, v) in deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&labels[k], v, "{name}: selector does not match the pod");
        }
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert!(c["readinessProbe"]["httpGet"]["path"].is_string(), "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        container_port(c, &c["readinessProbe"]["httpGet"]["port"]);
        container_port(c, &c["livenessProbe"]["httpGet"]["port"]);
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(strs(&sc["capabilities"]["drop"]), set(&["ALL"]), "{name}");
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"]["requests"][resource].is_string(),
                "{name}: {resource} request"
            );
        }
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{name}: memory limit"
        );
    }
    for name in ["discovery", "gateway"] {
        let c = &one(&objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
    }

    // Every Service selects the pods of a Deployment in its namespace and targets a
    // port those pods declare.
    for service in objects
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == "Service")
    {
        let name = &service["metadata"]["name"];
        let selector = service["spec"]["selector"].as_object().unwrap();
        let target = deployments
            .iter()
            .find(|d| {
                d["metadata"]["namespace"] == service["metadata"]["namespace"]
                    && selector
                        .iter()
                        .all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v)
            })
            .unwrap_or_else(|| panic!("Service {name} selects no Deployment"));
        let c = &target["spec"]["template"]["spec"]["containers"][0];
        for port in service["spec"]["ports"].as_array().unwrap() {
            container_port(c, &port["targetPort"]);
        }
    }

    // Discovery: its service account, its config's port, its token.
    let discovery = one(&objects, "Deployment", "discovery");
    let pod = &discovery["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "discovery");
    let config = mounted_config(&objects, discovery, "/etc/discovery/discovery.yaml");
    let command = strs(&pod["containers"][0]["command"]);
    assert!(
        command.contains("/etc/discovery/discovery.yaml"),
        "{command:?}"
    );
    let listen_port: u64 = config["listen"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(
        container_port(&pod["containers"][0], &Value::from("https")),
        listen_port
    );
    let token = config["token_file"].as_str().unwrap();
    assert_secret_file(discovery, token, "discovery-token");

    // Gateway: control-plane mode against the discovery Service, the same token,
    // only Kubernetes upstreams, and no API credentials of its own.
    let gateway = one(&objects, "Deployment", "gateway");
    let gpod = &gateway["spec"]["template"]["spec"];
    assert_eq!(gpod["automountServiceAccountToken"], false);
    let config = mounted_config(&objects, gateway, "/etc/gateway/gateway.yaml");
    let control = &config["discovery"]["control_plane"];
    let service = one(&objects, "Service", "discovery");
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        control["url"],
        format!(
            "https://discovery.{}:{port}",
            service["metadata"]["namespace"].as_str().unwrap()
        )
    );
    assert_secret_file(
        gateway,
        control["token_file"].as_str().unwrap(),
        "discovery-token",
    );
    // Every upstream is a Service port that the manifests (examples/shop.yaml) define.
    for (name, upstream) in config["upstreams"].as_object().unwrap() {
        let k = &upstream["kubernetes"];
        let service = find(&objects, "Service", k["service"].as_str().unwrap())
            .into_iter()
            .find(|s| s["metadata"]["namespace"] == k["namespace"])
            .unwrap_or_else(|| panic!("upstream {name}: no Service {k}"));
        let ports = service["spec"]["ports"].as_array().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == k["port"] || p["port"] == k["port"]),
            "upstream {name}: Service has no port {}",
            k["port"]
        );
    }
    // Admin (probes, metrics) stays off the public Service.
    let public = one(&objects, "Service", "gateway");
    assert!(
        public["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["targetPort"] != "admin")
    );

    // The disruption budget and autoscaler target the gateway.
    let pdb = one(&objects, "PodDisruptionBudget", "gateway");
    let glabels = &gateway["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&glabels[k], v);
    }
    let hpa = one(&objects, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "gateway");
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
    assert!(min >= 2, "one replica cannot honour the disruption budget");
    assert!(hpa["spec"]["maxReplicas"].as_u64().unwrap() >= min);
}

/// kubectl maps every manifest through the fake's discovery documents (client-side
/// dry run; `--validate=false` because schema validation needs the OpenAPI document,
/// which the fake does not serve).
#[tokio::test]
async fn kubectl_dry_run_maps_every_manifest() {
    let kubectl = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("kubectl"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("kubectl is not installed: run .ci/deps (Debian package kubernetes-client)")
        });
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig_yaml()).unwrap();
    let mut expected: Vec<String> = objects()
        .iter()
        .map(|(_, v)| v["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    for verb in ["apply", "create"] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&kubectl)
                .env("KUBECONFIG", dir.path().join("kubeconfig"))
                .env("HOME", dir.path())
                .arg("--cache-dir")
                .arg(dir.path().join("cache"))
                .args([verb, "--dry-run=client", "--validate=false", "-o", "name"])
                // Every manifest file, not `-R manifests/`: the chart's templates
                // under manifests/helm are not Kubernetes objects until rendered.
                .args(
                    files
                        .iter()
                        .flat_map(|f| [std::ffi::OsStr::new("-f"), f.as_os_str()]),
                )
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kubectl did not finish")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl {verb}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut names: Vec<String> = stdout
            .lines()
            .map(|l| l.rsplit_once('/').unwrap().1.to_owned())
            .collect();
        names.sort();
        assert_eq!(names, expected, "kubectl {verb}");
    }
    // A dry run writes nothing.
    assert!(
        server
            .get("v1", "Namespace", "", "gateway-system")
            .is_none()
    );
}

/// The sample services trust identity headers because only gateway pods can reach them
/// (plus orders -> catalog, which orders needs for prices).
#[test]
fn sample_services_admit_only_the_gateway() {
    let objects = objects();
    let all = one(&objects, "NetworkPolicy", "only-from-gateway");
    assert_eq!(all["metadata"]["namespace"], "shop");
    assert_eq!(all["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(all["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let from = &all["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1, "one peer: gateway pods");
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "gateway-system"
    );
    let gateway = one(&objects, "Deployment", "gateway");
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        gateway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    let catalog = one(&objects, "NetworkPolicy", "catalog-from-orders");
    assert_eq!(
        catalog["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "orders"
    );
}

/// `file` is Secret `secret`'s key `key`, in a read-only mount that projects only the
/// keys listed in `allowed`.
fn assert_secret_key(deployment: &Value, file: &str, secret: &str, key: &str, allowed: &[&str]) {
    let pod = &deployment["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(file).starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{file} is not mounted"));
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], secret, "{file}");
    let items = volume["secret"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: the volume must list the keys it projects"));
    let name = Path::new(file).file_name().unwrap().to_str().unwrap();
    assert!(
        items.iter().any(|i| i["key"] == key && i["path"] == name),
        "{file}: {items:?}"
    );
    for item in items {
        assert!(
            allowed.contains(&item["key"].as_str().unwrap()),
            "{file}: {item}"
        );
    }
}

/// The control-plane stream: served over TLS on the port the Service and the gateways
/// use, probed over HTTPS, the gateways verifying it with the CA alone (never the
/// key), and only gateway pods admitted to it.
#[test]
fn control_plane_stream_is_tls_and_fenced() {
    let objects = objects();
    let discovery = one(&objects, "Deployment", "discovery");
    let config = mounted_config(&objects, discovery, "/etc/discovery/discovery.yaml");
    let tls = &config["tls"];
    let allowed = ["tls.crt", "tls.key"];
    assert_secret_key(
        discovery,
        tls["cert_file"].as_str().expect("tls.cert_file"),
        "discovery-tls",
        "tls.crt",
        &allowed,
    );
    assert_secret_key(
        discovery,
        tls["key_file"].as_str().expect("tls.key_file"),
        "discovery-tls",
        "tls.key",
        &allowed,
    );
    assert!(config["insecure_plaintext"].is_null() && config["insecure_no_token"].is_null());
    let container = &discovery["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }

    let gateway = one(&objects, "Deployment", "gateway");
    let gconfig = mounted_config(&objects, gateway, "/etc/gateway/gateway.yaml");
    let control = &gconfig["discovery"]["control_plane"];
    assert!(control["url"].as_str().unwrap().starts_with("https://"));
    assert!(control["insecure_plaintext"].is_null());
    assert_secret_key(
        gateway,
        control["ca_file"].as_str().expect("control_plane.ca_file"),
        "discovery-tls",
        "ca.crt",
        &["ca.crt"],
    );

    let policy = one(&objects, "NetworkPolicy", "discovery");
    let labels = &discovery["spec"]["template"]["metadata"]["labels"];
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the policy selects the discovery pods");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let stream_port = container_port(container, &Value::from("https"));
    let glabels = &gateway["spec"]["template"]["metadata"]["labels"];
    let mut rules = 0;
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .expect("every rule names its ports")
            .iter()
            .map(|p| container_port(container, &p["port"]))
            .collect();
        if !ports.contains(&stream_port) {
            continue;
        }
        rules += 1;
        let from = rule["from"]
            .as_array()
            .expect("the stream rule names its peers");
        assert!(!from.is_empty());
        for peer in from {
            assert!(
                peer["namespaceSelector"].is_null(),
                "same namespace only: {peer}"
            );
            let selector = peer["podSelector"]["matchLabels"].as_object().unwrap();
            assert!(!selector.is_empty());
            for (k, v) in selector {
                assert_eq!(&glabels[k], v, "peers are the gateway pods: {peer}");
            }
        }
    }
    assert_eq!(rules, 1, "one rule admits the stream port");
}

/// The gateway's admin API needs a bearer token from a Secret, and only the scraping
/// namespaces and the gateway tier reach port 9901; the proxy port stays open.
#[test]
fn gateway_admin_is_token_protected_and_fenced() {
    let objects = objects();
    let gateway = one(&objects, "Deployment", "gateway");
    let config = mounted_config(&objects, gateway, "/etc/gateway/gateway.yaml");
    let admin = &config["admin"];
    assert!(admin["insecure_no_auth"].is_null(), "{admin}");
    assert_secret_file(
        gateway,
        admin["token_file"].as_str().expect("admin.token_file"),
        "gateway-admin-token",
    );
    let policy = one(&objects, "NetworkPolicy", "gateway-admin");
    assert_eq!(policy["metadata"]["namespace"], "gateway-system");
    let labels = &gateway["spec"]["template"]["metadata"]["labels"];
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the policy selects the gateway pods");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    let admin_port = container_port(container, &Value::from("admin"));
    let mut admin_rules = 0;
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| container_port(container, &p["port"]))
            .collect();
        if ports.contains(&admin_port) {
            admin_rules += 1;
            let from = rule["from"].as_array().expect("admin rule names its peers");
            assert!(!from.is_empty());
            assert!(
                from.iter()
                    .all(|f| f["namespaceSelector"]["matchLabels"].is_object()),
                "admin peers are named namespaces: {rule}"
            );
        }
    }
    assert_eq!(admin_rules, 1, "one rule admits the admin port");
}
