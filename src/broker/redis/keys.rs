//! Key templates of the Redis broker, declared once.
//!
//! Every key is the broker's prefix followed by the logical key of the layout table in
//! [`mcpd_actors::broker`]; nothing else in this module family formats a key. The Lua scripts
//! that must build keys themselves (a claim reads one queue per capability and priority, a
//! requeue clears the assigned set of whoever held the lease) get the prefix in ARGV and spell
//! the same templates; those spots name the template they copy.

use mcpd_actors::broker::{CacheKey, LockKey};

/// `tasks:running`: task ids an agent has started.
pub const RUNNING: &str = "tasks:running";
/// `agents:active`: connected agent ids.
pub const ACTIVE_AGENTS: &str = "agents:active";
/// `fence:counter`: the fencing-token counter shared by every lease and lock.
pub const FENCE_COUNTER: &str = "fence:counter";
/// `leases:expiry`: task id → lease expiry (ms), the reaper's index.
pub const LEASE_EXPIRY: &str = "leases:expiry";

/// Builds the prefixed keys of one broker.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (used verbatim: `mcpd:` gives `mcpd:tasks:running`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn at(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// `tasks:pending:{priority}:{task_type}`: a sorted set of queued tasks
    /// (score = deadline ms, member = `{created_at ms:013}:{task_id}`).
    pub fn pending(&self, priority: u8, task_type: &str) -> String {
        self.at(&format!("tasks:pending:{priority}:{task_type}"))
    }

    /// `tasks:running`.
    pub fn running(&self) -> String {
        self.at(RUNNING)
    }

    /// `tasks:assigned:{agent_id}`: task ids leased to the agent.
    pub fn assigned(&self, agent_id: &str) -> String {
        self.at(&format!("tasks:assigned:{agent_id}"))
    }

    /// `lock:task:{task_id}`: the task's lease.
    pub fn task_lock(&self, task_id: &str) -> String {
        self.lock(&LockKey::Task(task_id.to_owned()))
    }

    /// A coordination lock (`lock:task:…`, `lock:pipeline:{id}[:stage:{n}]`).
    pub fn lock(&self, key: &LockKey) -> String {
        self.at(&key.key())
    }

    /// A status cache (`tasks:status:{id}`, `pipeline:{id}:status`, `pipeline:{id}:stage:{n}`).
    pub fn cache(&self, key: &CacheKey) -> String {
        self.at(&key.key())
    }

    /// `agents:status:{agent_id}`: the agent's presence.
    pub fn agent_status(&self, agent_id: &str) -> String {
        self.at(&format!("agents:status:{agent_id}"))
    }

    /// `agents:capabilities:{capability}`: agent id → performance score.
    pub fn capability(&self, capability: &str) -> String {
        self.at(&format!("agents:capabilities:{capability}"))
    }

    /// `agents:active`.
    pub fn active_agents(&self) -> String {
        self.at(ACTIVE_AGENTS)
    }

    /// `rate_limit:{endpoint}:{actor}`: a fixed-window counter.
    pub fn rate_limit(&self, endpoint: &str, actor: &str) -> String {
        self.at(&format!("rate_limit:{endpoint}:{actor}"))
    }

    /// `ws:session:{session_id}`.
    pub fn session(&self, session_id: &str) -> String {
        self.at(&format!("ws:session:{session_id}"))
    }

    /// `fence:counter`.
    pub fn fence_counter(&self) -> String {
        self.at(FENCE_COUNTER)
    }

    /// `events:queued` (a pub/sub channel).
    pub fn queued_channel(&self) -> String {
        self.at("events:queued")
    }

    /// `meta:epoch`.
    pub fn epoch(&self) -> String {
        self.at("meta:epoch")
    }

    /// `leases:expiry`.
    pub fn lease_expiry(&self) -> String {
        self.at(LEASE_EXPIRY)
    }

    /// The SCAN pattern matching every key of this prefix (glob characters escaped).
    pub fn scan_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_seed_layout_under_the_prefix() {
        let k = Keys::new("mcpd:");
        assert_eq!(
            k.pending(5, "bias_detection"),
            "mcpd:tasks:pending:5:bias_detection"
        );
        assert_eq!(k.assigned("a1"), "mcpd:tasks:assigned:a1");
        assert_eq!(k.task_lock("t1"), "mcpd:lock:task:t1");
        assert_eq!(
            k.lock(&LockKey::PipelineStage("p".into(), 2)),
            "mcpd:lock:pipeline:p:stage:2"
        );
        assert_eq!(
            k.cache(&CacheKey::PipelineStatus("p".into())),
            "mcpd:pipeline:p:status"
        );
        assert_eq!(k.rate_limit("/tasks", "a1"), "mcpd:rate_limit:/tasks:a1");
        assert_eq!(k.session("s"), "mcpd:ws:session:s");
        assert_eq!(k.fence_counter(), "mcpd:fence:counter");
    }

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        assert_eq!(Keys::new("t[1]*:").scan_pattern(), "t\\[1\\]\\*:*");
    }
}
