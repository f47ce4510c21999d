//! Owns the map from a YAML path (`routes[3].match.path`) to its line and column in the
//! source text, so that errors found after deserialization still point into the file.
//!
//! serde gives us typed values but forgets positions; a second, event-level pass over the
//! same text with `yaml-rust2` recovers them. The two parsers agree on structure for every
//! document that deserialized, which is the only time this map is consulted.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Where each node of a YAML document starts, keyed by its dotted path.
#[derive(Debug, Default)]
pub struct SourceMap {
    locations: HashMap<String, Location>,
}

impl SourceMap {
    /// Index `text`. A document that does not parse yields an empty map: serde reports
    /// the syntax error with its own location in that case.
    pub fn index(text: &str) -> Self {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut indexer, false).is_err() {
            return Self::default();
        }
        Self {
            locations: indexer.locations,
        }
    }

    /// The location of `path`, or of its closest enclosing node that has one
    /// (a missing field is reported at the mapping that should hold it).
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut candidate = path;
        loop {
            if let Some(location) = self.locations.get(candidate) {
                return Some(*location);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

enum Frame {
    Sequence {
        path: String,
        next: usize,
    },
    Mapping {
        path: String,
        key: Option<String>,
        /// True while the next node is a key, false while it is that key's value.
        at_key: bool,
        /// yaml-rust2 marks a block mapping where it finds the first `:`, so a mapping
        /// is located at its first key instead.
        located: bool,
    },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    locations: HashMap<String, Location>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Indexer {
    /// Called at the start of every node; returns the node's path, or `None` for a
    /// mapping key (which is recorded as the location of the entry it names).
    fn enter_node(
        &mut self,
        scalar_key: Option<&str>,
        mark: Marker,
        record: bool,
    ) -> Option<String> {
        let location = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Sequence { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                child
            }
            Some(Frame::Mapping {
                path,
                key,
                at_key,
                located,
            }) => {
                if *at_key {
                    *at_key = false;
                    *key = scalar_key.map(str::to_owned);
                    if !*located {
                        *located = true;
                        self.locations.entry(path.clone()).or_insert(location);
                    }
                    if let Some(k) = scalar_key {
                        self.locations.entry(join(path, k)).or_insert(location);
                    }
                    return None;
                }
                *at_key = true;
                match key {
                    Some(k) => join(path, k),
                    None => format!("{path}.?"),
                }
            }
        };
        if record {
            self.locations.entry(path.clone()).or_insert(location);
        }
        Some(path)
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                self.enter_node(Some(&value), mark, true);
            }
            Event::Alias(_) => {
                self.enter_node(None, mark, true);
            }
            Event::SequenceStart(..) => {
                // A complex key (a sequence used as a key) gets no path of its own.
                let path = self.enter_node(None, mark, true).unwrap_or_default();
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingStart(..) => {
                let path = self.enter_node(None, mark, false).unwrap_or_default();
                self.stack.push(Frame::Mapping {
                    path,
                    key: None,
                    at_key: true,
                    located: false,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - id: a
    match:
      path: { prefix: /api }
  - id: b
    upstream: users
";

    #[test]
    fn locates_nested_paths() {
        let map = SourceMap::index(DOC);
        let cases = [
            ("listeners", 1, 1),
            ("listeners[0]", 2, 5),
            ("listeners[0].address", 3, 5),
            ("routes[0].match.path", 7, 7),
            ("routes[0].match.path.prefix", 7, 15),
            ("routes[1].upstream", 9, 5),
            // Missing paths fall back to the closest enclosing node.
            ("routes[1].upstream.nothing", 9, 5),
            ("routes[1].timeout", 8, 5),
        ];
        for (path, line, column) in cases {
            assert_eq!(
                map.locate(path),
                Some(Location { line, column }),
                "path {path}"
            );
        }
    }

    #[test]
    fn unparsable_text_has_no_locations() {
        let map = SourceMap::index("routes: [unclosed");
        assert_eq!(map.locate("routes"), None);
    }
}
