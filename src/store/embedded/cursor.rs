//! Keyset paging for the embedded store: sort specifications, the `WHERE` clause that resumes
//! after a cursor, and the cursor's opaque encoding.
//!
//! A cursor is the sort key of the last item of a page, tagged with the query it belongs to,
//! serialized as JSON and hex-encoded, so it survives URLs and logs unchanged. Decoding checks
//! the tag, the arity and each component's type: a cursor the store did not issue (or one
//! from another collection) is refused as `Invalid` instead of silently restarting the walk.
//! Keyset paging (rather than OFFSET) costs the same for every page and never skips or
//! repeats an item when documents are inserted between two pages.

use mcpd_actors::store::{StoreError, StoreResult};
use rusqlite::types::Value;
use serde_json::Value as Json;

/// Direction of one sort column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    Asc,
    Desc,
}

/// SQL type of one sort column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyType {
    Int,
    Text,
}

/// One column of a sort order. Columns are fixed identifiers from this module, never input.
#[derive(Clone, Copy, Debug)]
pub(super) struct SortKey {
    pub column: &'static str,
    pub dir: Dir,
    pub ty: KeyType,
}

/// A query's ordering, ending in the primary key so it is total.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sort {
    /// Distinguishes the cursors of different queries.
    pub tag: &'static str,
    pub keys: &'static [SortKey],
}

const fn key(column: &'static str, dir: Dir, ty: KeyType) -> SortKey {
    SortKey { column, dir, ty }
}

/// Tasks: priority high first, then oldest, then id.
pub(super) const TASKS: Sort = Sort {
    tag: "tasks",
    keys: &[
        key("priority", Dir::Desc, KeyType::Int),
        key("created_at", Dir::Asc, KeyType::Int),
        key("task_id", Dir::Asc, KeyType::Text),
    ],
};
/// Pipelines: newest first.
pub(super) const PIPELINES: Sort = Sort {
    tag: "pipelines",
    keys: &[
        key("created_at", Dir::Desc, KeyType::Int),
        key("pipeline_id", Dir::Desc, KeyType::Text),
    ],
};
/// Agents: by id.
pub(super) const AGENTS: Sort = Sort {
    tag: "agents",
    keys: &[key("agent_id", Dir::Asc, KeyType::Text)],
};
/// Events: oldest first.
pub(super) const EVENTS: Sort = Sort {
    tag: "events",
    keys: &[
        key("created_at", Dir::Asc, KeyType::Int),
        key("event_id", Dir::Asc, KeyType::Text),
    ],
};
/// Audit records: oldest first.
pub(super) const AUDIT_LOGS: Sort = Sort {
    tag: "audit_logs",
    keys: &[
        key("ts", Dir::Asc, KeyType::Int),
        key("audit_id", Dir::Asc, KeyType::Text),
    ],
};
/// Metrics: by window start.
pub(super) const METRICS: Sort = Sort {
    tag: "metrics",
    keys: &[
        key("window_start", Dir::Asc, KeyType::Int),
        key("metric_id", Dir::Asc, KeyType::Text),
    ],
};

impl Sort {
    /// `ORDER BY` body.
    pub fn order_by(&self) -> String {
        self.keys
            .iter()
            .map(|k| match k.dir {
                Dir::Asc => format!("{} ASC", k.column),
                Dir::Desc => format!("{} DESC", k.column),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The comma-separated key columns, selected after `doc`.
    pub fn columns(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.column)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(k0 ▷ ?) OR (k0 = ? AND k1 ▷ ?) OR …`: strictly after `after` in this order, where
    /// ▷ is `>` for ascending and `<` for descending keys. Pushes the parameters.
    pub fn after_clause(&self, after: &[Value], params: &mut Vec<Value>) -> String {
        let mut ors = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let mut ands = Vec::with_capacity(i + 1);
            for (prev, v) in self.keys[..i].iter().zip(after) {
                ands.push(format!("{} = ?", prev.column));
                params.push(v.clone());
            }
            let op = match k.dir {
                Dir::Asc => ">",
                Dir::Desc => "<",
            };
            ands.push(format!("{} {op} ?", k.column));
            params.push(after[i].clone());
            ors.push(format!("({})", ands.join(" AND ")));
        }
        format!("({})", ors.join(" OR "))
    }

    /// The opaque cursor of a sort key.
    pub fn encode(&self, values: &[Value]) -> String {
        let parts: Vec<Json> = values
            .iter()
            .map(|v| match v {
                Value::Integer(i) => Json::from(*i),
                Value::Text(s) => Json::from(s.as_str()),
                // Sort keys are NOT NULL integer or text columns; anything else cannot occur.
                _ => Json::Null,
            })
            .collect();
        let json = Json::Array(vec![Json::from(self.tag), Json::Array(parts)]);
        mcpd_actors::hex::encode(json.to_string().as_bytes())
    }

    /// Decodes and validates a cursor issued by [`Sort::encode`] for this sort.
    pub fn decode(&self, cursor: &str) -> StoreResult<Vec<Value>> {
        let invalid = || StoreError::Invalid(format!("invalid page cursor for {}", self.tag));
        let bytes = mcpd_actors::hex::decode(cursor).ok_or_else(invalid)?;
        let json: Json = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let Json::Array(outer) = json else {
            return Err(invalid());
        };
        match outer.as_slice() {
            [Json::String(tag), Json::Array(parts)]
                if tag == self.tag && parts.len() == self.keys.len() =>
            {
                parts
                    .iter()
                    .zip(self.keys)
                    .map(|(p, k)| match (k.ty, p) {
                        (KeyType::Int, Json::Number(n)) => n.as_i64().map(Value::Integer),
                        (KeyType::Text, Json::String(s)) => Some(Value::Text(s.clone())),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(invalid)
            }
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_opaque() {
        let key = vec![
            Value::Integer(9),
            Value::Integer(-1_705_314_600_123),
            Value::Text("task-\"ä\"".into()),
        ];
        let c = TASKS.encode(&key);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
        assert_eq!(TASKS.decode(&c).unwrap(), key);
    }

    #[test]
    fn foreign_or_forged_cursors_are_invalid() {
        let agents = AGENTS.encode(&[Value::Text("a".into())]);
        for bad in [
            "",
            "zz",
            "abc",
            agents.as_str(),
            &mcpd_actors::hex::encode(b"[\"tasks\",[1,2]]"),
            &mcpd_actors::hex::encode(b"[\"tasks\",[\"1\",2,\"x\"]]"),
            &mcpd_actors::hex::encode(b"{}"),
        ] {
            let e = TASKS.decode(bad).unwrap_err();
            assert!(matches!(e, StoreError::Invalid(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn after_clause_honours_directions() {
        let mut params = Vec::new();
        let after = [
            Value::Integer(5),
            Value::Integer(10),
            Value::Text("t".into()),
        ];
        let sql = TASKS.after_clause(&after, &mut params);
        assert_eq!(
            sql,
            "((priority < ?) OR (priority = ? AND created_at > ?) OR \
             (priority = ? AND created_at = ? AND task_id > ?))"
        );
        assert_eq!(params.len(), 6);
        assert_eq!(
            TASKS.order_by(),
            "priority DESC, created_at ASC, task_id ASC"
        );
    }
}
