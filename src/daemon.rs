//! The daemon's library entry points: [`run`] (serve until told to stop) and [`migrate`].
//!
//! `main.rs` only parses the command line, loads the configuration, sets up tracing and calls
//! these; tests call them directly with their own shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};
use anyhow::Context as _;
use async_trait::async_trait;
use mcpd_actors::broker::Broker;
use mcpd_actors::clock::{SharedClock, SystemClock};
use mcpd_actors::deps::{Counters, Deps, Settings};
use mcpd_actors::handle::Scheduler;
use mcpd_actors::journal::{Journal, Retention};
use mcpd_actors::store::Store;
use tracing::info;

use crate::config::{mask_url, Config, StoreBackend};
use crate::http::{self, AppState, Readiness, ReadinessCheck};
use crate::shutdown::Shutdown;

/// Runs the daemon until `shutdown` completes, then stops in the order documented in
/// [`crate::shutdown`] and returns.
///
/// Must be called inside an actix system (`actix_web::rt::System::new().block_on(..)`,
/// `#[actix_web::main]` or `#[actix_web::test]`): the HTTP server's workers are actix arbiters.
///
/// Errors: a listener that cannot be bound (the error names the address), a data directory that
/// cannot be created, or the HTTP server failing while running.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    log_startup(&config);
    let root = Shutdown::new();

    // Created here, after validation, never by config loading: a bad config writes nothing.
    if config.store.backend == StoreBackend::Embedded {
        std::fs::create_dir_all(&config.store.data_dir).with_context(|| {
            format!(
                "cannot create store.data_dir {}",
                config.store.data_dir.display()
            )
        })?;
    }

    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn Store> = Arc::new(crate::store::group_commit::GroupCommit::new(
        crate::store::open(&config.store).await?,
        256,
    ));
    let broker = crate::broker::open(&config.broker, clock.clone()).await?;
    // The broker may have lost its data (or be brand new): everything in it is rebuilt from
    // the store before any agent is served, and its fencing counter raised above every token
    // the store has recorded.
    let report = broker
        .rebuild_from(store.as_ref(), clock.now())
        .await
        .context("cannot rebuild the broker from the store")?;
    info!(
        queued = report.queued,
        leases_restored = report.leases_restored,
        leases_lapsed = report.leases_lapsed,
        fence_floor = report.fence_floor,
        "broker rebuilt from store"
    );
    let readiness = Readiness::new()
        .with(Arc::new(StoreReady(store.clone())))
        .with(Arc::new(BrokerReady(broker.clone())));

    // The supervisor tree: it resumes every unfinished pipeline (taking its coordination lock)
    // and serves agents through the library-level handles.
    let deps = Deps {
        store: store.clone(),
        broker: broker.clone(),
        clock: clock.clone(),
        journal: Journal {
            retention: Retention {
                events: days(config.retention.events_days),
                audit_logs: days(config.retention.audit_logs_days),
            },
        },
        settings: settings(&config),
        instance_id: instance_id(&config.scheduler.instance_id),
        counters: Arc::new(Counters::default()),
    };
    info!(instance_id = %deps.instance_id, "starting scheduler");
    let scheduler = Scheduler::start(deps)
        .await
        .context("cannot start the scheduler")?;

    let state = AppState {
        readiness,
        shutdown: root.child_token(),
    };
    let http_addr = config.server.http_addr;
    let timeout = Duration::from_secs(config.server.shutdown_timeout_seconds);
    let server = HttpServer::new(move || App::new().configure(http::configure(state.clone())))
        // We own the signals (see `shutdown::shutdown_signal`) so the shutdown order holds.
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout_seconds)
        .bind(http_addr)
        .with_context(|| format!("cannot listen on server.http_addr {http_addr}"))?
        .run();
    let server_handle = server.handle();
    let mut server = std::pin::pin!(server);
    info!(%http_addr, "http listening");
    // TODO(network edge): the framed agent protocol listener binds `server.tcp_addr` here.

    tokio::select! {
        result = &mut server => {
            result.context("http server failed")?;
            anyhow::bail!("http server stopped unexpectedly");
        }
        () = shutdown => {}
    }

    let deadline = Instant::now() + timeout;
    // 1. Stop intake: /readyz turns 503 at once; listeners close and in-flight requests get
    //    up to the timeout (actix's graceful stop).
    info!(phase = "stop intake", "shutting down");
    root.trigger();
    // The server future processes the stop command, so it must be polled while we wait.
    let ((), stopped) = tokio::join!(server_handle.stop(true), server);
    stopped.context("http server failed while stopping")?;
    // 2. Stop dispatch: the dispatcher watches a child of the root token (already cancelled).
    // 3. Drain tracked work with whatever is left of the timeout.
    info!(phase = "drain", "shutting down");
    let remaining = deadline.saturating_duration_since(Instant::now());
    if !root.drain(remaining).await {
        tracing::warn!(
            timeout_seconds = config.server.shutdown_timeout_seconds,
            "drain timed out; unfinished tasks keep their leases and will be requeued"
        );
    }
    // 4. Persist: every transition was persisted before it was acknowledged; nothing waits.
    // 5. Release locks: coordinators release their pipeline locks as they stop, so another
    //    instance takes the pipelines over at once instead of after the lock TTL.
    scheduler.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    info!("stopped");
    Ok(())
}

/// Creates or upgrades the store's schema (collections, indexes) and exits.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    // Opening a store applies its pending migrations (tables or collections, the seed's
    // indexes, the schema_version record) and refuses a schema newer than this binary.
    let store = crate::store::open(&config.store).await?;
    store
        .ping()
        .await
        .context("store does not answer after migrating")?;
    info!(backend = %config.store.backend, "schema up to date");
    Ok(())
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// Scheduler settings from the configuration (the rest keep their defaults).
pub fn settings(config: &Config) -> Settings {
    let s = &config.scheduler;
    Settings {
        lease_ttl: Duration::from_secs(s.lease_ttl_seconds),
        heartbeat_timeout: Duration::from_secs(s.heartbeat_timeout_seconds),
        reaper_interval: Duration::from_secs(s.reaper_interval_seconds),
        pipeline_lock_ttl: Duration::from_secs(s.pipeline_lock_ttl_seconds),
        resync_interval: Duration::from_millis(s.resync_interval_ms),
        fetch_max_wait: Duration::from_secs(s.fetch_max_wait_seconds),
        metrics_window: Duration::from_secs(s.metrics_window_seconds),
        metrics_retention: days(config.retention.metrics_days),
        ..Settings::default()
    }
}

/// The configured instance id, or `{hostname}-{pid}`.
fn instance_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mcpd".to_string());
    format!("{host}-{}", std::process::id())
}

/// `/readyz` check: the store answers.
struct StoreReady(Arc<dyn Store>);

#[async_trait]
impl ReadinessCheck for StoreReady {
    fn name(&self) -> &str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

/// `/readyz` check: the broker answers.
struct BrokerReady(Arc<dyn Broker>);

#[async_trait]
impl ReadinessCheck for BrokerReady {
    fn name(&self) -> &str {
        "broker"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

fn log_startup(config: &Config) {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        store = %config.store.backend,
        data_dir = %config.store.data_dir.display(),
        mongodb_uri = config.store.mongodb.uri.as_deref().map(mask_url).unwrap_or_default(),
        broker = %config.broker.backend,
        redis_url = %mask_url(&config.broker.redis.url),
        http_addr = %config.server.http_addr,
        tcp_addr = %config.server.tcp_addr,
        "mcpd starting"
    );
}
