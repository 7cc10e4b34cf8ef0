//! What a multi-topic (or filtered) stream follows: topic patterns and a filter. Two are the
//! same stream (one hub per gateway, one ring per backend) when their pattern sets are the same
//! and their filters print the same.

use std::{fmt, hash::Hash, sync::Arc};

use super::{
    filter::{Filter, Subject},
    pattern::Patterns,
};

#[derive(Debug, Clone)]
pub struct Selection {
    patterns: Patterns,
    filter: Option<Arc<Filter>>,
    /// The filter's canonical text: what tells filters apart.
    filter_key: Option<Arc<str>>,
}

impl Selection {
    pub fn new(patterns: Patterns, filter: Option<Filter>) -> Selection {
        let filter_key = filter.as_ref().map(|f| f.to_string().into());
        Selection {
            patterns,
            filter: filter.map(Arc::new),
            filter_key,
        }
    }

    pub fn patterns(&self) -> &Patterns {
        &self.patterns
    }

    /// The filter's canonical text (what a request carries on), if there is one.
    pub fn filter_text(&self) -> Option<&str> {
        self.filter_key.as_deref()
    }

    /// Whether the filter (if any) accepts the event.
    pub fn accepts(&self, event: &Subject<'_>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.accepts(event))
    }
}

impl PartialEq for Selection {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns && self.filter_key == other.filter_key
    }
}

impl Eq for Selection {}

impl Hash for Selection {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.patterns.hash(state);
        self.filter_key.hash(state);
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.patterns)?;
        if self.filter.is_some() {
            // A filter may quote users' data: not for the log.
            f.write_str(" (filtered)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_its_set_and_its_filter_as_printed() {
        let of = |patterns: &[&str], filter: Option<&str>| {
            Selection::new(
                Patterns::parse(patterns.iter().copied()).unwrap(),
                filter.map(|f| Filter::parse(f).unwrap()),
            )
        };
        let a = of(&["orders.*", "alerts"], Some("data.a>1"));
        assert_eq!(a, of(&["alerts", "orders.*"], Some("(data.a  >  1)")));
        assert_ne!(a, of(&["alerts", "orders.*"], None));
        assert_ne!(a, of(&["alerts"], Some("data.a>1")));
        assert_eq!(a.filter_text(), Some("data.a > 1"));
        assert_eq!(a.to_string(), "alerts,orders.* (filtered)");
        let subject = |amount: i64| {
            let data = serde_json::json!({"a": amount});
            let data = data.as_object().cloned();
            move |selection: &Selection| {
                selection.accepts(&Subject {
                    title: "",
                    user_id: "",
                    topic: "orders.eu",
                    data: data.as_ref(),
                })
            }
        };
        assert!(subject(2)(&a));
        assert!(!subject(1)(&a));
        assert!(subject(1)(&of(&["orders.*"], None)));
    }
}
