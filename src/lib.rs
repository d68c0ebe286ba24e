//! mcpd daemon crate.

pub mod store;
