//! The scheduler's error type: what a caller of the actors (the network edge, the agent handle,
//! tests) gets back.

use crate::broker::BrokerError;
use crate::model::{DefinitionErrors, InvalidTransition, ScheduleError};
use crate::store::StoreError;

/// Errors of the scheduler.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// A result, failure or renewal sent under a lease that is not the task's current live
    /// lease. Nothing was changed.
    #[error("task {task_id}: refused: {reason}")]
    LeaseRefused {
        /// The task.
        task_id: String,
        /// Why (`lease expired`, `superseded by token 9`, `held by another agent`, …).
        reason: String,
    },
    /// Unknown or wrong credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The thing does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request is malformed or not allowed in the current state.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The actor that should answer is gone (shutting down).
    #[error("scheduler unavailable: {0}")]
    Unavailable(String),
}

impl SchedulerError {
    /// A lease refusal.
    pub fn refused(task_id: &str, reason: impl Into<String>) -> Self {
        SchedulerError::LeaseRefused {
            task_id: task_id.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            SchedulerError::Store(e) => e.is_retryable(),
            SchedulerError::Broker(e) => e.is_retryable(),
            SchedulerError::Unavailable(_) => true,
            _ => false,
        }
    }
}

impl From<DefinitionErrors> for SchedulerError {
    fn from(e: DefinitionErrors) -> Self {
        SchedulerError::Invalid(e.to_string())
    }
}

impl From<InvalidTransition> for SchedulerError {
    fn from(e: InvalidTransition) -> Self {
        SchedulerError::Invalid(e.to_string())
    }
}

impl From<ScheduleError> for SchedulerError {
    fn from(e: ScheduleError) -> Self {
        SchedulerError::Invalid(e.to_string())
    }
}

impl From<actix::MailboxError> for SchedulerError {
    fn from(e: actix::MailboxError) -> Self {
        SchedulerError::Unavailable(e.to_string())
    }
}

/// Result alias of the scheduler.
pub type SchedResult<T> = Result<T, SchedulerError>;
