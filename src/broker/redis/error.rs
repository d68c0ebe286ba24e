//! Mapping of driver and pool errors into [`BrokerError`], naming the operation.

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};
use deadpool_redis::PoolError;
use mcpd_actors::broker::BrokerError;

/// A Redis error of operation `op`: refused or dropped connections and a server that is
/// loading, read-only or without a master are [`BrokerError::Unavailable`] (retrying may
/// help), an I/O timeout is [`BrokerError::Timeout`], the rest (script errors, wrong types)
/// [`BrokerError::Backend`].
pub fn redis_error(op: &str, e: RedisError) -> BrokerError {
    let message = format!("{op}: {e}");
    if e.is_timeout() {
        return BrokerError::Timeout(message);
    }
    let unavailable_server = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::ClusterDown
        )
    );
    if e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || unavailable_server
    {
        BrokerError::Unavailable(message)
    } else {
        BrokerError::Backend(message)
    }
}

/// A pool error of operation `op`: no connection within the wait timeout, or a closed pool, is
/// [`BrokerError::Unavailable`]; a failed connect is mapped as its Redis error.
pub fn pool_error(op: &str, e: PoolError) -> BrokerError {
    match e {
        PoolError::Backend(e) => redis_error(op, e),
        PoolError::Timeout(kind) => {
            BrokerError::Unavailable(format!("{op}: no redis connection ({kind:?} timed out)"))
        }
        PoolError::Closed => BrokerError::Unavailable(format!("{op}: redis pool closed")),
        other => BrokerError::Backend(format!("{op}: {other}")),
    }
}

/// A stored value at `key` that does not decode.
pub fn corrupt(key: &str, e: serde_json::Error) -> BrokerError {
    BrokerError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    }
}
