//! The topics a set of patterns selects, as every store lists them: exact names, ranges of
//! names (a wildcard's prefix up to the next string after every name starting with it), or all.

use eventsys::topics::Patterns;

/// A topic and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicHead {
    pub topic: String,
    /// Its newest `seq` (a hint that may trail it on MongoDB, whose counter is written after
    /// the events: read the events to be sure).
    pub last_seq: u64,
    /// The newest `seq` retention dropped; 0 when none.
    pub dropped_through: u64,
}

/// One pattern's topics, in the terms a query can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicRange {
    Exact(String),
    /// Names `>= from` and `< to`.
    Between {
        from: String,
        to: String,
    },
    All,
}

/// The ranges of `patterns`: one per pattern, or only `All` when one is `*`.
pub(crate) fn ranges(patterns: &Patterns) -> Vec<TopicRange> {
    let mut ranges = Vec::new();
    for pattern in patterns.iter() {
        match (pattern.exact(), pattern.prefix()) {
            (Some(topic), _) => ranges.push(TopicRange::Exact(topic.to_owned())),
            (None, Some("") | None) => return vec![TopicRange::All],
            (None, Some(prefix)) => ranges.push(TopicRange::Between {
                from: prefix.to_owned(),
                to: after_every(prefix),
            }),
        }
    }
    ranges
}

/// The first string after every string starting with `prefix` (which ends with `.`: its
/// last byte plus one).
fn after_every(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    String::from_utf8(bytes).expect("a topic prefix is ASCII")
}

/// A SQL condition on `column` for `ranges`, with `$n`/`?n` placeholders from `first` on (as
/// `placeholder` spells them), and the values they take.
pub(crate) fn sql_condition(
    ranges: &[TopicRange],
    column: &str,
    first: usize,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<String>) {
    let mut parts = Vec::new();
    let mut values = Vec::new();
    for range in ranges {
        match range {
            TopicRange::All => return ("TRUE".to_owned(), Vec::new()),
            TopicRange::Exact(topic) => {
                values.push(topic.clone());
                parts.push(format!(
                    "{column} = {}",
                    placeholder(first + values.len() - 1)
                ));
            }
            TopicRange::Between { from, to } => {
                values.push(from.clone());
                values.push(to.clone());
                let n = first + values.len() - 2;
                parts.push(format!(
                    "({column} >= {} AND {column} < {})",
                    placeholder(n),
                    placeholder(n + 1)
                ));
            }
        }
    }
    (format!("({})", parts.join(" OR ")), values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_ranges_and_sql() {
        let patterns = Patterns::parse(["orders.*", "alerts"]).unwrap();
        let ranges = ranges(&patterns);
        assert_eq!(
            ranges,
            [
                TopicRange::Exact("alerts".into()),
                TopicRange::Between {
                    from: "orders.".into(),
                    to: "orders/".into()
                }
            ]
        );
        let (sql, values) = sql_condition(&ranges, "topic", 2, |n| format!("${n}"));
        assert_eq!(sql, "(topic = $2 OR (topic >= $3 AND topic < $4))");
        assert_eq!(values, ["alerts", "orders.", "orders/"]);
        let all = Patterns::parse(["x", "*"]).unwrap();
        assert_eq!(super::ranges(&all), [TopicRange::All]);
        assert_eq!(
            sql_condition(&super::ranges(&all), "topic", 1, |n| format!("?{n}")),
            ("TRUE".to_owned(), Vec::new())
        );
    }
}
