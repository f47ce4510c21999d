//! Owns route lookup: the compiled `RouteTable` that maps a request to the index of one
//! route (in declaration order) plus its template captures. It knows only what routes
//! match on, never what they do: the runtime keeps the routes' policies by that index.
//!
//! Precedence (documented in gateway/README.md, and checked against `reference_find`):
//! 1. host: exact host, then wildcard hosts from the longest suffix, then routes
//!    without hosts. A tier with no matching route falls through to the next.
//! 2. path: exact, then template (literal segments before captures before catch-alls,
//!    left to right), then longest prefix, then regex.
//! 3. routes with the same path: more matchers (methods, headers, query) first.
//! 4. declaration order.
//!
//! Lookup never allocates and never scans the routes of a host: exact paths are a hash
//! lookup, templates and prefixes walk a segment trie, regexes are one `RegexSet` pass.

mod fold;
pub mod matchers;
pub mod path;
mod trie;

pub use crate::pattern::Captures;
pub use path::{Findings, NormalPath, PathError};

use std::cmp::Reverse;
use std::collections::HashMap;

use std::cell::RefCell;

use http::{HeaderMap, Method};
use indexmap::IndexMap;
use regex_automata::{Input, MatchKind, PatternSet, meta};

use fold::{Folded, FoldedKey};

use matchers::{
    HeaderMatcher, HostPattern, MAX_HOST_LEN, MethodSet, PathPattern, QueryMatcher, TemplateSegment,
};
use trie::{PrefixTrie, TemplateTrie};

/// Everything a route matches on besides the host tier.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub hosts: Vec<HostPattern>,
    pub path: PathPattern,
    pub methods: Option<MethodSet>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    pub path_options: PathOptions,
}

/// How a route reads the path: `case_insensitive` (exact and prefix paths), and which
/// [`Findings`] it accepts (`allow_encoded_slashes`, `allow_path_parameters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathOptions {
    pub case_insensitive: bool,
    pub allow: Findings,
}

impl RouteMatch {
    /// Does the path pattern match `path` (normalized), with the route's case rule?
    pub fn path_matches(&self, path: &str) -> bool {
        if self.path_options.case_insensitive {
            match &self.path {
                PathPattern::Exact(p) => return p.eq_ignore_ascii_case(path),
                PathPattern::Prefix(p) => return fold::prefix_matches_folded(p, path),
                _ => {}
            }
        }
        self.path.matches(path)
    }

    /// How many matchers beyond host and path this route has (precedence rule 3).
    pub fn extra_matchers(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len() + self.query.len()
    }

    /// Methods, headers and query: the checks made after host and path matched.
    pub fn matches_rest(&self, req: &RequestView<'_>) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

/// The parts of a request that routing looks at. `host` is lower case without a port
/// (see [`normalize_host`]); `path` is normalized (see [`normalize_path`]).
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The result of a lookup: the route (index into `RouteTable::routes`) and captures.
#[derive(Clone, Copy, Debug)]
pub struct RouteHit {
    pub route: usize,
    pub captures: Captures,
}

/// Regex routes of one host, in priority order, searched with one multi-pattern regex per
/// chunk of 64: one pass over the path says which patterns match.
#[derive(Debug, Default)]
struct RegexIndex {
    routes: Vec<u32>,
    sets: Vec<meta::Regex>,
}

/// Patterns per multi-pattern regex; the matches of one chunk fit a `u64` bit mask and one
/// per-thread `PatternSet`.
const REGEX_CHUNK: usize = 64;

thread_local! {
    // `RegexSet::matches_read_at` allocates a `PatternSet` on every call; keeping one per
    // thread makes the regex step of a lookup allocation-free once warm.
    static PATTERN_SET: RefCell<PatternSet> = RefCell::new(PatternSet::new(REGEX_CHUNK));
}

impl RegexIndex {
    fn build(mut routes: Vec<u32>, all: &[RouteMatch]) -> Result<Self, TableError> {
        sort_candidates(&mut routes, all);
        let mut sets = Vec::new();
        for chunk in routes.chunks(REGEX_CHUNK) {
            let patterns: Vec<&str> = chunk
                .iter()
                .map(|r| match &all[*r as usize].path {
                    PathPattern::Regex { regex, .. } => regex.as_str(),
                    _ => "$^",
                })
                .collect();
            let set = meta::Regex::builder()
                // All: report every pattern that matches, not just the leftmost-first.
                .configure(meta::Config::new().match_kind(MatchKind::All))
                .build_many(&patterns)
                .map_err(|e| TableError(e.to_string()))?;
            sets.push(set);
        }
        Ok(Self { routes, sets })
    }

    fn find(&self, path: &str, check: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        let input = Input::new(path);
        for (chunk, set) in self.sets.iter().enumerate() {
            let hits = PATTERN_SET.with(|cell| {
                let Ok(mut patset) = cell.try_borrow_mut() else {
                    return 0u64;
                };
                patset.clear();
                set.which_overlapping_matches(&input, &mut patset);
                patset.iter().fold(0u64, |m, pid| m | 1 << pid.as_usize())
            });
            let mut rest = hits;
            while rest != 0 {
                let j = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let route = self.routes[chunk * REGEX_CHUNK + j];
                if check(route) {
                    return Some(route);
                }
            }
        }
        None
    }
}

/// All routes that share one host tier entry.
#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<Box<str>, Vec<u32>>,
    /// `case_insensitive` exact paths.
    exact_folded: IndexMap<FoldedKey, Vec<u32>>,
    templates: TemplateTrie,
    prefixes: PrefixTrie,
    /// `case_insensitive` prefixes.
    prefixes_folded: PrefixTrie,
    regex: RegexIndex,
}

impl HostTable {
    fn build(members: &[u32], all: &[RouteMatch]) -> Result<Self, TableError> {
        let mut table = HostTable {
            prefixes_folded: PrefixTrie::folded(),
            ..HostTable::default()
        };
        let mut regex = Vec::new();
        for &r in members {
            let folded = all[r as usize].path_options.case_insensitive;
            match &all[r as usize].path {
                PathPattern::Exact(p) if folded => table
                    .exact_folded
                    .entry(FoldedKey(p.clone()))
                    .or_default()
                    .push(r),
                PathPattern::Exact(p) => table.exact.entry(p.clone()).or_default().push(r),
                PathPattern::Prefix(p) if folded => table.prefixes_folded.insert(p, r),
                PathPattern::Prefix(p) => table.prefixes.insert(p, r),
                PathPattern::Template(t) => table.templates.insert(t, r),
                PathPattern::Regex { .. } => regex.push(r),
            }
        }
        for list in table.exact.values_mut() {
            sort_candidates(list, all);
        }
        for list in table.exact_folded.values_mut() {
            sort_candidates(list, all);
        }
        table.templates.sort(|l| sort_candidates(l, all));
        table.prefixes.sort(|l| sort_candidates(l, all));
        table.prefixes_folded.sort(|l| sort_candidates(l, all));
        table.regex = RegexIndex::build(regex, all)?;
        Ok(table)
    }

    fn find(&self, req: &RequestView<'_>, all: &[RouteMatch]) -> Option<RouteHit> {
        let mut check = |r: u32| all[r as usize].matches_rest(req);
        let exact = self
            .exact
            .get(req.path)
            .and_then(|list| list.iter().copied().find(|r| check(*r)));
        // A case-sensitive and a case-insensitive candidate of the same kind: rules 3
        // and 4 decide between them.
        let exact = match self.exact_folded.get(&Folded(req.path)) {
            Some(list) => better(exact, list.iter().copied().find(|r| check(*r)), all),
            None => exact,
        };
        if let Some(r) = exact {
            return Some(hit(r, Captures::default()));
        }
        let mut captures = Captures::default();
        if let Some(r) = self.templates.find(req.path, &mut captures, &mut check) {
            return Some(hit(r, captures));
        }
        let prefix = self.prefixes.find(req.path, &mut check);
        let prefix = match self.prefixes_folded.find(req.path, &mut check) {
            // The longer prefix wins; at equal depth, rules 3 and 4.
            Some((r, depth)) => match prefix {
                Some((p, d)) if d > depth => Some(p),
                Some((p, d)) if d == depth => better(Some(p), Some(r), all),
                _ => Some(r),
            },
            None => prefix.map(|(r, _)| r),
        };
        if let Some(r) = prefix {
            return Some(hit(r, Captures::default()));
        }
        self.regex
            .find(req.path, &mut check)
            .map(|r| hit(r, Captures::default()))
    }
}

fn hit(route: u32, captures: Captures) -> RouteHit {
    RouteHit {
        route: route as usize,
        captures,
    }
}

/// Rule 3 and 4 within one path bucket: more matchers first, then declaration order.
fn sort_candidates(list: &mut [u32], all: &[RouteMatch]) {
    list.sort_by_key(|r| candidate_key(*r, all));
}

fn candidate_key(r: u32, all: &[RouteMatch]) -> (Reverse<usize>, u32) {
    (Reverse(all[r as usize].extra_matchers()), r)
}

/// The better of two candidates of one path bucket (rules 3 and 4).
fn better(a: Option<u32>, b: Option<u32>, all: &[RouteMatch]) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if candidate_key(b, all) < candidate_key(a, all) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("regex routes could not be combined into one matcher: {0}")]
pub struct TableError(String);

/// The compiled, immutable route table.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<RouteMatch>,
    /// Every finding some route accepts.
    allowed: Findings,
    exact_hosts: HashMap<Box<str>, HostTable>,
    wildcard_hosts: HashMap<Box<str>, HostTable>,
    any_host: HostTable,
}

impl RouteTable {
    /// Build the lookup structures. `routes` must be in declaration order: a route's
    /// index is its position, which is also the last tie-breaker.
    pub fn compile(routes: Vec<RouteMatch>) -> Result<Self, TableError> {
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            if route.hosts.is_empty() {
                any.push(i);
            }
            for host in &route.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut exact, h),
                    HostPattern::Wildcard(s) => (&mut wildcard, s),
                };
                let list = map.entry(key.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let build = |m: HashMap<Box<str>, Vec<u32>>| -> Result<HashMap<_, _>, TableError> {
            m.into_iter()
                .map(|(k, v)| Ok((k, HostTable::build(&v, &routes)?)))
                .collect()
        };
        let exact_hosts = build(exact)?;
        let wildcard_hosts = build(wildcard)?;
        let any_host = HostTable::build(&any, &routes)?;
        let allowed = routes
            .iter()
            .fold(Findings::default(), |f, r| f.union(r.path_options.allow));
        Ok(Self {
            allowed,
            exact_hosts,
            wildcard_hosts,
            any_host,
            routes,
        })
    }

    /// Does some route accept `findings` (so matching is worth trying)?
    pub fn some_route_allows(&self, findings: Findings) -> bool {
        findings.without(self.allowed).is_empty()
    }

    /// Every route's match criteria, by route index.
    pub fn matchers(&self) -> &[RouteMatch] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Find the route for a request (see the module doc for precedence).
    pub fn find(&self, req: &RequestView<'_>) -> Option<RouteHit> {
        let host = req.host;
        if !host.is_empty() {
            if let Some(hit) = self
                .exact_hosts
                .get(host)
                .and_then(|t| t.find(req, &self.routes))
            {
                return Some(hit);
            }
            if !self.wildcard_hosts.is_empty() {
                // Each '.' after the first label starts a candidate suffix, longest first.
                for (i, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
                    if let Some(hit) = self
                        .wildcard_hosts
                        .get(&host[i..])
                        .and_then(|t| t.find(req, &self.routes))
                    {
                        return Some(hit);
                    }
                }
            }
        }
        self.any_host.find(req, &self.routes)
    }
}

/// Sort key for the precedence rules, for one route that matches a request; smaller wins.
/// `reference_find` and `explain` use it; the fast table must agree with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    host_tier: (u8, Reverse<usize>),
    path_kind: u8,
    path_rank: Vec<u8>,
    prefix_depth: Reverse<usize>,
    extra: Reverse<usize>,
    index: usize,
}

/// The host tier a route reaches for `host`, or `None` if its hosts exclude it.
pub fn host_tier(m: &RouteMatch, host: &str) -> Option<(u8, Reverse<usize>)> {
    if m.hosts.is_empty() {
        return Some((2, Reverse(0)));
    }
    m.hosts
        .iter()
        .filter(|h| h.matches(host))
        .map(|h| match h {
            HostPattern::Exact(_) => (0, Reverse(0)),
            HostPattern::Wildcard(s) => (1, Reverse(s.len())),
        })
        .min()
}

/// The precedence of the route at `index` with match criteria `m` for `req`, or `None`
/// when it does not match at all.
pub fn precedence(m: &RouteMatch, index: usize, req: &RequestView<'_>) -> Option<Precedence> {
    let host_tier = host_tier(m, req.host)?;
    if !m.path_matches(req.path) || !m.matches_rest(req) {
        return None;
    }
    let (path_kind, path_rank, depth) = match &m.path {
        PathPattern::Exact(_) => (0, Vec::new(), 0),
        PathPattern::Template(t) => (
            1,
            t.segments
                .iter()
                .map(|s| match s {
                    TemplateSegment::Literal(_) => 0,
                    TemplateSegment::Param => 1,
                    TemplateSegment::CatchAll => 2,
                })
                .collect(),
            0,
        ),
        PathPattern::Prefix(p) => (
            2,
            Vec::new(),
            p.split('/').filter(|s| !s.is_empty()).count(),
        ),
        PathPattern::Regex { .. } => (3, Vec::new(), 0),
    };
    Some(Precedence {
        host_tier,
        path_kind,
        path_rank,
        prefix_depth: Reverse(depth),
        extra: Reverse(m.extra_matchers()),
        index,
    })
}

/// The obviously-correct linear version of [`RouteTable::find`]: every route is checked
/// and the best precedence wins. Used by `explain` and to test the fast table.
pub fn reference_find(routes: &[RouteMatch], req: &RequestView<'_>) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, m)| precedence(m, i, req).map(|p| (p, i)))
        .min()
        .map(|(_, i)| i)
}

/// Lower-case `raw` (a Host header or authority) without its port into `buf`.
/// Returns "" for a missing, oversized or non-ASCII host: it then matches host-less
/// routes only.
pub fn normalize_host<'b>(raw: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> &'b str {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or("")
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > MAX_HOST_LEN || !host.is_ascii() {
        return "";
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).unwrap_or("")
}

/// Normalize a request path (see [`path::normalize`]), dropping what it found.
pub fn normalize_path(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    path::normalize(raw).map(|n| n.path)
}

#[cfg(test)]
mod tests;
