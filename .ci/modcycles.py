#!/usr/bin/env python3
# Copied from the shared tools so CI depends on nothing outside the clone.
"""Module dependency cycles in a Rust crate's src/: top-level modules (files or folders under
src/) as nodes, `crate::NAME` / `use crate::{NAME..}` references as edges. Test files
(tests.rs, testkeys.rs, tests/ dirs) and #[cfg(test)] modules at a file's end are skipped.
Prints every strongly connected component with more than one module; exit 1 if any."""
import os, re, sys
src = sys.argv[1] if len(sys.argv) > 1 else "gateway/src"
mods = set()
for n in os.listdir(src):
    if n.endswith(".rs") and n not in ("lib.rs", "main.rs"):
        mods.add(n[:-3])
    elif os.path.isdir(os.path.join(src, n)):
        mods.add(n)
edges = {m: set() for m in mods}
why = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs") or f in ("tests.rs", "testkeys.rs"):
            continue
        p = os.path.join(root, f)
        rel = os.path.relpath(p, src)
        top = rel.split(os.sep)[0]
        top = top[:-3] if top.endswith(".rs") else top
        if top not in mods:
            continue
        text = open(p, encoding="utf-8").read()
        cut = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
        if cut:
            text = text[:cut.start()]
        names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
        for grp in re.findall(r"crate::\{([^}]*)\}", text):
            names |= set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", grp))
        for n in names:
            if n in mods and n != top:
                edges[top].add(n)
                why.setdefault((top, n), rel)
# Tarjan
idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        out.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in idx: sc(v)
bad = [sorted(x) for x in out if len(x) > 1]
for comp in bad:
    print(f"cycle of {len(comp)} modules: {' '.join(comp)}")
    for a in comp:
        for b in sorted(edges[a]):
            if b in comp:
                print(f"  {a} -> {b}  (e.g. {why[(a, b)]})")
print(f"{len(mods)} modules, {sum(len(v) for v in edges.values())} edges, {len(bad)} cycle(s)")
sys.exit(1 if bad else 0)
