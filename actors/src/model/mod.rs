//! The data model of the seed schema (`mcp-database-schema.md`): its six collections, every
//! field under the seed's name, the status vocabularies as enums, the task and pipeline state
//! machines and the pipeline-definition validator.
//!
//! Departures from the seed are few and each is marked on its field: `revision` (optimistic
//! concurrency for compare-and-set), `lease_token`/`lease_expires_at` on tasks (fencing, which
//! must survive the loss of the broker), and the stage statuses `cancelled` and `rolled_back`
//! that the error strategies need. The seed's `_id: ObjectId` is left to MongoDB: the model
//! never reads or writes it, the `*_id` string fields are the identities.

mod agent;
mod audit;
mod event;
mod metric;
mod pipeline;
mod schedule;
mod task;
mod time;
mod validate;

pub use agent::*;
pub use audit::*;
pub use event::*;
pub use metric::*;
pub use pipeline::*;
pub use schedule::{ScheduleError, DEFAULT_MAX_DELAY};
pub use task::*;
pub use time::Timestamp;
pub use validate::{
    DefinitionError, DefinitionErrors, MAX_DELAY_SECONDS, MAX_RETRIES, MAX_STAGES,
    MAX_TIMEOUT_SECONDS,
};

/// A free-form JSON object (the seed's `Object`).
pub type Object = serde_json::Map<String, serde_json::Value>;

/// Declares an enum of seed vocabulary strings with serde names, `as_str`, `FromStr`,
/// `Display` and the list of every value.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[doc = $text] #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The seed's string for this value.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::model::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(crate::model::UnknownValue {
                        kind: stringify!($name),
                        value: s.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}
pub(crate) use string_enum;

/// A string that is not one of an enum's seed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {})", expected.join(", "))]
pub struct UnknownValue {
    /// The enum's name.
    pub kind: &'static str,
    /// What was given.
    pub value: String,
    /// The accepted values.
    pub expected: &'static [&'static str],
}

/// Generates identifiers: a kind prefix and 32 random hex digits (`task-5f0c…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
