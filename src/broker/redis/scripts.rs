//! The Lua scripts of the Redis broker and the decoding of their replies.
//!
//! Every change that touches more than one key, or reads before it writes, is one script in
//! `src/broker/lua/`, so Redis runs it atomically. Each is compiled in with `include_str!`
//! behind the shared `prelude.lua` and sent as a [`Script`]: EVALSHA, falling back to EVAL
//! (which loads it again) when the server answers NOSCRIPT — after a restart, `SCRIPT FLUSH`
//! or a failover.
//!
//! Replies are arrays whose first element names the outcome (`ok`, `none`, `lost`, `held`,
//! `kept`, `newer`, `queued`, `restored`, `corrupt`); [`Reply`] reads them.

use std::sync::LazyLock;

use deadpool_redis::redis::{Script, Value};
use mcpd_actors::broker::{BrokerError, BrokerResult};

const PRELUDE: &str = include_str!("../lua/prelude.lua");

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

macro_rules! script {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        pub static $name: LazyLock<Script> =
            LazyLock::new(|| with_prelude(include_str!(concat!("../lua/", $file))));
    };
}

script!(
    /// Takes the best queued task and leases it.
    CLAIM,
    "claim.lua"
);
script!(
    /// Marks a leased task running.
    START,
    "start.lua"
);
script!(
    /// Extends a live lease.
    RENEW,
    "renew.lua"
);
script!(
    /// Ends a live lease.
    FINISH,
    "finish.lua"
);
script!(
    /// Puts a task back in its queue, dropping its lease.
    REQUEUE,
    "requeue.lua"
);
script!(
    /// Drops a lease without queuing its task.
    REVOKE,
    "revoke.lua"
);
script!(
    /// Re-installs a lease from the store.
    RESTORE_LEASE,
    "restore_lease.lua"
);
script!(
    /// Raises the fencing counter.
    FENCE_FLOOR,
    "fence_floor.lua"
);
script!(
    /// Takes a coordination lock.
    LOCK_ACQUIRE,
    "lock_acquire.lua"
);
script!(
    /// Extends a coordination lock.
    LOCK_RENEW,
    "lock_renew.lua"
);
script!(
    /// Releases a coordination lock.
    LOCK_RELEASE,
    "lock_release.lua"
);
script!(
    /// Counts a request in a fixed window.
    RATE_LIMIT,
    "rate_limit.lua"
);

/// A script's reply: an outcome tag followed by its fields.
#[derive(Debug)]
pub struct Reply {
    op: &'static str,
    items: Vec<Value>,
}

impl Reply {
    /// Reads the reply of the script run by operation `op`.
    pub fn new(op: &'static str, value: Value) -> BrokerResult<Self> {
        match value {
            Value::Array(items) if !items.is_empty() => Ok(Reply { op, items }),
            other => Err(BrokerError::Backend(format!(
                "{op}: unexpected script reply {other:?}"
            ))),
        }
    }

    /// The outcome tag.
    pub fn tag(&self) -> BrokerResult<String> {
        self.str(0)
    }

    /// Field `i` as a string.
    pub fn str(&self, i: usize) -> BrokerResult<String> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            other => Err(self.bad(i, other)),
        }
    }

    /// Field `i` as an integer.
    pub fn int(&self, i: usize) -> BrokerResult<i64> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.bad(i, self.items.get(i))),
            other => Err(self.bad(i, other)),
        }
    }

    /// Field `i` as a fencing token.
    pub fn token(&self, i: usize) -> BrokerResult<u64> {
        let n = self.int(i)?;
        u64::try_from(n).map_err(|_| self.bad(i, self.items.get(i)))
    }

    fn bad(&self, i: usize, got: Option<&Value>) -> BrokerError {
        BrokerError::Backend(format!(
            "{}: script reply field {i} malformed: {got:?}",
            self.op
        ))
    }

    /// The caller's claim on a lease or lock failed: the human reason of a `lost` reply
    /// (`expired`, `held by another owner`, `superseded by token N`, or `absent` — `no lease`
    /// for a task, `not held` for a lock).
    pub fn lost_reason(&self, absent: &str) -> BrokerResult<String> {
        let reason = self.str(1)?;
        let held = self.int(2).unwrap_or(0);
        Ok(match reason.as_str() {
            "expired" => "expired".to_owned(),
            "owner" => "held by another owner".to_owned(),
            "superseded" => format!("superseded by token {held}"),
            _ => absent.to_owned(),
        })
    }
}
