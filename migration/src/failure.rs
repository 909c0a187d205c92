//! What a database error means to an operator, in one line of our own:
//! never SeaORM's or sqlx's formatting (`Execution Error:`, `error returned
//! from database:`, `at line N`). The error itself stays the typed source.

use sea_orm_migration::sea_orm::sqlx;
use sea_orm_migration::sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

/// The driver's error inside `e`, if any.
fn sqlx_error(e: &DbErr) -> Option<&sqlx::Error> {
    match e {
        DbErr::Conn(RuntimeErr::SqlxError(err))
        | DbErr::Exec(RuntimeErr::SqlxError(err))
        | DbErr::Query(RuntimeErr::SqlxError(err)) => Some(err),
        _ => None,
    }
}

/// Whether `e` says the server went away or could not be reached: the
/// connection died under a statement, or none could be opened. Rerunning
/// the command once the server answers resumes it.
pub fn is_connection_lost(e: &DbErr) -> bool {
    if service::retry::is_connection_lost(e) {
        return true;
    }
    match e {
        DbErr::ConnectionAcquire(_) => true,
        // Opening a connection: a socket error, or something at the
        // server's address that does not speak its protocol (a proxy or a
        // load balancer whose server is gone accepts and hangs up).
        DbErr::Conn(RuntimeErr::SqlxError(err)) => match err.as_ref() {
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => true,
            // A server that refuses connections for now: shutting down,
            // crashed, starting up or recovering (57P01-57P03, MySQL 1053).
            sqlx::Error::Database(db) => {
                match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    Some(my) => my.number() == 1053,
                    None => matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03")),
                }
            }
            _ => false,
        },
        _ => false,
    }
}

/// `e`, an error of a lost connection, as one line that says so.
pub fn describe_lost(e: &DbErr) -> String {
    let line = describe(e);
    if line.starts_with("the connection to the database server was lost") {
        line
    } else {
        format!("the connection to the database server was lost ({line})")
    }
}

/// `e` as one line for a person.
pub fn describe(e: &DbErr) -> String {
    if crate::lock::is_fence_failure(e) {
        return "the migration lock's lease had passed to another migrator, so this step was \
                rolled back"
            .to_owned();
    }
    let line = match sqlx_error(e) {
        Some(sqlx::Error::Protocol(what)) if matches!(e, DbErr::Conn(_)) => format!(
            "the connection to the database server was lost (what answers at its address does \
             not speak its protocol: {what})"
        ),
        Some(err) => describe_sqlx(err),
        None => match e {
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => {
                "no connection to the database server could be had in time".to_owned()
            }
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => {
                "the connection pool was closed".to_owned()
            }
            DbErr::Custom(text) | DbErr::Migration(text) => text.clone(),
            other => other.to_string(),
        },
    };
    line.replace(['\n', '\r'], " ")
}

fn describe_sqlx(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => format!("the connection to the database server was lost ({io})"),
        sqlx::Error::PoolTimedOut => {
            "no connection to the database server could be had in time".to_owned()
        }
        sqlx::Error::Database(db) => {
            let message = db.message();
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return format!(
                    "the database server said: {message} (MySQL error {})",
                    my.number()
                );
            }
            let code = db.code().unwrap_or_default();
            // A prepared statement met on a server connection another client
            // used: a transaction pooler (PgBouncer) in between.
            // (42P05 already exists, 26000 does not exist, 08P01 a bind that
            // does not fit: whichever statement of another client it met.)
            if message.contains("prepared statement \"sqlx_s_") {
                return format!(
                    "the database server said: {message} (SQLSTATE {code}): a transaction \
                     pooler such as PgBouncer sits in between; add `?pooler=transaction` to the \
                     database URL"
                );
            }
            format!("the database server said: {message} (SQLSTATE {code})")
        }
        other => format!("the database driver failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn io_errors_say_the_connection_was_lost() {
        let e = DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "expected to read 4 bytes",
            ),
        ))));
        assert!(is_connection_lost(&e));
        let line = describe(&e);
        assert_eq!(
            line,
            "the connection to the database server was lost (expected to read 4 bytes)"
        );
        assert!(!line.contains("Execution Error"));
    }

    #[test]
    fn a_proxy_without_its_server_is_a_lost_connection() {
        let e = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00".into(),
        ))));
        assert!(is_connection_lost(&e));
        assert!(describe(&e).starts_with("the connection to the database server was lost"));
        // The same on a connection already open is not a lost connection.
        let e = DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Protocol(
            "unexpected message".into(),
        ))));
        assert!(!is_connection_lost(&e));
    }

    #[test]
    fn a_custom_error_is_its_text() {
        assert_eq!(describe(&DbErr::Custom("a\nb".into())), "a b");
        assert!(!is_connection_lost(&DbErr::Custom("x".into())));
    }
}
