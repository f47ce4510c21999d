//! Owns the path-pattern primitives that routing and rewrites share: the segment-boundary
//! prefix test, the byte spans of template captures, and compiling user regexes with a
//! size bound (so one config line cannot eat the heap).
//!
//! Bottom layer: imports nothing from the rest of the crate.

use regex::Regex;

/// Most captures a path template may declare; keeps captures in a fixed-size array.
pub const MAX_TEMPLATE_PARAMS: usize = 8;
/// Compiled size limit for user regexes, so one config line cannot eat the heap.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compile a user regex that must match the whole input.
pub fn compile_full_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| regex_error(pattern, &e))
}

/// regex's syntax errors span several lines (pattern, caret, reason); config errors are
/// one line each, so keep the reason only.
fn regex_error(pattern: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ");
    format!("invalid regex {pattern:?}: {reason}")
}

/// Compile a user regex used for searching (rewrites, value tests).
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| regex_error(pattern, &e))
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Byte spans of template captures within the matched path, without allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Captures {
    spans: [(u32, u32); MAX_TEMPLATE_PARAMS],
    len: u8,
}

impl Captures {
    pub fn push(&mut self, start: usize, end: usize) {
        if let Some(slot) = self.spans.get_mut(usize::from(self.len)) {
            *slot = (start as u32, end as u32);
            self.len += 1;
        }
    }

    pub fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`th capture as a slice of the `path` that was matched.
    pub fn get<'p>(&self, path: &'p str, i: usize) -> Option<&'p str> {
        if i >= self.len() {
            return None;
        }
        let (s, e) = self.spans[i];
        path.get(s as usize..e as usize)
    }
}
