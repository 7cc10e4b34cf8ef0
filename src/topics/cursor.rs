//! A multi-topic stream's cursor: where it stands in every topic it has delivered from (the
//! topic's last `seq` it accounts for), written as the SSE `id` of each frame so that a
//! browser's `Last-Event-ID` resumes every topic from its own place. Topics it does not name
//! start at their beginning. The text is opaque to clients: base64url of a version, the
//! pattern set's fingerprint (a cursor of another set is refused, not misread), and the
//! topics in order, each as the length it shares with the previous one, the rest, and the seq.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::pattern::{Patterns, readable_topic};

/// Topics one cursor may name: a stream delivering from more ends.
pub const MAX_CURSOR_TOPICS: usize = 1000;
/// A cursor's longest text: clients send it back in a request head, which the gateway takes up
/// to 8 KiB (cookies and a token beside it). About 1000 topics of short names sharing a prefix,
/// fewer of long names; a stream whose cursor would pass it ends.
pub const MAX_CURSOR_BYTES: usize = 6 * 1024;
const VERSION: u8 = 1;

/// Each topic's last `seq`; topics not named are at 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, u64>);

/// Why a cursor cannot be resumed from; the text is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("not a cursor of this stream")]
    Malformed,
    #[error("the cursor of another set of topic patterns")]
    OtherPatterns,
    #[error("{0:?} is not a topic of the stream's patterns")]
    Outside(String),
    #[error(
        "the stream has delivered from more than {MAX_CURSOR_TOPICS} topics: narrow its patterns"
    )]
    TooManyTopics,
}

impl Cursor {
    /// Where `topic` stands: its last `seq`, 0 when the cursor does not name it.
    pub fn get(&self, topic: &str) -> u64 {
        self.0.get(topic).copied().unwrap_or(0)
    }

    /// Moves `topic` to `seq`; never back. Fails when that would name one topic too many.
    pub fn advance(&mut self, topic: &str, seq: u64) -> Result<(), CursorError> {
        let full = self.0.len() == MAX_CURSOR_TOPICS;
        match self.0.get_mut(topic) {
            Some(at) => *at = (*at).max(seq),
            None if full => return Err(CursorError::TooManyTopics),
            None => {
                self.0.insert(topic.to_owned(), seq);
            }
        }
        Ok(())
    }

    /// Where `topic` stands, when the cursor names it (a place of 0 included).
    pub fn named(&self, topic: &str) -> Option<u64> {
        self.0.get(topic).copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(topic, seq)| (topic.as_str(), *seq))
    }

    /// From the positions a gRPC client keeps (`SubscribeRequest.after_seqs`): each topic a
    /// topic name of the stream's.
    pub fn from_positions(
        positions: impl IntoIterator<Item = (String, u64)>,
        patterns: &Patterns,
    ) -> Result<Cursor, CursorError> {
        let mut cursor = Cursor::default();
        for (topic, seq) in positions {
            if !readable_topic(&topic) || !patterns.matches(&topic) {
                let shown: String = topic.chars().take(40).collect();
                return Err(CursorError::Outside(shown));
            }
            cursor.advance(&topic, seq)?;
        }
        Ok(cursor)
    }

    /// The cursor's text for a stream of `patterns`; `TooManyTopics` past `MAX_CURSOR_BYTES`.
    pub fn encode(&self, patterns: &Patterns) -> Result<String, CursorError> {
        let mut bytes = Vec::with_capacity(8 + self.0.len() * 8);
        bytes.push(VERSION);
        bytes.extend_from_slice(&patterns.fingerprint().to_le_bytes());
        put_varint(&mut bytes, self.0.len() as u64);
        let mut previous: &[u8] = &[];
        for (topic, seq) in &self.0 {
            let topic = topic.as_bytes();
            let shared = previous
                .iter()
                .zip(topic)
                .take_while(|(a, b)| a == b)
                .count();
            put_varint(&mut bytes, shared as u64);
            put_varint(&mut bytes, (topic.len() - shared) as u64);
            bytes.extend_from_slice(&topic[shared..]);
            put_varint(&mut bytes, *seq);
            previous = topic;
        }
        // Base64 writes four characters for every three bytes.
        if bytes.len().div_ceil(3) * 4 > MAX_CURSOR_BYTES {
            return Err(CursorError::TooManyTopics);
        }
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a cursor `encode` wrote for the same `patterns`.
    pub fn decode(text: &str, patterns: &Patterns) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Malformed)?;
        let mut reader = Reader(&bytes);
        if reader.byte()? != VERSION {
            return Err(CursorError::Malformed);
        }
        let fingerprint = u32::from_le_bytes(reader.take(4)?.try_into().expect("four bytes"));
        if fingerprint != patterns.fingerprint() {
            return Err(CursorError::OtherPatterns);
        }
        let count = reader.varint()?;
        if count > MAX_CURSOR_TOPICS as u64 {
            return Err(CursorError::TooManyTopics);
        }
        let mut positions = BTreeMap::new();
        let mut previous = String::new();
        for _ in 0..count {
            let shared = usize::try_from(reader.varint()?).map_err(|_| CursorError::Malformed)?;
            let rest = usize::try_from(reader.varint()?).map_err(|_| CursorError::Malformed)?;
            let head = previous.get(..shared).ok_or(CursorError::Malformed)?;
            let tail =
                std::str::from_utf8(reader.take(rest)?).map_err(|_| CursorError::Malformed)?;
            let topic = format!("{head}{tail}");
            let seq = reader.varint()?;
            // Strictly ascending, as `encode` writes them: one spelling per cursor.
            if topic <= previous || !readable_topic(&topic) || !patterns.matches(&topic) {
                return Err(CursorError::Malformed);
            }
            positions.insert(topic.clone(), seq);
            previous = topic;
        }
        if !reader.0.is_empty() {
            return Err(CursorError::Malformed);
        }
        Ok(Cursor(positions))
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        if self.0.len() < n {
            return Err(CursorError::Malformed);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, CursorError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CursorError::Malformed);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Patterns {
        Patterns::parse(texts.iter().copied()).unwrap()
    }

    #[test]
    fn a_cursor_reads_back_as_written_and_compactly() {
        let set = patterns(&["orders.*", "alerts"]);
        let mut cursor = Cursor::default();
        assert_eq!(
            Cursor::decode(&cursor.encode(&set).unwrap(), &set).unwrap(),
            cursor
        );
        for i in 0..100u64 {
            cursor.advance(&format!("orders.{i}"), 1000 + i).unwrap();
        }
        cursor.advance("alerts", u64::MAX).unwrap();
        cursor.advance("orders.7", 3).unwrap();
        assert_eq!(cursor.get("orders.7"), 1007, "never moves back");
        let text = cursor.encode(&set).unwrap();
        assert_eq!(Cursor::decode(&text, &set).unwrap(), cursor);
        // Shared prefixes are written once: about 6 bytes a topic here.
        assert!(text.len() < 900, "{} bytes", text.len());
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn a_cursor_of_another_set_or_a_damaged_one_is_refused() {
        let set = patterns(&["orders.*"]);
        let mut cursor = Cursor::default();
        cursor.advance("orders.eu", 4).unwrap();
        let text = cursor.encode(&set).unwrap();
        assert_eq!(
            Cursor::decode(&text, &patterns(&["orders.*", "alerts"])),
            Err(CursorError::OtherPatterns)
        );
        for bad in [
            "",
            "x",
            "!!!!",
            "41",
            &text[..text.len() - 1],
            &format!("{text}A"),
        ] {
            assert!(Cursor::decode(bad, &set).is_err(), "{bad:?} was taken");
        }
        // A topic outside the patterns, though the fingerprint fits.
        let mut outside = Cursor::default();
        outside.0.insert("alerts".into(), 1);
        assert_eq!(
            Cursor::decode(&outside.encode(&set).unwrap(), &set),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn a_cursor_names_at_most_max_cursor_topics() {
        let set = patterns(&["*"]);
        let mut cursor = Cursor::default();
        for i in 0..MAX_CURSOR_TOPICS {
            cursor.advance(&format!("t{i}"), 1).unwrap();
        }
        assert_eq!(
            cursor.advance("one.more", 1),
            Err(CursorError::TooManyTopics)
        );
        cursor.advance("t1", 2).unwrap();
        let text = cursor.encode(&set).unwrap();
        assert_eq!(Cursor::decode(&text, &set).unwrap(), cursor);
        let positions = (0..=MAX_CURSOR_TOPICS).map(|i| (format!("t{i}"), 1));
        assert_eq!(
            Cursor::from_positions(positions, &set),
            Err(CursorError::TooManyTopics)
        );
    }
}
