//! Applying [`Transition`]s: entity inserts and compare-and-set replacements, then the events
//! and audit records, in one multi-document transaction when the server has them.
//!
//! Atomicity: on a replica set or sharded cluster every transition is one session transaction
//! (`start_transaction`, the writes, `commit_transaction`), retried a bounded number of times
//! on the driver's `TransientTransactionError` (the whole transaction) and
//! `UnknownTransactionCommitResult` (the commit) labels. A failed precondition aborts it, so
//! nothing of the transition is visible. A **standalone** `mongod` has no transactions: the
//! writes are then done in order — entity writes first, then events, then audits — each atomic
//! on its own document; a failure part-way leaves the earlier writes in place. The
//! compare-and-set on every update still holds, so no lost update is possible, but an entity
//! change may persist without its event or audit record. Production deployments must use a
//! replica set (a single-node one is enough); `connect` warns once otherwise.
//!
//! Preconditions are enforced by the update filter itself: `{id, revision, [status],
//! [lease_token <= new]}`. When it matches nothing the current document is read (inside the
//! transaction, so from the same snapshot) to name the precise failure.

use bson::{doc, Bson, Document};
use mongodb::error::{
    Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::ClientSession;

use super::codec::{encode, is_duplicate_key, map_err};
use super::MongoStore;
use mcpd_actors::store::{Entity, EntityKind, Expect, StoreError, Transition, Write};

/// Attempts of a whole transaction on `TransientTransactionError` (write conflicts with a
/// concurrent transaction, a primary election).
const MAX_TRANSACTION_ATTEMPTS: u32 = 5;
/// Attempts of a commit on `UnknownTransactionCommitResult` (the driver retries commit
/// idempotently).
const MAX_COMMIT_ATTEMPTS: u32 = 5;

/// Why a write sequence stopped: a refused precondition (final), or a driver error (maybe
/// transient).
enum Failure {
    Store(StoreError),
    Driver {
        op: String,
        collection: &'static str,
        err: MongoError,
    },
}

impl Failure {
    fn driver(op: impl Into<String>, collection: &'static str, err: MongoError) -> Self {
        Failure::Driver {
            op: op.into(),
            collection,
            err,
        }
    }
    fn into_store(self) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Driver {
                op,
                collection,
                err,
            } => map_err(&op, collection, err),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// The id field of an entity collection.
fn id_field(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Agent => "agent_id",
        EntityKind::Task => "task_id",
        EntityKind::Pipeline => "pipeline_id",
    }
}

fn encode_entity(e: &Entity) -> Result<Document, StoreError> {
    let what = format!("{} {}", e.kind(), e.id());
    match e {
        Entity::Agent(a) => encode(&what, a.as_ref()),
        Entity::Task(t) => encode(&what, t.as_ref()),
        Entity::Pipeline(p) => encode(&what, p.as_ref()),
    }
}

/// A task's lease token, for the fencing filter.
fn lease_token(e: &Entity) -> Option<u64> {
    match e {
        Entity::Task(t) => Some(t.lease_token),
        _ => None,
    }
}

/// Runs `$call` with `.session(s)` when a session is given, without one otherwise.
macro_rules! with_session {
    ($session:expr, $action:expr) => {
        match $session.as_deref_mut() {
            Some(s) => $action.session(s).await,
            None => $action.await,
        }
    };
}

impl MongoStore {
    /// [`mcpd_actors::store::Store::apply`].
    pub(super) async fn apply_transition(&self, tx: Transition) -> Result<(), StoreError> {
        tx.check()?;
        if !self.transactions {
            return self.write_all(None, &tx).await.map_err(Failure::into_store);
        }
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| map_err("start session", "session", e))?;
        let mut attempt = 1;
        'transaction: loop {
            session
                .start_transaction()
                .await
                .map_err(|e| map_err("start transaction", "session", e))?;
            if let Err(f) = self.write_all(Some(&mut session), &tx).await {
                // Aborting is best effort: the server aborts on its own when the session ends.
                let _ = session.abort_transaction().await;
                match f {
                    Failure::Driver { ref err, .. }
                        if err.contains_label(TRANSIENT_TRANSACTION_ERROR)
                            && attempt < MAX_TRANSACTION_ATTEMPTS =>
                    {
                        attempt += 1;
                        continue 'transaction;
                    }
                    f => return Err(f.into_store()),
                }
            }
            let mut commits = 1;
            loop {
                match session.commit_transaction().await {
                    Ok(()) => return Ok(()),
                    Err(e)
                        if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                            && commits < MAX_COMMIT_ATTEMPTS =>
                    {
                        commits += 1;
                    }
                    Err(e)
                        if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                            && attempt < MAX_TRANSACTION_ATTEMPTS =>
                    {
                        attempt += 1;
                        continue 'transaction;
                    }
                    Err(e) => return Err(map_err("commit transaction", "session", e)),
                }
            }
        }
    }

    /// The transition's writes in order: entities, then events, then audit records.
    async fn write_all(
        &self,
        mut session: Option<&mut ClientSession>,
        tx: &Transition,
    ) -> Result<(), Failure> {
        for w in &tx.writes {
            match w {
                Write::Insert(e) => self.insert_entity(&mut session, e).await?,
                Write::Update { entity, expect } => {
                    self.update_entity(&mut session, entity, expect).await?
                }
            }
        }
        if !tx.events.is_empty() {
            let docs = tx
                .events
                .iter()
                .map(|e| encode(&format!("event {}", e.event_id), e))
                .collect::<Result<Vec<_>, _>>()?;
            let coll = self.coll("events");
            if let Err(e) = with_session!(session, coll.insert_many(docs)) {
                return Err(if is_duplicate_key(&e) {
                    Failure::Store(StoreError::Invalid(format!(
                        "append events: an event_id already exists: {e}"
                    )))
                } else {
                    Failure::driver("append events", "events", e)
                });
            }
        }
        if !tx.audits.is_empty() {
            let docs = tx
                .audits
                .iter()
                .map(|a| encode(&format!("audit record {}", a.audit_id), a))
                .collect::<Result<Vec<_>, _>>()?;
            let coll = self.coll("audit_logs");
            if let Err(e) = with_session!(session, coll.insert_many(docs)) {
                return Err(if is_duplicate_key(&e) {
                    Failure::Store(StoreError::Invalid(format!(
                        "append audit records: an audit_id already exists: {e}"
                    )))
                } else {
                    Failure::driver("append audit records", "audit_logs", e)
                });
            }
        }
        Ok(())
    }

    async fn insert_entity(
        &self,
        session: &mut Option<&mut ClientSession>,
        e: &Entity,
    ) -> Result<(), Failure> {
        let kind = e.kind();
        let doc = encode_entity(e)?;
        let coll = self.coll(kind.collection());
        match with_session!(session, coll.insert_one(doc)) {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate_key(&err) => Err(Failure::Store(StoreError::Conflict {
                kind,
                id: e.id().to_string(),
                reason: "already exists".into(),
            })),
            Err(err) => Err(Failure::driver(
                format!("insert {kind} {}", e.id()),
                kind.collection(),
                err,
            )),
        }
    }

    async fn update_entity(
        &self,
        session: &mut Option<&mut ClientSession>,
        e: &Entity,
        expect: &Expect,
    ) -> Result<(), Failure> {
        let kind = e.kind();
        let field = id_field(kind);
        let doc = encode_entity(e)?;
        let mut filter = doc! {field: e.id(), "revision": expect.revision as i64};
        if let Some(status) = expect.status {
            filter.insert("status", status);
        }
        if let Some(token) = lease_token(e) {
            filter.insert("lease_token", doc! {"$lte": token as i64});
        }
        let coll = self.coll(kind.collection());
        let op = || format!("update {kind} {}", e.id());
        let result = with_session!(session, coll.replace_one(filter, doc))
            .map_err(|err| Failure::driver(op(), kind.collection(), err))?;
        if result.matched_count == 1 {
            return Ok(());
        }
        let current = with_session!(session, coll.find_one(doc! {field: e.id()}))
            .map_err(|err| Failure::driver(op(), kind.collection(), err))?;
        Err(Failure::Store(why_refused(kind, e, expect, current)))
    }
}

/// The precise reason an update's filter matched nothing, from the current document: it does
/// not exist, its lease token is higher (fenced), its status or its revision differ.
fn why_refused(
    kind: EntityKind,
    e: &Entity,
    expect: &Expect,
    current: Option<Document>,
) -> StoreError {
    let id = e.id().to_string();
    let Some(current) = current else {
        return StoreError::NotFound { kind, id };
    };
    let int = |field: &str| match current.get(field) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        _ => None,
    };
    if let Some(offered) = lease_token(e) {
        let stored = int("lease_token").unwrap_or(0);
        if stored > offered as i64 {
            return StoreError::Fenced {
                task_id: id,
                offered,
                current: stored as u64,
            };
        }
    }
    if let Some(want) = expect.status {
        let found = current.get_str("status").unwrap_or("<missing>");
        if found != want {
            return StoreError::Conflict {
                kind,
                id,
                reason: format!("expected status {want}, found {found}"),
            };
        }
    }
    let found = int("revision")
        .map(|r| r.to_string())
        .unwrap_or_else(|| "none".into());
    StoreError::Conflict {
        kind,
        id,
        reason: format!("expected revision {}, found {found}", expect.revision),
    }
}
