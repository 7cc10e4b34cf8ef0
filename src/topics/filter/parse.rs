//! The filter's parser: recursive descent over the text, each rule of the grammar (see
//! `filter`) one method, with the byte offset of every mistake.

use serde_json::Value as Json;

use super::{Field, FilterError, MAX_DEPTH, MAX_IN, MAX_PATH, Node, Op, Path};

/// Reads a filter from its text, tracking where it is (for the errors' positions).
pub(super) struct Parser<'a> {
    text: &'a str,
    pub(super) at: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Parser<'a> {
        Parser { text, at: 0 }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    pub(super) fn blank(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn fail(&self, at: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            position: at,
            message: message.into(),
        }
    }

    pub(super) fn expected(&self, what: &str) -> FilterError {
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

    pub(super) fn or(&mut self, depth: usize) -> Result<Node, FilterError> {
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
