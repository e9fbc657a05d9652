#!/usr/bin/env python3
"""Fails when the crate's files import each other in a cycle.

    python3 scripts/check-module-cycles.py [src]

Every `.rs` file under the source folder is a node (`foo/mod.rs` is module `foo`, `foo/bar.rs` is
`foo::bar`). A file imports another when it names an item of it: a `use` of a `crate::`, `super::`,
`self::` or child-module path, or such a path written inline. A parent's `pub use` of its own
child (the module's facade) is not an import, and `#[cfg(test)]` modules are left out (their
`use super::*` is the file they sit in). Two checks:

- files: no cycle between any two files, parent and child included;
- modules: no cycle between the crate's top-level modules (`config`, `store`, `index`, ...).

Prints each cycle with the edges that close it; exit status 1 when there is one.
"""

import os
import re
import sys


def strip(src):
    """Source without comments, strings and char literals, so that paths in them are not read."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "rb" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', src[i:i + 12])
            if m:
                end = '"' + m.group(1)
                j = src.find(end, i + len(m.group(0)))
                i = n if j < 0 else j + len(end)
                out.append('""')
                continue
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            out.append('""')
            continue
        if c == "'":
            m = re.match(r"'(\\[^']{1,10}|[^\\'])'", src[i:i + 14])
            if m:
                i += len(m.group(0))
                out.append("' '")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_test_modules(src):
    """`src` without `#[cfg(test)] mod name { ... }` blocks."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", src)
        if not m:
            return src
        depth, j = 0, m.end() - 1
        while j < len(src):
            if src[j] == "{":
                depth += 1
            elif src[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        src = src[:m.start()] + src[j + 1:]


def expand(prefix, body):
    """The paths of a `use` tree: `a::{b, c::{d as e}}` -> [a, b], [a, c, d]."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in (p.strip() for p in parts):
        if not p:
            continue
        m = re.match(r"^([\w:]*?)::\{(.*)\}$", p, re.S)
        if m:
            out += expand(prefix + [x for x in m.group(1).split("::") if x], m.group(2))
        elif p.startswith("{"):
            out += expand(prefix, p[1:-1])
        else:
            out.append(prefix + [x for x in re.split(r"\s+as\s+", p)[0].split("::") if x])
    return out


USE = re.compile(r"(\bpub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);")


def file_edges(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs") and name != "main.rs":
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)[:-3].split(os.sep)
                if rel[-1] in ("mod", "lib"):
                    rel = rel[:-1]
                with open(path, encoding="utf-8") as f:
                    files[tuple(rel)] = f.read()

    def resolve(path):
        for i in range(len(path), 0, -1):
            if tuple(path[:i]) in files:
                return tuple(path[:i])
        return None

    edges = {}
    for me, src in files.items():
        s = drop_test_modules(strip(src))
        refs = []
        for m in USE.finditer(s):
            for r in expand([], m.group(2)):
                child = r and (
                    (r[0] == "self" and len(r) > 1) or tuple(list(me) + [r[0]]) in files
                )
                if m.group(1) and child:
                    continue  # the module's facade
                refs.append(r)
        s = USE.sub("", s)
        refs += [m.group(1).split("::") for m in re.finditer(r"(?<![\w:])(\w+(?:::\w+)+)", s)]
        targets = set()
        for r in refs:
            if r[0] == "crate":
                path = r[1:]
            elif r[0] == "super":
                base = list(me)
                while r and r[0] == "super":
                    base, r = base[:-1], r[1:]
                path = base + r
            elif r[0] == "self":
                path = list(me) + r[1:]
            elif tuple(list(me) + [r[0]]) in files:
                path = list(me) + r
            else:
                continue
            t = resolve(path)
            if t is not None and t != me:
                targets.add(t)
        edges[me] = targets
    return edges


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def name(m):
    return "::".join(m) or "crate"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    edges = file_edges(root)
    top = {}
    for a, targets in edges.items():
        for b in targets:
            if a[:1] != b[:1] and a and b:
                top.setdefault(a[:1], set()).add(b[:1])
    bad = 0
    for what, graph in (("files", edges), ("top-level modules", top)):
        found = cycles(graph)
        for comp in found:
            print(f"import cycle between {what}: {', '.join(name(m) for m in comp)}")
            for a in comp:
                for b in sorted(graph.get(a, ())):
                    if b in comp:
                        print(f"    {name(a)} -> {name(b)}")
        bad += len(found)
        if not found:
            print(f"check-module-cycles: no import cycle between {what} under {root}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
