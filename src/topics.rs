//! Many topics on one stream: the pattern language topics are selected by (the same as token
//! claims: `orders`, `orders.*`, `*`), the filter language events are selected by, and the
//! cursor a multi-topic stream resumes from. The gateway checks what clients send with these,
//! the backends select and filter with them: one copy of each rule.

mod cursor;
mod filter;
mod pattern;
mod selection;

pub use cursor::{Cursor, CursorError, MAX_CURSOR_BYTES, MAX_CURSOR_TOPICS};
pub use filter::{Filter, FilterError, MAX_FILTER_BYTES, Subject};
pub use pattern::{
    BadPattern, MAX_PATTERNS, MAX_TOPIC, PRESENCE_PREFIX, Pattern, Patterns, matches,
    readable_topic, rights_topic, valid_topic,
};
pub use selection::Selection;
