//! Client JSON (REST bodies, `/rtc` frames) read so that an error says what
//! is wrong in the client's terms: not JSON, bytes after the value, or which
//! field (by its path, `tracks[1].mid`) and what it expects. Shared by
//! [`crate::http`] and [`crate::signal`]; depends on nothing else of confer.
//!
//! Two steps, because serde_json's streaming reader reports some type errors
//! as syntax errors (an enum given a number is "expected value at line 1
//! column 40"), which would hide the field: [`whole_value`] alone decides
//! what is not JSON, [`from_value`] (serde_path_to_error over the value)
//! names the field.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;

/// Why bytes are not one JSON value.
#[derive(Debug)]
pub enum ValueError {
    /// Not JSON (or cut short): serde_json's description with its position.
    Syntax(serde_json::Error),
    /// A complete value, then more than whitespace.
    Trailing { line: usize, column: usize },
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueError::Syntax(e) => write!(f, "{e}"),
            ValueError::Trailing { line, column } => {
                write!(f, "bytes after the JSON value at line {line} column {column}")
            }
        }
    }
}

/// Exactly one JSON value, optionally surrounded by whitespace.
pub fn whole_value(bytes: &[u8]) -> Result<Value, ValueError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Value::deserialize(&mut de).map_err(ValueError::Syntax)?;
    de.end().map_err(|e| ValueError::Trailing { line: e.line(), column: e.column() })?;
    Ok(value)
}

/// A value that is JSON but not the shape wanted.
#[derive(Debug, PartialEq)]
pub struct FieldError {
    /// Where: `callType`, `tracks[1].mid`; empty for the value as a whole.
    pub path: Vec<String>,
    /// What serde expected there (`invalid type: integer `5`, expected
    /// `audio` or `video``, `missing field `calleeId``).
    pub message: String,
}

impl FieldError {
    /// The path as a client writes it: `candidate.sdpMLineIndex`, `tracks[1].mid`.
    pub fn path_text(&self) -> String {
        let mut out = String::new();
        for s in &self.path {
            if !out.is_empty() && !s.starts_with('[') {
                out.push('.');
            }
            out.push_str(s);
        }
        out
    }
}

/// `value` as a `T`, or where and why not.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let mut message = e.into_inner().to_string();
        if message.ends_with(ENUM_EXPECTATION) {
            if let Some(names) = variant_names::<T>(value, &segments) {
                message.truncate(message.len() - ENUM_EXPECTATION.len());
                message.push_str(&names);
            }
        }
        FieldError { path: segments.iter().map(segment_text).collect(), message }
    })
}

/// What serde_json's `Value` says an enum expects, whatever its variants.
const ENUM_EXPECTATION: &str = "string or map";

/// serde_json's `Value` does not say which variants an enum field allows
/// when it holds another type; asking again with an empty string there
/// makes serde list them (`` `audio` or `video` ``).
fn variant_names<T: DeserializeOwned>(value: &Value, at: &[Segment]) -> Option<String> {
    let mut probe = value.clone();
    let mut slot = &mut probe;
    for s in at {
        slot = match s {
            Segment::Map { key } | Segment::Enum { variant: key } => slot.get_mut(key.as_str())?,
            Segment::Seq { index } => slot.get_mut(*index)?,
            Segment::Unknown => return None,
        };
    }
    *slot = Value::String(String::new());
    let err = serde_path_to_error::deserialize::<_, T>(&probe).err()?;
    let text = err.into_inner().to_string();
    text.strip_prefix("unknown variant ``, expected ").map(str::to_owned)
}

fn segment_text(s: &Segment) -> String {
    match s {
        Segment::Seq { index } => format!("[{index}]"),
        Segment::Map { key } | Segment::Enum { variant: key } => key.clone(),
        Segment::Unknown => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Audio,
        Video,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        kind: Kind,
        n: u8,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Item>,
    }

    #[test]
    fn trailing_bytes_are_not_one_value_but_whitespace_is() {
        assert!(whole_value(b" {\"a\":1} \r\n\t").is_ok());
        assert!(matches!(whole_value(b"{\"a\":1} x"), Err(ValueError::Trailing { line: 1, column: 9 })));
        assert!(matches!(whole_value(b"{\"a\":1}{}"), Err(ValueError::Trailing { .. })));
        assert!(matches!(whole_value(b"{\"a\":"), Err(ValueError::Syntax(_))));
    }

    #[test]
    fn errors_name_the_path_and_an_enum_lists_its_variants() {
        let v = whole_value(br#"{"items":[{"kind":"audio","n":1},{"kind":5,"n":1}]}"#).unwrap();
        let e = from_value::<Body>(&v).unwrap_err();
        assert_eq!(e.path_text(), "items[1].kind");
        assert_eq!(e.message, "invalid type: integer `5`, expected `audio` or `video`");
        let v = whole_value(br#"{"items":[{"kind":"video","n":"x"}]}"#).unwrap();
        let e = from_value::<Body>(&v).unwrap_err();
        assert_eq!(
            (e.path_text().as_str(), e.message.as_str()),
            ("items[0].n", "invalid type: string \"x\", expected u8")
        );
        let e = from_value::<Body>(&Value::from(3)).unwrap_err();
        assert_eq!(e.path_text(), "");
    }
}
