#!/usr/bin/env python3
"""The layers of gateway/src (gateway/README.md), checked: a top-level module may use
modules of lower layers only, and a feature uses no other feature. Edges are found as
modcycles.py finds them (`crate::NAME`, test modules at a file's end and tests.rs skipped).
Exit 1 on any edge that points up or sideways, naming the file."""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "gateway/src"
# Top to bottom. Modules of one layer may use each other only where the layer says so.
LAYERS = [
    ("process", {"server", "listener", "admin", "explain"}, True),
    ("proxy", {"proxy"}, False),
    ("writer", {"reload", "kubernetes"}, True),
    ("runtime", {"runtime"}, False),
    ("config", {"config"}, False),
    ("features", {"access_log", "router", "actions", "auth", "ratelimit", "cache", "upstream", "edge",
                  "ip_rules", "cors", "apikey", "forward_auth", "compression", "telemetry", "tls",
                  "grpc", "websocket"}, False),
    ("bottom", {"alloc", "diag", "units", "metrics", "pattern", "http_head", "client_ip", "redact"}, False),
]
rank = {}
same_ok = {}
for i, (name, mods, ok) in enumerate(LAYERS):
    for m in mods:
        rank[m] = i
        same_ok[m] = ok
present = set()
for n in os.listdir(src):
    if n in ("lib.rs", "main.rs"):
        continue
    if n.endswith(".rs"):
        present.add(n[:-3])
    elif os.path.isdir(os.path.join(src, n)):
        present.add(n)
bad = []
unknown = sorted(present - set(rank))
for m in unknown:
    bad.append(f"module {m} is in no layer: add it to .ci/layers.py and gateway/README.md")
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs") or f in ("tests.rs", "testkeys.rs"):
            continue
        p = os.path.join(root, f)
        rel = os.path.relpath(p, src)
        top = rel.split(os.sep)[0]
        top = top[:-3] if top.endswith(".rs") else top
        if top not in rank:
            continue
        text = open(p, encoding="utf-8").read()
        cut = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
        if cut:
            text = text[: cut.start()]
        names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
        for grp in re.findall(r"crate::\{([^}]*)\}", text):
            names |= set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", grp))
        for n in sorted(names):
            if n == top or n not in rank:
                continue
            if rank[n] < rank[top] or (rank[n] == rank[top] and not same_ok[top]):
                bad.append(f"{rel}: {top} ({LAYERS[rank[top]][0]}) uses {n} ({LAYERS[rank[n]][0]})")
for b in bad:
    print(b)
print(f"{len(present)} modules, {len(bad)} layering violation(s)")
sys.exit(1 if bad else 0)
