//! Conversions at the MongoDB boundary: model values to and from BSON documents, driver errors
//! to [`StoreError`], and keyset cursors to and from their opaque string form.
//!
//! Encoding goes through `bson::to_raw_document_buf`, whose serializer is *not* human-readable,
//! so [`mcpd_actors::model::Timestamp`] fields become native BSON dates (the default
//! `bson::to_document` serializer is human-readable and would store RFC 3339 strings, which
//! neither TTL indexes nor date comparisons understand). Decoding uses `bson::from_document`;
//! `Timestamp`'s deserializer accepts the `{"$date": …}` shape a native date arrives in.

use bson::{Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use serde::de::DeserializeOwned;
use serde::Serialize;

use mcpd_actors::store::StoreError;

/// Server error code of a unique-index violation.
pub(crate) const DUPLICATE_KEY: i32 = 11000;
/// Server error code of an operation that exceeded its `maxTimeMS`.
const MAX_TIME_MS_EXPIRED: i32 = 50;

/// Encodes `value` as a BSON document with native dates.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Document, StoreError> {
    let raw = bson::to_raw_document_buf(value)
        .map_err(|e| StoreError::Invalid(format!("cannot encode {what}: {e}")))?;
    Document::try_from(raw.as_ref())
        .map_err(|e| StoreError::Invalid(format!("cannot encode {what}: {e}")))
}

/// Decodes a document read from `collection`; failures are [`StoreError::Corrupt`].
pub(crate) fn decode<T: DeserializeOwned>(
    collection: &'static str,
    doc: Document,
) -> Result<T, StoreError> {
    bson::from_document(doc).map_err(|e| StoreError::Corrupt {
        collection,
        message: e.to_string(),
    })
}

/// The server error code carried by `err`, if any (write errors, command errors, the first
/// write error of an `insert_many`).
pub(crate) fn error_code(err: &MongoError) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Whether `err` is a unique-index violation.
pub(crate) fn is_duplicate_key(err: &MongoError) -> bool {
    error_code(err) == Some(DUPLICATE_KEY)
}

/// Maps a driver error of operation `op` to the store's semantic variants: unreachable or
/// stepping-down servers are [`StoreError::Unavailable`] (retryable), time-outs
/// [`StoreError::Timeout`], undecodable replies [`StoreError::Corrupt`]; duplicate keys are
/// handled by the callers, which know the entity (see [`is_duplicate_key`]).
pub(crate) fn map_err(op: &str, collection: &'static str, err: MongoError) -> StoreError {
    let msg = format!("{op}: {err}");
    match err.kind.as_ref() {
        ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => StoreError::Timeout(msg),
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::SessionsNotSupported
        | ErrorKind::Shutdown => StoreError::Unavailable(msg),
        ErrorKind::BsonDeserialization(e) => StoreError::Corrupt {
            collection,
            message: format!("{op}: {e}"),
        },
        _ if error_code(&err) == Some(MAX_TIME_MS_EXPIRED) => StoreError::Timeout(msg),
        // Primary stepped down, not writable, interrupted at shutdown…: the driver labels these
        // as retryable; the caller may send the request again.
        _ if err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
            || err.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) =>
        {
            StoreError::Unavailable(msg)
        }
        _ => StoreError::Backend(msg),
    }
}

/// The type of one sort key, which decides how a cursor value is written and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    /// A BSON integer (Int32 or Int64).
    Int,
    /// A BSON date.
    Date,
    /// A string.
    Str,
}

/// One field of a keyset order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SortKey {
    /// Top-level field name.
    pub field: &'static str,
    /// Descending.
    pub desc: bool,
    /// Its BSON type.
    pub ty: KeyType,
}

/// A total order over a collection's documents (the last key is the unique id), with the tag
/// that marks its cursors so a cursor of one query kind is refused by another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Order {
    /// Cursor tag.
    pub tag: &'static str,
    /// The keys, most significant first.
    pub keys: &'static [SortKey],
}

impl Order {
    /// The `sort` document.
    pub(crate) fn sort(&self) -> Document {
        let mut d = Document::new();
        for k in self.keys {
            d.insert(k.field, if k.desc { -1 } else { 1 });
        }
        d
    }

    /// The cursor of the position right after `doc` (the last item of a page).
    pub(crate) fn cursor_after(
        &self,
        collection: &'static str,
        doc: &Document,
    ) -> Result<String, StoreError> {
        let mut values = vec![serde_json::Value::from(self.tag)];
        for k in self.keys {
            let v = doc.get(k.field);
            let value = match (k.ty, v) {
                (KeyType::Int, Some(Bson::Int32(i))) => serde_json::Value::from(*i),
                (KeyType::Int, Some(Bson::Int64(i))) => serde_json::Value::from(*i),
                (KeyType::Date, Some(Bson::DateTime(d))) => {
                    serde_json::Value::from(d.timestamp_millis())
                }
                (KeyType::Str, Some(Bson::String(s))) => serde_json::Value::from(s.as_str()),
                _ => {
                    return Err(StoreError::Corrupt {
                        collection,
                        message: format!("sort key {} is {v:?}, not a {:?}", k.field, k.ty),
                    })
                }
            };
            values.push(value);
        }
        Ok(mcpd_actors::hex::encode(
            serde_json::Value::Array(values).to_string().as_bytes(),
        ))
    }

    /// The filter selecting every document strictly after the position `cursor` names:
    /// `(k1 > v1) or (k1 = v1 and k2 > v2) or …`, with `<` on descending keys.
    pub(crate) fn after_filter(&self, cursor: &str) -> Result<Document, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("malformed page cursor: {why}"));
        let bytes = mcpd_actors::hex::decode(cursor).ok_or_else(|| bad("not a cursor"))?;
        let parsed: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("not a cursor"))?;
        let items = parsed.as_array().ok_or_else(|| bad("not a cursor"))?;
        if items.first().and_then(|t| t.as_str()) != Some(self.tag) {
            return Err(bad("it belongs to another query"));
        }
        if items.len() != self.keys.len() + 1 {
            return Err(bad("wrong number of keys"));
        }
        let mut values = Vec::with_capacity(self.keys.len());
        for (k, v) in self.keys.iter().zip(&items[1..]) {
            let b = match k.ty {
                KeyType::Int => v.as_i64().map(Bson::Int64),
                KeyType::Date => v
                    .as_i64()
                    .map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
                KeyType::Str => v.as_str().map(|s| Bson::String(s.to_string())),
            };
            values.push(b.ok_or_else(|| bad(&format!("bad value for {}", k.field)))?);
        }
        let mut branches = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let mut branch = Document::new();
            for (prev, v) in self.keys[..i].iter().zip(&values) {
                branch.insert(prev.field, v.clone());
            }
            let op = if k.desc { "$lt" } else { "$gt" };
            branch.insert(k.field, bson::doc! { op: values[i].clone() });
            branches.push(Bson::Document(branch));
        }
        Ok(bson::doc! { "$or": branches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpd_actors::model::{Task, Timestamp};

    const ORDER: Order = Order {
        tag: "t",
        keys: &[
            SortKey {
                field: "priority",
                desc: true,
                ty: KeyType::Int,
            },
            SortKey {
                field: "created_at",
                desc: false,
                ty: KeyType::Date,
            },
            SortKey {
                field: "task_id",
                desc: false,
                ty: KeyType::Str,
            },
        ],
    };

    #[test]
    fn tasks_encode_with_native_dates_and_round_trip() {
        let t = Task {
            task_id: "t1".into(),
            created_at: Timestamp::from_millis(1_705_314_600_123),
            deadline: Some(Timestamp::from_millis(1_705_314_700_000)),
            lease_token: 7,
            revision: 2,
            ..Default::default()
        };
        let doc = encode("task t1", &t).unwrap();
        assert!(
            matches!(doc.get("created_at"), Some(Bson::DateTime(_))),
            "{doc:?}"
        );
        assert!(
            matches!(doc.get("deadline"), Some(Bson::DateTime(_))),
            "{doc:?}"
        );
        assert!(doc.get("result").is_none(), "absent, not null");
        let back: Task = decode("tasks", doc).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn undecodable_documents_are_corrupt() {
        let err = decode::<Task>("tasks", bson::doc! { "priority": "high" }).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    collection: "tasks",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cursor_round_trips_into_a_keyset_filter() {
        let doc = bson::doc! {
            "priority": 5_i32,
            "created_at": bson::DateTime::from_millis(1000),
            "task_id": "t9",
        };
        let c = ORDER.cursor_after("tasks", &doc).unwrap();
        let f = ORDER.after_filter(&c).unwrap();
        let branches = f.get_array("$or").unwrap();
        assert_eq!(branches.len(), 3);
        assert_eq!(
            branches[0].as_document().unwrap(),
            &bson::doc! { "priority": { "$lt": 5_i64 } }
        );
        assert_eq!(
            branches[2].as_document().unwrap(),
            &bson::doc! {
                "priority": 5_i64,
                "created_at": bson::DateTime::from_millis(1000),
                "task_id": { "$gt": "t9" },
            }
        );
    }

    #[test]
    fn garbage_cursors_are_invalid() {
        let other = Order {
            tag: "p",
            keys: ORDER.keys,
        };
        let doc = bson::doc! {
            "priority": 5_i32,
            "created_at": bson::DateTime::from_millis(1000),
            "task_id": "t9",
        };
        let foreign = other.cursor_after("pipelines", &doc).unwrap();
        for c in ["", "zz", "abc", "7b7d", &foreign, "not a cursor at all"] {
            let err = ORDER.after_filter(c).unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{c:?}: {err:?}");
        }
    }
}
