//! Store backends: implementations of [`mcpd_actors::store::Store`].

pub mod mongo;
