//! Owns the selector grammar: label and field selectors as the API server parses them
//! from `labelSelector` and `fieldSelector`, for the fake API server (which also matches
//! objects with them) and for checking configured selectors before a watch would be
//! refused: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
//! `!k`, `k>n`, `k<n` for labels; `metadata.name` and `metadata.namespace` with `=`,
//! `==`, `!=` for fields (the fields every resource supports).

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_value(s: &str) -> bool {
    s.is_empty() || valid_token(s)
}

/// Splits on commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| SelectorError(text.to_owned()))?
            }
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(text.to_owned()));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn parse_set(
    key: &str,
    rest: &str,
    whole: &str,
) -> Result<(String, BTreeSet<String>), SelectorError> {
    let bad = || SelectorError(whole.to_owned());
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?;
    let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if !valid_token(key) || values.iter().any(|v| !valid_value(v)) {
        return Err(bad());
    }
    Ok((key.to_owned(), values))
}

fn parse_requirement(text: &str) -> Result<Requirement, SelectorError> {
    let whole = text.trim();
    let bad = || SelectorError(whole.to_owned());
    if let Some(key) = whole.strip_prefix('!') {
        let key = key.trim();
        return if valid_token(key) {
            Ok(Requirement::DoesNotExist(key.to_owned()))
        } else {
            Err(bad())
        };
    }
    // Set-based: `key in (...)` / `key notin (...)`.
    if let Some(open) = whole.find('(') {
        let head = &whole[..open];
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let (key, values) = parse_set(key, &whole[open..], whole)?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            _ => Err(bad()),
        };
    }
    for (op, build) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = whole.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            if !valid_token(key) || !valid_value(value) {
                return Err(bad());
            }
            return Ok(build(key.to_owned(), value.to_owned()));
        }
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some((key, value)) = whole.split_once(op) {
            let key = key.trim();
            let n: i64 = value.trim().parse().map_err(|_| bad())?;
            if !valid_token(key) {
                return Err(bad());
            }
            return Ok(if greater {
                Requirement::GreaterThan(key.to_owned(), n)
            } else {
                Requirement::LessThan(key.to_owned(), n)
            });
        }
    }
    if valid_token(whole) {
        Ok(Requirement::Exists(whole.to_owned()))
    } else {
        Err(bad())
    }
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        split_requirements(text)?
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    pointer: &'static str,
    value: String,
    equal: bool,
}

/// A parsed field selector over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldTerm>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut terms = Vec::new();
        for term in text.split(',') {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(SelectorError(term.to_owned()));
            };
            let pointer = match field.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => {
                    return Err(SelectorError(format!("field label not supported: {other}")));
                }
            };
            terms.push(FieldTerm {
                pointer,
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|t| {
            let actual = object
                .pointer(t.pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == t.value) == t.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_the_api_grammar() {
        let obj = json!({"metadata": {"name": "a", "namespace": "x",
            "labels": {"app": "web", "tier": "front", "n": "5"}}});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("app in (web, api)", true),
            ("app in (api)", false),
            ("app notin (api)", true),
            ("missing notin (api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("missing", false),
            ("!missing", true),
            ("!tier", false),
            ("app=web,tier=front", true),
            ("app in (web,api),tier notin (back)", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<5", false),
        ];
        for (text, want) in cases {
            let sel = LabelSelector::parse(text).unwrap();
            assert_eq!(sel.matches(&obj), want, "{text}");
        }
        for bad in ["app in web", "app in (web", "a b", "app=(x)", "n>x", "=x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_cover_name_and_namespace() {
        let obj = json!({"metadata": {"name": "a", "namespace": "x"}});
        let sel = FieldSelector::parse("metadata.name=a,metadata.namespace!=y").unwrap();
        assert!(sel.matches(&obj));
        assert!(
            !FieldSelector::parse("metadata.name==b")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("spec.nodeName=n").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
