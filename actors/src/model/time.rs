//! `Timestamp`: the one date type of the data model.
//!
//! Millisecond precision, UTC, because that is what a BSON date holds: a value written to
//! MongoDB and read back compares equal to what was written, and the embedded store keeps the
//! same precision. It serializes as an RFC 3339 string (`2026-01-15T10:30:00.000Z`) to
//! human-readable formats (JSON, TOML, the SQLite documents — fixed width, so strings sort
//! like the instants they name) and as a native BSON date to serializers that are not
//! human-readable — `bson::to_raw_document_buf`, which the MongoDB backend encodes with.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant in UTC with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Prefer an injected [`crate::clock::Clock`].
    pub fn now_utc() -> Self {
        Self::from_chrono(Utc::now())
    }

    /// From a chrono date, truncated to the millisecond.
    pub fn from_chrono(dt: DateTime<Utc>) -> Self {
        Timestamp(dt.timestamp_millis())
    }

    /// As a chrono date.
    pub fn to_chrono(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Parses an RFC 3339 date (`2026-01-15T10:30:00Z`).
    pub fn parse_rfc3339(s: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|dt| Self::from_chrono(dt.with_timezone(&Utc)))
    }

    /// The RFC 3339 form with milliseconds and a `Z` suffix.
    pub fn to_rfc3339(self) -> String {
        self.to_chrono()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// This instant plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// This instant minus `d` (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Seconds from `earlier` to `self` as a float (the seed's duration unit); may be negative.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / 1000.0
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(dt: DateTime<Utc>) -> Self {
        Self::from_chrono(dt)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_rfc3339())
        } else {
            bson::DateTime::from_millis(self.0).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// Accepts every shape a date arrives in: an RFC 3339 string, integer milliseconds, and the
/// extended-JSON map `{"$date": …}` the BSON deserializer produces for a native date.
struct TimestampVisitor;

impl<'de> Visitor<'de> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 date string, milliseconds since the epoch, or a BSON date")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Timestamp::parse_rfc3339(v).map_err(|e| E::custom(format!("invalid date {v:?}: {e}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Ok(Timestamp(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
        i64::try_from(v)
            .map(Timestamp)
            .map_err(|_| E::custom("date out of range"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Timestamp, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "$date" => found = Some(map.next_value::<DateBody>()?.into_timestamp()?),
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        found.ok_or_else(|| de::Error::missing_field("$date"))
    }
}

/// The body of `{"$date": …}`: canonical (`{"$numberLong": "…"}`), relaxed (a string) or raw
/// milliseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum DateBody {
    Millis(i64),
    Text(String),
    Long {
        #[serde(rename = "$numberLong")]
        number_long: String,
    },
}

impl DateBody {
    fn into_timestamp<E: de::Error>(self) -> Result<Timestamp, E> {
        match self {
            DateBody::Millis(ms) => Ok(Timestamp(ms)),
            DateBody::Text(s) => TimestampVisitor.visit_str(&s),
            DateBody::Long { number_long } => number_long
                .parse::<i64>()
                .map(Timestamp)
                .map_err(|e| E::custom(format!("invalid $numberLong {number_long:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_is_rfc3339_with_millis() {
        let t = Timestamp::from_millis(1_705_314_600_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2024-01-15T10:30:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn bson_round_trip_is_a_native_date() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Doc {
            at: Timestamp,
        }
        let doc = Doc {
            at: Timestamp::from_millis(1_705_314_600_123),
        };
        let raw = bson::to_raw_document_buf(&doc).unwrap();
        let encoded = bson::Document::try_from(raw.as_ref()).unwrap();
        assert!(
            matches!(encoded.get("at"), Some(bson::Bson::DateTime(d)) if d.timestamp_millis() == 1_705_314_600_123),
            "{encoded:?}"
        );
        let decoded: Doc = bson::from_document(encoded).unwrap();
        assert_eq!(decoded, doc);
    }

    #[test]
    fn accepts_offsets_and_rejects_garbage() {
        let t: Timestamp = serde_json::from_str("\"2024-01-15T12:30:00+02:00\"").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-15T10:30:00.000Z");
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("invalid date"), "{err}");
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(t.plus(Duration::from_secs(2)).millis(), 3_000);
        assert_eq!(t.since(t.plus(Duration::from_secs(1))), Duration::ZERO);
        assert_eq!(
            t.plus(Duration::from_secs(1)).since(t),
            Duration::from_secs(1)
        );
    }
}
