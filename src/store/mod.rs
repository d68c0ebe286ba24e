//! Store backends: implementations of [`mcpd_actors::store::Store`].
//!
//! - [`embedded`]: SQLite in the data dir, the zero-set-up default; WAL mode, so several mcpd
//!   processes on one host may share it.

pub mod embedded;
pub mod mongo;
