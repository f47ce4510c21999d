//! Owns the two segment tries of a host table: path templates (with backtracking from
//! literal to capture to catch-all) and segment-bounded prefixes (deepest first).
//! Nodes live in one arena `Vec` and refer to each other by index, so a walk up or down
//! needs no allocation.

use std::collections::HashMap;

use indexmap::IndexMap;

use super::Captures;
use super::fold::{Folded, FoldedKey};
use super::matchers::{PathTemplate, TemplateSegment};

const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
struct TemplateNode {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    /// Routes whose template ends with `{*rest}` right after this node.
    catch_all: Vec<u32>,
    /// Routes whose template ends exactly at this node.
    terminal: Vec<u32>,
}

#[derive(Debug)]
pub(super) struct TemplateTrie {
    nodes: Vec<TemplateNode>,
}

impl Default for TemplateTrie {
    fn default() -> Self {
        Self {
            nodes: vec![TemplateNode::default()],
        }
    }
}

impl TemplateTrie {
    pub(super) fn insert(&mut self, template: &PathTemplate, route: u32) {
        let mut node = 0usize;
        for seg in &template.segments {
            let next = match seg {
                TemplateSegment::CatchAll => {
                    self.nodes[node].catch_all.push(route);
                    return;
                }
                TemplateSegment::Literal(l) => self.nodes[node].literals.get(l).copied(),
                TemplateSegment::Param => self.nodes[node].param,
            };
            node = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(TemplateNode::default());
                    match seg {
                        TemplateSegment::Literal(l) => {
                            self.nodes[node].literals.insert(l.clone(), n as u32);
                        }
                        _ => self.nodes[node].param = Some(n as u32),
                    }
                    n
                }
            };
        }
        self.nodes[node].terminal.push(route);
    }

    pub(super) fn sort(&mut self, mut f: impl FnMut(&mut Vec<u32>)) {
        for n in &mut self.nodes {
            f(&mut n.catch_all);
            f(&mut n.terminal);
        }
    }

    pub(super) fn find(
        &self,
        path: &str,
        captures: &mut Captures,
        check: &mut impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        if self.nodes.len() == 1 && self.nodes[0].catch_all.is_empty() {
            return None;
        }
        // `path` starts with '/'; the first segment starts at byte 1.
        self.walk(0, Some(1), path, captures, check)
    }

    /// `at`: byte offset of the next segment, or `None` once the path is consumed.
    fn walk(
        &self,
        node: usize,
        at: Option<usize>,
        path: &str,
        captures: &mut Captures,
        check: &mut impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let n = &self.nodes[node];
        let Some(start) = at else {
            return n.terminal.iter().copied().find(|r| check(*r));
        };
        let rest = path.get(start..).unwrap_or("");
        let (head, next) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(start + i + 1)),
            None => (rest, None),
        };
        if let Some(&child) = n.literals.get(head)
            && let Some(r) = self.walk(child as usize, next, path, captures, check)
        {
            return Some(r);
        }
        if let (Some(child), false) = (n.param, head.is_empty()) {
            captures.push(start, start + head.len());
            if let Some(r) = self.walk(child as usize, next, path, captures, check) {
                return Some(r);
            }
            captures.pop();
        }
        for &r in &n.catch_all {
            captures.push(start, path.len());
            if check(r) {
                return Some(r);
            }
            captures.pop();
        }
        None
    }
}

#[derive(Debug, Default)]
struct PrefixNode {
    children: HashMap<Box<str>, u32>,
    /// The children of a case-folding trie.
    folded: IndexMap<FoldedKey, u32>,
    parent: u32,
    /// Segments from the root.
    depth: usize,
    routes: Vec<u32>,
}

#[derive(Debug)]
pub(super) struct PrefixTrie {
    nodes: Vec<PrefixNode>,
    /// Segments compare ignoring ASCII case (`case_insensitive` prefixes).
    fold: bool,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        Self {
            nodes: vec![PrefixNode {
                parent: NONE,
                ..PrefixNode::default()
            }],
            fold: false,
        }
    }
}

impl PrefixTrie {
    /// A trie whose segments match ignoring ASCII case.
    pub(super) fn folded() -> Self {
        Self {
            fold: true,
            ..Self::default()
        }
    }

    fn child(&self, node: usize, seg: &str) -> Option<u32> {
        let n = &self.nodes[node];
        if self.fold {
            n.folded.get(&Folded(seg)).copied()
        } else {
            n.children.get(seg).copied()
        }
    }

    /// `prefix` is normalized: "/" or "/a/b" without a trailing slash.
    pub(super) fn insert(&mut self, prefix: &str, route: u32) {
        let mut node = 0usize;
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            node = match self.child(node, seg) {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    let depth = self.nodes[node].depth + 1;
                    self.nodes.push(PrefixNode {
                        parent: node as u32,
                        depth,
                        ..PrefixNode::default()
                    });
                    if self.fold {
                        self.nodes[node]
                            .folded
                            .insert(FoldedKey(seg.into()), n as u32);
                    } else {
                        self.nodes[node].children.insert(seg.into(), n as u32);
                    }
                    n
                }
            };
        }
        self.nodes[node].routes.push(route);
    }

    pub(super) fn sort(&mut self, mut f: impl FnMut(&mut Vec<u32>)) {
        for n in &mut self.nodes {
            f(&mut n.routes);
        }
    }

    /// Walk down as far as the path's segments go, then try routes from the deepest
    /// node back up to the root: the longest matching prefix wins. Returns the route and
    /// its prefix's depth in segments.
    pub(super) fn find(
        &self,
        path: &str,
        check: &mut impl FnMut(u32) -> bool,
    ) -> Option<(u32, usize)> {
        if self.nodes.len() == 1 && self.nodes[0].routes.is_empty() {
            return None;
        }
        let mut node = 0usize;
        for seg in path.split('/').skip(1) {
            match self.child(node, seg) {
                Some(n) => node = n as usize,
                None => break,
            }
        }
        loop {
            let n = &self.nodes[node];
            if let Some(&r) = n.routes.iter().find(|r| check(**r)) {
                return Some((r, n.depth));
            }
            if n.parent == NONE {
                return None;
            }
            node = n.parent as usize;
        }
    }
}
