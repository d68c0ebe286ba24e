//! The store conformance suite against the embedded SQLite store, one fresh database
//! directory per test.

mod conformance;

use std::sync::Arc;

use mcpd::store::embedded::{EmbeddedStore, Synchronous};
use mcpd_actors::store::Store;

async fn fresh_store() -> Arc<dyn Store> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("store-embedded")
        .join(uuid::Uuid::new_v4().simple().to_string());
    Arc::new(EmbeddedStore::open(&dir, Synchronous::Normal).expect("open embedded store"))
}

store_conformance!(embedded, fresh_store());

/// The same suite through the group-commit decorator the daemon wraps every store in.
async fn grouped_store() -> Arc<dyn Store> {
    Arc::new(mcpd::store::group_commit::GroupCommit::new(
        fresh_store().await,
        64,
    ))
}

store_conformance!(embedded_group_commit, grouped_store());
