//! The broker conformance suite: one set of behaviours every [`Broker`] backend must show,
//! stamped into each backend's test binary by [`broker_conformance!`].
//!
//! A backend's test file does:
//! ```ignore
//! #[macro_use]
//! mod broker_conformance;
//! broker_conformance!(memory, async { /* build a BrokerFixture */ });
//! ```
//! The factory expression is evaluated once per test and must yield a fresh, empty broker
//! that judges time by the fixture's [`ManualClock`] (own key prefix on a shared server).
//!
//! [`Broker`]: mcpd_actors::broker::Broker
//! [`ManualClock`]: mcpd_actors::clock::ManualClock

#![allow(dead_code)]

pub mod broker_suite;
pub mod fake_store;
pub mod rebuild_suite;
pub mod services_suite;

pub use broker_suite::BrokerFixture;

/// Stamps one multi-threaded tokio test per suite function into a module `$mod_name`.
/// `$factory` is an expression of type `impl Future<Output = BrokerFixture>`.
#[macro_export]
macro_rules! broker_conformance {
    ($mod_name:ident, $factory:expr) => {
        $crate::broker_conformance!(@stamp $mod_name, $factory;
            backend_answers_ping,
            claim_order_priority_deadline_age_id,
            claim_respects_capabilities,
            claim_on_empty_is_none,
            enqueue_is_idempotent,
            enqueue_refuses_invalid_entries_atomically,
            dequeue_removes_a_queued_task,
            queue_len_counts_every_priority,
            claim_grants_a_lease,
            renew_extends_the_lease,
            wrong_owner_or_token_is_lease_lost,
            lapsed_lease_is_lost_and_listed,
            lapsed_leases_are_bounded_oldest_first,
            requeue_after_lapse_gives_larger_token,
            requeue_with_older_lease_keeps_newer_lease,
            revoke_drops_a_lease_without_queuing,
            claim_skips_live_leased_tasks,
            start_and_finish,
            start_with_wrong_owner_is_lease_lost,
            locks_acquire_renew_release,
            lapsed_lock_goes_to_next_owner_with_larger_token,
            fence_floor_raises_tokens,
            rate_limit_fixed_window,
            sessions_put_get_delete,
            caches_put_get_every_key,
            agent_presence_and_capabilities,
            purge_empties_everything,
            epoch_marker_set_read_and_purged,
            a_lapsed_lock_cannot_be_released,
            capability_ties_are_presented_by_id,
            concurrent_claimers_take_each_task_once,
            queued_work_is_announced,
            rebuild_restores_queues_and_leases,
            rebuild_is_idempotent,
        );
    };
    (@stamp $mod_name:ident, $factory:expr; $($test:ident),+ $(,)?) => {
        mod $mod_name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let fixture: $crate::broker_conformance::BrokerFixture = $factory.await;
                    $crate::broker_conformance::broker_suite::$test(fixture).await;
                }
            )+
        }
    };
}
