//! Schema versioning: the seed's `schema_version` document and the ordered list of migrations.
//!
//! The document lives in the `schema_version` collection under `_id: "schema_version"`:
//! `{current_version, migrations: [{version, description, applied_at}]}` as in the seed's
//! "Data Migration Strategy". [`migrate`] applies every migration above `current_version`, in
//! order, and records each one right after it succeeded, so an interrupted run resumes where it
//! stopped. Migrations must be idempotent: two mcpd instances starting together may both apply
//! one; only the first records it (the record is a conditional upsert, see `record`).

use bson::{doc, Bson, Document};
use futures::future::BoxFuture;
use mongodb::Database;

use super::codec::{is_duplicate_key, map_err};
use super::indexes::ensure_indexes;
use mcpd_actors::store::StoreError;

/// Collection holding the schema version document.
pub const SCHEMA_COLLECTION: &str = "schema_version";
/// `_id` of the schema version document.
pub const SCHEMA_DOC_ID: &str = "schema_version";

/// What a migration did beyond succeeding: notes for the report (e.g. skipped indexes).
pub type MigrationNotes = Vec<String>;

/// One schema migration.
pub struct Migration {
    /// Version reached once applied (1, 2, …, no gaps).
    pub version: u32,
    /// What it does (recorded in the schema version document).
    pub description: &'static str,
    /// Applies it; must be idempotent.
    pub apply: for<'a> fn(&'a Database) -> BoxFuture<'a, Result<MigrationNotes, StoreError>>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("description", &self.description)
            .finish()
    }
}

/// Every migration, in order.
pub fn migrations() -> Vec<Migration> {
    vec![Migration {
        version: 1,
        description: "create the collections' indexes",
        apply: |db| {
            Box::pin(async move {
                let skipped = ensure_indexes(db).await?;
                Ok(skipped
                    .into_iter()
                    .map(|name| format!("index {name} refused by the server, skipped"))
                    .collect())
            })
        },
    }]
}

/// The outcome of [`migrate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Schema version found.
    pub from_version: u32,
    /// Schema version now.
    pub to_version: u32,
    /// Versions applied by this run, in order.
    pub applied: Vec<u32>,
    /// Notes of the applied migrations (skipped indexes, …).
    pub notes: Vec<String>,
}

/// The `current_version` stored, 0 when there is no schema version document.
pub async fn current_version(db: &Database) -> Result<u32, StoreError> {
    let coll = db.collection::<Document>(SCHEMA_COLLECTION);
    let found = coll
        .find_one(doc! {"_id": SCHEMA_DOC_ID})
        .await
        .map_err(|e| map_err("read schema version", SCHEMA_COLLECTION, e))?;
    let Some(d) = found else { return Ok(0) };
    match d.get("current_version") {
        Some(Bson::Int32(v)) if *v >= 0 => Ok(*v as u32),
        Some(Bson::Int64(v)) if *v >= 0 && *v <= u32::MAX as i64 => Ok(*v as u32),
        other => Err(StoreError::Corrupt {
            collection: SCHEMA_COLLECTION,
            message: format!("current_version is {other:?}"),
        }),
    }
}

/// Applies the migrations above the stored version, in order.
pub async fn migrate(db: &Database) -> Result<MigrationReport, StoreError> {
    let from_version = current_version(db).await?;
    let mut report = MigrationReport {
        from_version,
        to_version: from_version,
        ..Default::default()
    };
    for m in migrations()
        .into_iter()
        .filter(|m| m.version > from_version)
    {
        let notes = (m.apply)(db).await?;
        record(db, &m).await?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "applied migration"
        );
        report.applied.push(m.version);
        report.notes.extend(notes);
        report.to_version = m.version;
    }
    Ok(report)
}

/// Records `m` as applied: sets `current_version` and appends to `migrations`, only when the
/// stored version is still below `m.version`. When another instance recorded it first, the
/// filter does not match, the upsert's insert meets the existing `_id` and the duplicate key
/// error means "already recorded".
async fn record(db: &Database, m: &Migration) -> Result<(), StoreError> {
    let coll = db.collection::<Document>(SCHEMA_COLLECTION);
    let filter = doc! {"_id": SCHEMA_DOC_ID, "current_version": {"$lt": m.version as i64}};
    let update = doc! {
        "$set": {"current_version": m.version as i64},
        "$push": {"migrations": {
            "version": m.version as i64,
            "description": m.description,
            "applied_at": bson::DateTime::now(),
        }},
    };
    match coll.update_one(filter, update).upsert(true).await {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(map_err("record migration", SCHEMA_COLLECTION, e)),
    }
}
