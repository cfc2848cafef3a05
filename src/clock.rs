//! Wall-clock time as the API shows it: RFC 3339 UTC timestamps.

use time::OffsetDateTime;

/// A point in time, serialised as RFC 3339 UTC (`2026-11-25T10:00:00.123Z`).
pub type Timestamp = OffsetDateTime;

pub fn now() -> Timestamp {
    OffsetDateTime::now_utc()
}

/// Seconds between two timestamps as a float (never negative).
pub fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    ((to - from).as_seconds_f64()).max(0.0)
}

/// Serde helpers for `Option<Timestamp>` in RFC 3339.
pub mod rfc3339 {
    pub use time::serde::rfc3339::*;
}
