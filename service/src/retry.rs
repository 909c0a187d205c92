//! Which database errors are worth one more try, in one place: the store's
//! writes and the data migrations' batches retry them, within a bound.
//!
//! * deadlocks: MySQL/MariaDB 1213, PostgreSQL `40P01`;
//! * **Galera certification conflicts**: a transaction that lost the race to
//!   another node's write fails at commit with 1213 ("Deadlock found when
//!   trying to get lock; try restarting transaction");
//! * lock wait timeouts (1205, `55P03`), serialization failures (`40001`),
//!   SQLite busy and locked (5, 6, 261, 517).
//!
//! A caller's own transaction is never retried behind its back: only the
//! caller can redo the whole of it.
//!
//! Apart from conflicts, [`is_connection_lost`] tells a connection that died
//! under the statement (a server restart, a failover, a proxy or firewall
//! dropping it). The pool never hands that connection out again, so a
//! statement that is safe to send twice can go again on another one.

use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr};

/// How many times a transient failure is retried.
pub const MAX_RETRIES: u32 = 8;

/// Whether `e` is a transient conflict: the same work may succeed if tried
/// again.
pub fn is_transient(e: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    let Some(db_err) = err.as_database_error() else {
        return false;
    };
    if let Some(my) = db_err.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return matches!(my.number(), 1213 | 1205);
    }
    matches!(
        db_err.code().as_deref(),
        Some("40001" | "40P01" | "55P03" | "5" | "6" | "261" | "517")
    )
}

/// Whether `e` says the connection died under a statement: the socket
/// failed or closed, or the server ended the session (PostgreSQL `57P01`
/// to `57P03`, shutdown or termination; `08000`, `08003`, `08006`,
/// connection lost, or any error of severity `FATAL`, which ends the
/// session; MySQL/MariaDB 1053 shutdown, 1152 and 1184 aborted, 1927
/// killed, 4031 disconnected while idle). Only errors of a statement count: a pool that
/// cannot open a connection (`DbErr::Conn`, `ConnectionAcquire`) is not one,
/// and neither is a protocol error (`08P01`) on a healthy connection.
pub fn is_connection_lost(e: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    is_sqlx_connection_lost(err)
}

/// [`is_connection_lost`] for the driver's own error.
pub(crate) fn is_sqlx_connection_lost(err: &sea_orm::sqlx::Error) -> bool {
    match err {
        sea_orm::sqlx::Error::Io(_) => true,
        sea_orm::sqlx::Error::Database(db_err) => {
            if let Some(my) = db_err.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
            {
                return matches!(my.number(), 1053 | 1152 | 1184 | 1927 | 4031);
            }
            // A FATAL error ends the session, whatever its code
            // (`idle_session_timeout`'s 57P05, a pooler's 08P01 before it
            // hangs up).
            if let Some(pg) = db_err.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>()
                && matches!(
                    pg.severity(),
                    sea_orm::sqlx::postgres::PgSeverity::Fatal
                        | sea_orm::sqlx::postgres::PgSeverity::Panic
                )
            {
                return true;
            }
            matches!(
                db_err.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
            )
        }
        _ => false,
    }
}

/// Runs `op` until it succeeds or fails with something other than a
/// transient conflict ([`is_transient`]), at most [`MAX_RETRIES`] more
/// times, pausing [`backoff`] before each and logging each conflict with
/// `what`. Only for work that is safe to redo whole: nothing of a failed
/// try may remain (a transaction of its own, rolled back).
///
/// # Errors
/// The first error that is not transient, or the last transient one.
pub async fn on_conflict<T, F, Fut>(what: &str, mut op: F) -> Result<T, DbErr>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbErr>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if attempt < MAX_RETRIES && is_transient(&e) => {
                attempt += 1;
                tracing::warn!(
                    attempt,
                    error = %conflict_text(&e),
                    "{what} hit a lock or write conflict; retrying it"
                );
                tokio::time::sleep(backoff(attempt)).await;
            }
            done => return done,
        }
    }
}

/// The server's own words for a conflict (`1213: Deadlock found ...`,
/// `40001: could not serialize ...`), without the driver's wrapping.
fn conflict_text(e: &DbErr) -> String {
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            match err.as_database_error() {
                Some(db) => {
                    let code = db
                        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                        .map_or_else(
                            || db.code().unwrap_or_default().into_owned(),
                            |my| my.number().to_string(),
                        );
                    format!("{code}: {}", db.message())
                }
                None => err.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The pause before retry number `attempt` (1-based): 10 ms doubling, at
/// most about 1.3 s, so that conflicting writers spread out.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(5 << attempt.clamp(1, 8))
}
