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
        let mut parser = Parser { text, at: 0 };
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

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn blank(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn fail(&self, at: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            position: at,
            message: message.into(),
        }
    }

    fn expected(&self, what: &str) -> FilterError {
        let found = match self.rest().chars().next() {
            None => "the end".to_owned(),
            Some(c) => format!("{c:?}"),
        };
        self.fail(self.at, format!("expected {what}, found {found}"))
    }

    /// Takes the keyword `word` when it comes next as a whole word.
    fn keyword(&mut self, word: &str) -> bool {
        self.blank();
        let rest = self.rest();
        let whole = rest.starts_with(word)
            && !rest[word.len()..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if whole {
            self.at += word.len();
        }
        whole
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        self.blank();
        let taken = self.rest().starts_with(symbol);
        if taken {
            self.at += symbol.len();
        }
        taken
    }

    fn or(&mut self, depth: usize) -> Result<Node, FilterError> {
        let mut nodes = vec![self.and(depth)?];
        while self.keyword("or") {
            nodes.push(self.and(depth)?);
        }
        Ok(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Node::Or(nodes)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Node, FilterError> {
        let mut nodes = vec![self.unary(depth)?];
        while self.keyword("and") {
            nodes.push(self.unary(depth)?);
        }
        Ok(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Node::And(nodes)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Node, FilterError> {
        self.blank();
        if depth == MAX_DEPTH {
            return Err(self.fail(self.at, format!("nested deeper than {MAX_DEPTH}")));
        }
        if self.keyword("not") {
            return Ok(Node::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.symbol("(") {
            let node = self.or(depth + 1)?;
            if !self.symbol(")") {
                return Err(self.expected("`)`"));
            }
            return Ok(node);
        }
        if self.keyword("exists") {
            return Ok(Node::Exists(self.path()?));
        }
        let path = self.path()?;
        if self.keyword("in") {
            return Ok(Node::In(path, self.list()?));
        }
        // Two-character operators first.
        let ops = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        for (symbol, op) in ops {
            if self.symbol(symbol) {
                return Ok(Node::Compare(path, op, self.value()?));
            }
        }
        Err(self.expected("a comparison (== != < <= > >=), `in`"))
    }

    fn path(&mut self) -> Result<Path, FilterError> {
        self.blank();
        let start = self.at;
        let field = if self.keyword("title") {
            Field::Title
        } else if self.keyword("userId") {
            Field::UserId
        } else if self.keyword("topic") {
            Field::Topic
        } else if self.keyword("data") {
            Field::Data
        } else {
            return Err(self.expected("title, userId, topic or data"));
        };
        let mut names = Vec::new();
        while self.rest().starts_with('.') {
            if field != Field::Data {
                return Err(self.fail(self.at, "only data has fields"));
            }
            if names.len() == MAX_PATH {
                return Err(self.fail(start, format!("a path of more than {MAX_PATH} names")));
            }
            self.at += 1;
            let name = if self.rest().starts_with('"') {
                match self.json()? {
                    Json::String(name) => name,
                    _ => unreachable!("a quoted value is a string"),
                }
            } else {
                let len = self
                    .rest()
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                    .count();
                if len == 0 {
                    return Err(self.expected("a name after `.`"));
                }
                self.at += len;
                self.text[self.at - len..self.at].to_owned()
            };
            names.push(name);
        }
        Ok(Path { field, names })
    }

    fn list(&mut self) -> Result<Vec<Json>, FilterError> {
        if !self.symbol("[") {
            return Err(self.expected("`[`"));
        }
        let mut values = vec![self.value()?];
        while self.symbol(",") {
            if values.len() == MAX_IN {
                return Err(self.fail(self.at, format!("more than {MAX_IN} values in a list")));
            }
            values.push(self.value()?);
        }
        if !self.symbol("]") {
            return Err(self.expected("`,` or `]`"));
        }
        Ok(values)
    }

    fn value(&mut self) -> Result<Json, FilterError> {
        self.blank();
        for (word, value) in [
            ("true", Json::Bool(true)),
            ("false", Json::Bool(false)),
            ("null", Json::Null),
        ] {
            if self.keyword(word) {
                return Ok(value);
            }
        }
        match self.rest().bytes().next() {
            Some(b'"' | b'-' | b'0'..=b'9') => self.json(),
            _ => Err(self.expected("a value (a string, a number, true, false or null)")),
        }
    }

    /// One JSON string or number, as serde_json reads it.
    fn json(&mut self) -> Result<Json, FilterError> {
        let start = self.at;
        let rest = self.rest();
        let parsed = if rest.starts_with('"') {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Json>();
            values
                .next()
                .and_then(Result::ok)
                .map(|v| (v, values.byte_offset()))
        } else {
            // serde_json wants a number followed by a delimiter it knows: cut it out first.
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                .count();
            serde_json::from_str::<Json>(&rest[..len])
                .ok()
                .map(|v| (v, len))
        };
        match parsed {
            Some((value @ (Json::String(_) | Json::Number(_)), len)) => {
                self.at += len;
                Ok(value)
            }
            _ => Err(self.fail(start, "expected a JSON string or number")),
        }
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

#[cfg(test)]
mod tests;
