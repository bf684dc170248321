//! Exit codes of the `bgagent` client commands, so scripts can tell failure kinds apart.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | usage error (clap: unknown flag, bad value, missing argument) |
//! | 3 | not found (HTTP 404: unknown task or agent) |
//! | 4 | authentication (HTTP 401: missing or wrong API key) |
//! | 5 | invalid input (HTTP 400, 413, 422) |
//! | 6 | conflict (HTTP 409: e.g. cancelling a finished task) |
//! | 7 | server unavailable (HTTP 503) or cannot connect / timed out |
//! | 8 | the task ended `failed` or `cancelled` (`enqueue --wait`, `tasks watch <id>`) |
//! | 9 | waiting for the task timed out (`enqueue --wait --wait-timeout`) |
//!
//! The table is repeated in `bgagent --help` ([`HELP`]); keep the two in step.

use bgagent_client::Error as ClientError;

/// Any other error.
pub const OTHER: u8 = 1;
/// HTTP 404.
pub const NOT_FOUND: u8 = 3;
/// HTTP 401.
pub const AUTH: u8 = 4;
/// HTTP 400, 413, 422.
pub const INVALID: u8 = 5;
/// HTTP 409.
pub const CONFLICT: u8 = 6;
/// HTTP 503, connection failure or timeout.
pub const UNAVAILABLE: u8 = 7;
/// The task ended failed or cancelled.
pub const TASK_FAILED: u8 = 8;
/// Waiting for the task timed out.
pub const WAIT_TIMEOUT: u8 = 9;

/// The `--help` footer.
pub const HELP: &str = "\
Exit codes (client commands):
  0  success
  1  other error
  2  usage error
  3  not found (404)
  4  authentication failed (401): check --api-key / BACKGROUND_AGENT_API_KEY
  5  invalid input (400, 413, 422)
  6  conflict (409)
  7  server unavailable (503) or cannot connect: check --url / BGAGENT_URL
  8  the task ended failed or cancelled (enqueue --wait, tasks watch <id>)
  9  waiting for the task timed out";

/// An error that ends the process with a chosen code; `message: None` prints nothing (for
/// `health --quiet`).
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: u8,
    /// What to print on stderr.
    pub message: Option<String>,
}

impl Exit {
    /// Exit with `code`, printing `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }

    /// Exit with `code`, printing nothing.
    pub fn silent(code: u8) -> Self {
        Self {
            code,
            message: None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_deref().unwrap_or(""))
    }
}

impl std::error::Error for Exit {}

/// The exit code for a client error.
pub fn client_code(err: &ClientError) -> u8 {
    match err {
        ClientError::Api { status, .. } => match status {
            404 => NOT_FOUND,
            401 => AUTH,
            400 | 413 | 422 => INVALID,
            409 => CONFLICT,
            503 => UNAVAILABLE,
            _ => OTHER,
        },
        ClientError::Connect { .. } | ClientError::Timeout { .. } => UNAVAILABLE,
        ClientError::WaitTimeout { .. } => WAIT_TIMEOUT,
        _ => OTHER,
    }
}

/// The exit code for any error a command returned.
pub fn code(err: &anyhow::Error) -> u8 {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return exit.code;
    }
    if let Some(client) = err.downcast_ref::<ClientError>() {
        return client_code(client);
    }
    OTHER
}

/// Print `err` on stderr (with a hint for the common setup mistakes) unless it is silent.
pub fn report(err: &anyhow::Error) {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        if let Some(message) = &exit.message {
            eprintln!("error: {message}");
        }
        return;
    }
    let Some(client) = err.downcast_ref::<ClientError>() else {
        eprintln!("error: {err:#}");
        return;
    };
    // reqwest's chain repeats itself ("error sending request for url ..." twice); the outermost
    // message and the root cause (e.g. "Connection refused") say it all.
    let root = err.root_cause().to_string();
    let message = err.to_string();
    if root == message || matches!(client, ClientError::Api { .. }) {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {message}: {root}");
    }
    let hint = match client_code(client) {
        AUTH => Some("check --api-key / BACKGROUND_AGENT_API_KEY (or _FILE)"),
        UNAVAILABLE if matches!(client, ClientError::Connect { .. }) => {
            Some("is the API running? check --url / BGAGENT_URL")
        }
        _ => None,
    };
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
            field: None,
        }
    }

    #[test]
    fn statuses_map_to_distinct_codes() {
        let cases = [
            (404, NOT_FOUND),
            (401, AUTH),
            (400, INVALID),
            (413, INVALID),
            (422, INVALID),
            (409, CONFLICT),
            (503, UNAVAILABLE),
            (500, OTHER),
        ];
        for (status, code) in cases {
            assert_eq!(client_code(&api(status)), code, "{status}");
        }
        let wait = ClientError::WaitTimeout {
            task_id: uuid::Uuid::nil(),
            timeout: std::time::Duration::from_secs(1),
            last_status: None,
        };
        assert_eq!(code(&anyhow::Error::new(wait)), WAIT_TIMEOUT);
        assert_eq!(code(&anyhow::Error::new(Exit::silent(TASK_FAILED))), 8);
        assert_eq!(code(&anyhow::anyhow!("other")), OTHER);
    }
}
