//! Store backends: implementations of [`mcpd_actors::store::Store`].
//!
//! - [`embedded`]: SQLite in the data dir, the zero-set-up default; WAL mode, so several mcpd
//!   processes on one host may share it.
//! - [`mongo`]: MongoDB through the official driver; creates the seed's indexes and keeps its
//!   `schema_version` document.
//!
//! [`open`] picks one from the configuration; [`group_commit::GroupCommit`] wraps it so
//! concurrent transitions share commits.

pub mod embedded;
pub mod group_commit;
pub mod mongo;

use std::sync::Arc;

use mcpd_actors::store::{Store, StoreError};

use crate::config::{SqliteSynchronous, StoreBackend, StoreConfig};

/// Opens the configured store backend, creating its schema (tables or collections and
/// indexes) when missing. Errors name the configuration key that led to them.
pub async fn open(cfg: &StoreConfig) -> Result<Arc<dyn Store>, OpenError> {
    match cfg.backend {
        StoreBackend::Embedded => {
            let sync = match cfg.sqlite_synchronous {
                SqliteSynchronous::Normal => embedded::Synchronous::Normal,
                SqliteSynchronous::Full => embedded::Synchronous::Full,
            };
            let dir = cfg.data_dir.clone();
            let store =
                tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir, sync))
                    .await
                    .map_err(|e| {
                        OpenError::new("store.data_dir", StoreError::Backend(e.to_string()))
                    })?
                    .map_err(|e| OpenError::new("store.data_dir", e))?;
            Ok(Arc::new(store))
        }
        StoreBackend::Mongodb => {
            let uri = cfg.mongodb.uri.as_deref().ok_or_else(|| {
                OpenError::new("store.mongodb.uri", StoreError::Invalid("missing".into()))
            })?;
            let store = mongo::MongoStore::connect(uri, &cfg.mongodb.database)
                .await
                .map_err(|e| OpenError::new("store.mongodb.uri", e))?;
            Ok(Arc::new(store))
        }
    }
}

/// A store that could not be opened, with the configuration key behind it.
#[derive(Debug, thiserror::Error)]
#[error("cannot open store ({key}): {source}")]
pub struct OpenError {
    /// The configuration key to look at.
    pub key: &'static str,
    /// What the backend said.
    #[source]
    pub source: StoreError,
}

impl OpenError {
    fn new(key: &'static str, source: StoreError) -> Self {
        OpenError { key, source }
    }
}
