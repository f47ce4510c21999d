#!/usr/bin/env python3
"""Cross-check rendered Kubernetes objects where no schema validator looks.

Usage: crosscheck.py FILE... (multi-document YAML; every file is one rendered set).

- every Deployment/StatefulSet/DaemonSet selector matches its own pod template, and
  every topologySpreadConstraint selects the pods it is written in;
- every Service, PodDisruptionBudget, HPA target and ServiceMonitor selects exactly one
  workload (or Service) in its namespace, and every named port it uses is declared there;
- every NetworkPolicy podSelector (and an ingress `from` podSelector, in the same or a
  named namespace of the set) selects a workload, and its named ports exist on the pods;
- every ConfigMap/Secret a pod mounts or reads (volumes, projected volumes, envFrom,
  env valueFrom) and every serviceAccountName exists in the set, or is listed as
  user-provided in the pod annotation `gateway.example.com/user-provided`
  ("Secret/name,ConfigMap/name": created by the operator, as the README says);
- every RoleBinding/ClusterRoleBinding refers to a Role and ServiceAccounts of the set.
Prints one line per problem and exits 1 if there is any.
"""
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
USER_PROVIDED = "gateway.example.com/user-provided"


def load(paths):
    objs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if isinstance(doc, dict) and doc.get("kind"):
                    doc["_file"] = path
                    objs.append(doc)
    return objs


def ns(o):
    return o.get("metadata", {}).get("namespace", "")


def name(o):
    return o.get("metadata", {}).get("name", "")


def ident(o):
    return f"{o['_file']}: {o['kind']} {ns(o) + '/' if ns(o) else ''}{name(o)}"


def matches(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) or a plain map against labels."""
    if selector is None:
        return False
    labels = labels or {}
    if "matchLabels" in selector or "matchExpressions" in selector:
        ml = selector.get("matchLabels") or {}
        exprs = selector.get("matchExpressions") or []
    else:
        ml, exprs = selector, []
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in exprs:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def empty(selector):
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


def pod_labels(w):
    return w["spec"]["template"]["metadata"].get("labels") or {}


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def port_names(w):
    spec = pod_spec(w)
    return {p.get("name") for c in spec.get("containers", []) for p in c.get("ports") or []}


def port_numbers(w):
    spec = pod_spec(w)
    return {p.get("containerPort") for c in spec.get("containers", []) for p in c.get("ports") or []}


def has_port(w, port):
    return port in port_names(w) if isinstance(port, str) else port in port_numbers(w)


def references(w):
    """(kind, name, where) of every ConfigMap/Secret/ServiceAccount the pod needs."""
    spec = pod_spec(w)
    out = []
    sa = spec.get("serviceAccountName")
    if sa:
        out.append(("ServiceAccount", sa, "serviceAccountName"))
    for v in spec.get("volumes") or []:
        if "configMap" in v:
            out.append(("ConfigMap", v["configMap"]["name"], f"volume {v['name']}"))
        if "secret" in v:
            out.append(("Secret", v["secret"]["secretName"], f"volume {v['name']}"))
        for s in (v.get("projected") or {}).get("sources") or []:
            if "configMap" in s:
                out.append(("ConfigMap", s["configMap"]["name"], f"volume {v['name']}"))
            if "secret" in s:
                out.append(("Secret", s["secret"]["name"], f"volume {v['name']}"))
    for c in spec.get("containers", []) + (spec.get("initContainers") or []):
        for e in c.get("envFrom") or []:
            if "configMapRef" in e:
                out.append(("ConfigMap", e["configMapRef"]["name"], f"{c['name']} envFrom"))
            if "secretRef" in e:
                out.append(("Secret", e["secretRef"]["name"], f"{c['name']} envFrom"))
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                out.append(("ConfigMap", vf["configMapKeyRef"]["name"], f"{c['name']} env {e['name']}"))
            if "secretKeyRef" in vf:
                out.append(("Secret", vf["secretKeyRef"]["name"], f"{c['name']} env {e['name']}"))
    return out


def check(objs):
    problems = []
    by = {}
    for o in objs:
        by.setdefault((o["kind"], ns(o), name(o)), o)
    workloads = [o for o in objs if o["kind"] in WORKLOADS]

    def selected(namespace, selector):
        return [w for w in workloads if ns(w) == namespace and matches(selector, pod_labels(w))]

    for w in workloads:
        if not matches(w["spec"].get("selector"), pod_labels(w)):
            problems.append(f"{ident(w)}: selector does not match its pod template labels")
        for t in pod_spec(w).get("topologySpreadConstraints") or []:
            if not matches(t.get("labelSelector"), pod_labels(w)):
                problems.append(f"{ident(w)}: topologySpreadConstraint ({t.get('topologyKey')}) selects other pods")
        annotations = w["spec"]["template"]["metadata"].get("annotations") or {}
        declared = {s.strip() for s in annotations.get(USER_PROVIDED, "").split(",") if s.strip()}
        for kind, ref, where in references(w):
            exists = (kind, ns(w), ref) in by
            if not exists and f"{kind}/{ref}" not in declared:
                problems.append(
                    f"{ident(w)}: {where} needs {kind} {ref}, which is neither rendered nor "
                    f"listed in the {USER_PROVIDED} annotation"
                )
            if exists and f"{kind}/{ref}" in declared:
                problems.append(f"{ident(w)}: {kind} {ref} is rendered but listed as user-provided")

    for o in objs:
        kind = o["kind"]
        if kind == "Service":
            selector = o["spec"].get("selector")
            hits = selected(ns(o), selector)
            if len(hits) != 1:
                problems.append(f"{ident(o)}: selector {selector} matches {len(hits)} workloads, want 1")
            for p in o["spec"].get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                for w in hits:
                    if not has_port(w, target):
                        problems.append(f"{ident(o)}: targetPort {target!r} is no container port of {name(w)}")
        elif kind == "PodDisruptionBudget":
            hits = selected(ns(o), o["spec"].get("selector"))
            if len(hits) != 1:
                problems.append(f"{ident(o)}: selector matches {len(hits)} workloads, want 1")
        elif kind == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            if (ref["kind"], ns(o), ref["name"]) not in by:
                problems.append(f"{ident(o)}: scaleTargetRef {ref['kind']} {ref['name']} is not in the set")
        elif kind == "NetworkPolicy":
            spec = o["spec"]
            targets = workloads if empty(spec.get("podSelector")) else selected(ns(o), spec.get("podSelector"))
            targets = [w for w in targets if ns(w) == ns(o)]
            if not targets:
                problems.append(f"{ident(o)}: podSelector {spec.get('podSelector')} selects no workload")
            for rule in spec.get("ingress") or []:
                for p in rule.get("ports") or []:
                    port = p.get("port")
                    if isinstance(port, str):
                        for w in targets:
                            if not has_port(w, port):
                                problems.append(f"{ident(o)}: port {port!r} is not declared by {name(w)}")
                for peer in rule.get("from") or []:
                    if "podSelector" not in peer or empty(peer["podSelector"]):
                        continue
                    nsel = peer.get("namespaceSelector")
                    if nsel is None:
                        peer_ns = ns(o)
                    else:
                        peer_ns = ((nsel or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                        if peer_ns is None or not any(ns(w) == peer_ns for w in workloads):
                            continue  # another namespace, not part of this set
                    if not selected(peer_ns, peer["podSelector"]):
                        problems.append(
                            f"{ident(o)}: ingress from podSelector {peer['podSelector']} selects no "
                            f"workload in namespace {peer_ns}"
                        )
        elif kind == "ServiceMonitor":
            nsel = o["spec"].get("namespaceSelector") or {}
            spaces = nsel.get("matchNames") or [ns(o)]
            services = [
                s
                for s in objs
                if s["kind"] == "Service" and ns(s) in spaces
                and matches(o["spec"].get("selector"), s["metadata"].get("labels"))
            ]
            if len(services) != 1:
                problems.append(f"{ident(o)}: selector matches {len(services)} Services, want 1")
            for e in o["spec"].get("endpoints") or []:
                for s in services:
                    if e.get("port") not in {p.get("name") for p in s["spec"].get("ports") or []}:
                        problems.append(f"{ident(o)}: endpoint port {e.get('port')!r} is not a port of Service {name(s)}")
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            ref = o["roleRef"]
            role_ns = ns(o) if ref["kind"] == "Role" else ""
            if (ref["kind"], role_ns, ref["name"]) not in by:
                problems.append(f"{ident(o)}: roleRef {ref['kind']} {ref['name']} is not in the set")
            for s in o.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and ("ServiceAccount", s.get("namespace", ns(o)), s["name"]) not in by:
                    problems.append(f"{ident(o)}: subject ServiceAccount {s.get('namespace')}/{s['name']} is not in the set")
    return problems


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check(load(sys.argv[1:]))
    for p in problems:
        print(f"crosscheck: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
