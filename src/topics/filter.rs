//! Filters: a small predicate language over an event's `title`, `userId`, `topic` and `data`
//! (dotted paths into it), with comparisons, `in`, `exists` and `and`/`or`/`not`. No loops, no
//! calls: evaluating one is a walk of its tree, and its size is bounded by `MAX_FILTER_BYTES`
//! and `MAX_DEPTH`. Grammar (docs/api.md, "Filters"):
//!
//! ```text
//! filter  = or
//! or      = and { "or" and }
//! and     = unary { "and" unary }
//! unary   = "not" unary | "(" or ")" | "exists" path
//!         | path ("==" | "!=" | "<" | "<=" | ">" | ">=") value
//!         | path "in" "[" value { "," value } "]"
//! path    = "title" | "userId" | "topic" | "data" { "." (name | string) }
//! value   = string | number | "true" | "false" | "null"      (JSON's spelling)
//! ```

use std::{cmp::Ordering, fmt};

use serde_json::Value as Json;

use crate::json::JsonObject;

/// A filter's longest text, in bytes.
pub const MAX_FILTER_BYTES: usize = 1024;
/// Nesting (`not`, parentheses) a filter may have.
const MAX_DEPTH: usize = 16;
/// Values one `in` may list.
const MAX_IN: usize = 64;
/// Names one path into `data` may have.
const MAX_PATH: usize = 8;

/// A parsed filter. Its `Display` is a canonical spelling: two filters that print the same
/// select the same events (the backend evaluates each distinct one once per event).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Node);

/// Why a filter does not parse: what was expected, and the byte offset (from 0) where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {message} at position {position}")]
pub struct FilterError {
    pub position: usize,
    pub message: String,
}

/// What a filter looks at in an event.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub title: &'a str,
    pub user_id: &'a str,
    pub topic: &'a str,
    pub data: Option<&'a JsonObject>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Exists(Path),
    Compare(Path, Op, Json),
    In(Path, Vec<Json>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Title,
    UserId,
    Topic,
    Data,
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    field: Field,
    /// Names into `data` (an array's element by its index).
    names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A path's value in an event.
enum Found<'a> {
    Text(&'a str),
    Json(&'a Json),
    /// `data` itself.
    Object,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                position: MAX_FILTER_BYTES,
                message: format!("longer than {MAX_FILTER_BYTES} bytes"),
            });
        }
        let mut parser = Parser::new(text);
        let node = parser.or(0)?;
        parser.blank();
        if parser.at < text.len() {
            return Err(parser.expected("`and`, `or` or the end"));
        }
        Ok(Filter(node))
    }

    /// Whether the event is selected.
    pub fn accepts(&self, event: &Subject<'_>) -> bool {
        self.0.eval(event)
    }
}

impl Node {
    fn eval(&self, event: &Subject<'_>) -> bool {
        match self {
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(event)),
            Node::And(nodes) => nodes.iter().all(|n| n.eval(event)),
            Node::Not(node) => !node.eval(event),
            Node::Exists(path) => path.find(event).is_some(),
            Node::Compare(path, op, value) => {
                let Some(found) = path.find(event) else {
                    return *op == Op::Ne;
                };
                match op {
                    Op::Eq => equal(&found, value),
                    Op::Ne => !equal(&found, value),
                    Op::Lt => order(&found, value) == Some(Ordering::Less),
                    Op::Le => {
                        matches!(order(&found, value), Some(Ordering::Less | Ordering::Equal))
                    }
                    Op::Gt => order(&found, value) == Some(Ordering::Greater),
                    Op::Ge => matches!(
                        order(&found, value),
                        Some(Ordering::Greater | Ordering::Equal)
                    ),
                }
            }
            Node::In(path, values) => path
                .find(event)
                .is_some_and(|found| values.iter().any(|v| equal(&found, v))),
        }
    }
}

impl Path {
    fn find<'a>(&self, event: &Subject<'a>) -> Option<Found<'a>> {
        let text = match self.field {
            Field::Title => event.title,
            Field::UserId => event.user_id,
            Field::Topic => event.topic,
            Field::Data => {
                let data = event.data?;
                let Some((first, rest)) = self.names.split_first() else {
                    return Some(Found::Object);
                };
                let mut value = data.get(first)?;
                for name in rest {
                    value = match value {
                        Json::Object(map) => map.get(name)?,
                        Json::Array(items) => items.get(name.parse::<usize>().ok()?)?,
                        _ => return None,
                    };
                }
                return Some(Found::Json(value));
            }
        };
        Some(Found::Text(text))
    }
}

/// Equal as JSON, numbers by value (`1 == 1.0`).
fn equal(found: &Found<'_>, value: &Json) -> bool {
    match (found, value) {
        (Found::Text(text), Json::String(s)) => text == s,
        (Found::Json(Json::Number(a)), Json::Number(b)) => a.as_f64() == b.as_f64(),
        (Found::Json(json), value) => *json == value,
        _ => false,
    }
}

/// Numbers by value, strings by their bytes; anything else has no order.
fn order(found: &Found<'_>, value: &Json) -> Option<Ordering> {
    match (found, value) {
        (Found::Text(text), Json::String(s)) => Some(text.as_bytes().cmp(s.as_bytes())),
        (Found::Json(Json::String(a)), Json::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (Found::Json(Json::Number(a)), Json::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        _ => None,
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = |f: &mut fmt::Formatter<'_>, nodes: &[Node], word: &str| {
            f.write_str("(")?;
            for (i, node) in nodes.iter().enumerate() {
                if i > 0 {
                    write!(f, " {word} ")?;
                }
                node.fmt(f)?;
            }
            f.write_str(")")
        };
        match self {
            Node::Or(nodes) => joined(f, nodes, "or"),
            Node::And(nodes) => joined(f, nodes, "and"),
            Node::Not(node) => write!(f, "not {node}"),
            Node::Exists(path) => write!(f, "exists {path}"),
            Node::Compare(path, op, value) => {
                let op = match op {
                    Op::Eq => "==",
                    Op::Ne => "!=",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                };
                write!(f, "{path} {op} {value}")
            }
            Node::In(path, values) => {
                write!(f, "{path} in [")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.field {
            Field::Title => "title",
            Field::UserId => "userId",
            Field::Topic => "topic",
            Field::Data => "data",
        })?;
        for name in &self.names {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            {
                write!(f, ".{name}")?;
            } else {
                write!(f, ".{}", Json::String(name.clone()))?;
            }
        }
        Ok(())
    }
}

mod parse;
#[cfg(test)]
mod tests;

use parse::Parser;
