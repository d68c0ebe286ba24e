//! mcpd daemon crate.
pub mod broker;
