//! The one error type of the shared crate.

/// Everything that can go wrong below the API and worker layers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed; the message names the variable.
    #[error("configuration: {0}")]
    Config(String),
    /// Input failed validation; `field` names the offending field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (JSON name) that failed.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// PostgreSQL could not be reached (connection refused, pool timeout, I/O).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// Any other database error (the driver's error is kept as the source).
    #[error("database error: {0}")]
    Database(#[source] BoxError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] BoxError),
    /// A stored row breaks the schema's rules (written outside the API).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// RabbitMQ could not be reached or refused an operation.
    #[error("broker unavailable: {0}")]
    Broker(String),
    /// A local I/O failure at start (binding a port, reading a file).
    #[error("{0}")]
    Io(String),
    /// The broker did not confirm a publish.
    #[error("broker did not confirm the publish")]
    NotConfirmed,
}

impl Error {
    /// A validation error for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// True when the error means a backing service is unreachable, so the caller should answer 503
    /// or retry later rather than fail the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::DatabaseUnavailable(_) | Self::Broker(_) | Self::NotConfirmed
        )
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::DatabaseUnavailable(err.to_string()),
            // The server going away mid-statement (restart, failover) is an outage, not a bug.
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) =>
            {
                Self::DatabaseUnavailable(err.to_string())
            }
            // SQLite's SQLITE_BUSY (5) or SQLITE_LOCKED (6), whatever the extended code: the file
            // lock was not granted in time.
            sqlx::Error::Database(ref db) if sqlite_busy(db.as_ref()) => {
                Self::DatabaseUnavailable(err.to_string())
            }
            other => Self::Database(Box::new(other)),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(Box::new(err))
    }
}

impl From<bgagent_types::ParseStatusError> for Error {
    fn from(err: bgagent_types::ParseStatusError) -> Self {
        Self::invalid("status", err.to_string())
    }
}

fn sqlite_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|e| sqlx::error::DatabaseError::code(e)?.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

impl From<lapin::Error> for Error {
    fn from(err: lapin::Error) -> Self {
        Self::Broker(err.to_string())
    }
}

/// A driver's error, kept as the source without naming its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result with the shared [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
