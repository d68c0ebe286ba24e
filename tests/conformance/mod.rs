//! The store conformance suite, shared by every backend's test binary.
//!
//! A backend's test file declares `mod conformance;` and stamps the suite with
//! `store_conformance!(module_name, async_factory_expr)`, where the expression evaluates to a
//! future of a fresh, empty `Arc<dyn Store>` (it is evaluated once per test, inside the
//! generated module, which sees the caller's items through `use super::*`). The list of test
//! names lives once, in the macro: a test added to it runs for every backend.

#![allow(dead_code)]

pub mod fixtures;
pub mod store_suite;

/// Stamps one multi-threaded tokio test per suite function into `mod $name`.
#[macro_export]
macro_rules! store_conformance {
    ($name:ident, $factory:expr) => {
        $crate::store_conformance!(@stamp $name, $factory, [
            ping,
            agent_round_trip,
            task_round_trip,
            pipeline_round_trip,
            event_audit_metric_round_trip,
            timestamps_keep_milliseconds,
            insert_existing_id_conflicts,
            failed_transition_writes_nothing,
            a_stage_query_needs_a_pipeline,
            update_with_current_revision,
            stale_revision_conflicts,
            wrong_expected_status_conflicts,
            update_missing_is_not_found,
            fencing_refuses_lower_lease_tokens,
            max_lease_token,
            soft_delete_hides_from_queries,
            tasks_by_pipeline_and_stage,
            tasks_by_status_in_priority_order,
            tasks_by_agent_and_type,
            pipelines_by_status_newest_first,
            agents_by_type_status_capability,
            events_by_type_target_pipeline,
            audit_by_resource_actor_action,
            paging_walks_each_item_once,
            bad_pages_are_invalid,
            metrics_put_replace_and_query,
            apply_batch_isolates_failures,
            concurrent_compare_and_set_has_one_winner,
            invalid_transitions_write_nothing,
        ]);
    };
    (@stamp $name:ident, $factory:expr, [$($test:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let store: ::std::sync::Arc<dyn ::mcpd_actors::store::Store> = ($factory).await;
                    $crate::conformance::store_suite::$test(store).await;
                }
            )*
        }
    };
}
