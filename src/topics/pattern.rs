//! Topic patterns: `orders` names that topic, `orders.*` every topic starting `orders.`, `*`
//! every topic. Token claims use the same rule (`matches`); a stream's patterns are parsed
//! into `Pattern`s, which also say whether one lies within another (rights).

use std::fmt;

/// A topic name's longest length, in bytes.
pub const MAX_TOPIC: usize = 256;
/// Patterns one stream may name.
pub const MAX_PATTERNS: usize = 16;

/// Where a topic's joins and leaves are stored: `$presence.<topic>`, a name nobody can publish
/// to, readable by whoever may read the topic.
pub const PRESENCE_PREFIX: &str = "$presence.";

/// The topic whose rights cover reading `topic` (a presence topic's own topic).
pub fn rights_topic(topic: &str) -> &str {
    topic.strip_prefix(PRESENCE_PREFIX).unwrap_or(topic)
}

/// Whether `topic` can be read: a topic name, or a topic's presence topic.
pub fn readable_topic(topic: &str) -> bool {
    valid_topic(rights_topic(topic))
}

/// Whether `topic` is a topic name: 1 to 256 bytes of `[A-Za-z0-9._:-]`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC && topic.bytes().all(topic_byte)
}

fn topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// The rule of token claims and stream patterns alike: `orders` matches that topic,
/// `orders.*` any topic starting `orders.`, `*` every topic.
pub fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) if prefix.ends_with('.') => topic.starts_with(prefix),
        _ => pattern == topic,
    }
}

/// A stream's topic pattern, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern(String);

/// Why a pattern is not one; the text is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPattern(pub String);

impl Pattern {
    /// `orders`, `orders.*` (the part before `.*` a topic name) or `*`; also a topic's
    /// presence topic by its name (`$presence.orders`, no wildcard).
    pub fn parse(text: &str) -> Result<Pattern, BadPattern> {
        if let Some(topic) = text.strip_prefix(PRESENCE_PREFIX)
            && valid_topic(topic)
        {
            return Ok(Pattern(text.to_owned()));
        }
        let name = match text.strip_suffix(".*") {
            Some(prefix) => prefix,
            None if text == "*" => return Ok(Pattern(text.to_owned())),
            None => text,
        };
        if valid_topic(name) && text.len() <= MAX_TOPIC {
            return Ok(Pattern(text.to_owned()));
        }
        let shown: String = text.chars().take(40).collect();
        Err(BadPattern(format!(
            "topic pattern {shown:?} is not a topic (1 to 256 of A-Z a-z 0-9 . _ : -), \
             a topic followed by .* or *"
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` is one of this pattern's.
    pub fn matches(&self, topic: &str) -> bool {
        matches(&self.0, topic)
    }

    /// The topic it names, when it names exactly one.
    pub fn exact(&self) -> Option<&str> {
        (!self.0.ends_with('*')).then_some(self.0.as_str())
    }

    /// What every topic it matches starts with (`""` for `*`), when it is a wildcard.
    pub fn prefix(&self) -> Option<&str> {
        self.0.strip_suffix('*')
    }

    /// Whether every topic this pattern matches is one of `right`'s (a claim's pattern, as the
    /// token carries it): `orders.eu.*` lies within `orders.*`, `orders.*` not within
    /// `orders.eu`.
    pub fn within(&self, right: &str) -> bool {
        match self.prefix() {
            // A presence topic is read with its topic's rights.
            None => matches(right, rights_topic(&self.0)),
            Some(prefix) => match right.strip_suffix('*') {
                Some("") => true,
                Some(wider) if wider.ends_with('.') => prefix.starts_with(wider),
                _ => false,
            },
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream's patterns: 1 to `MAX_PATTERNS`, sorted and without repeats, so the same set
/// spelled in another order is the same stream (one backend stream per gateway).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Patterns, BadPattern> {
        let mut patterns = Vec::new();
        for text in texts {
            if patterns.len() == MAX_PATTERNS {
                return Err(BadPattern(format!(
                    "at most {MAX_PATTERNS} topic patterns per stream"
                )));
            }
            patterns.push(Pattern::parse(text)?);
        }
        if patterns.is_empty() {
            return Err(BadPattern("name at least one topic pattern".into()));
        }
        patterns.sort();
        patterns.dedup();
        Ok(Patterns(patterns))
    }

    /// Whether `topic` is one of the stream's.
    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.0.iter()
    }

    /// As the request carries them.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|p| p.0.clone()).collect()
    }

    /// A stable 32-bit digest of the set (FNV-1a over the sorted patterns), which a cursor
    /// carries so that one from another pattern set is refused, not misread.
    pub fn fingerprint(&self) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for pattern in &self.0 {
            for &b in pattern.0.as_bytes().iter().chain(b"\n") {
                hash ^= u32::from(b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        }
        hash
    }
}

impl fmt::Display for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pattern) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&pattern.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_claims_do() {
        let cases = [
            ("orders", "orders", true),
            ("orders", "orders.eu", false),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.eu.de", true),
            ("orders.*", "orders", false),
            ("orders.*", "ordersx", false),
            ("*", "anything", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().matches(topic),
                expected,
                "{pattern} ~ {topic}"
            );
            assert_eq!(matches(pattern, topic), expected);
        }
    }

    #[test]
    fn only_topics_topic_wildcards_and_star_are_patterns() {
        for bad in [
            "",
            "orders*",
            "or*ders",
            "orders.**",
            ".*x",
            "a b",
            "*.orders",
            "é",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} was taken");
        }
        for good in [
            "orders",
            "orders.*",
            "*",
            "a:b-c_d.e",
            "a.b.*",
            "$presence.orders",
        ] {
            assert!(Pattern::parse(good).is_ok(), "{good:?} was refused");
        }
        assert!(Pattern::parse(&"a".repeat(257)).is_err());
        assert!(Pattern::parse(&format!("{}.*", "a".repeat(254))).is_ok());
    }

    #[test]
    fn a_pattern_lies_within_a_right_only_when_every_topic_it_matches_does() {
        let cases = [
            ("orders", "orders", true),
            ("orders", "orders.*", false),
            ("orders.eu", "orders.*", true),
            ("orders.*", "orders.*", true),
            ("orders.eu.*", "orders.*", true),
            ("orders.*", "orders.eu.*", false),
            ("orders.*", "orders", false),
            ("*", "orders.*", false),
            ("*", "*", true),
            ("orders.*", "*", true),
            ("alerts", "orders.*", false),
            ("$presence.orders.eu", "orders.*", true),
            ("$presence.orders", "orders.*", false),
        ];
        for (pattern, right, expected) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().within(right),
                expected,
                "{pattern} within {right}"
            );
        }
    }

    #[test]
    fn a_set_is_sorted_deduplicated_bounded_and_fingerprinted_by_content() {
        let a = Patterns::parse(["orders.*", "alerts", "orders.*"]).unwrap();
        let b = Patterns::parse(["alerts", "orders.*"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "alerts,orders.*");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Patterns::parse(["alerts", "orders"]).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(Patterns::parse([]).is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("t{i}")).collect();
        assert!(Patterns::parse(many.iter().map(String::as_str)).is_err());
        assert!(Patterns::parse(many[..MAX_PATTERNS].iter().map(String::as_str)).is_ok());
    }
}
