//! The agent registry: registered agents and the bodies that register and remove them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A registered agent: tasks for it are POSTed to its endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    /// Agent name (also the `agent` of its tasks).
    pub name: String,
    /// http(s) URL the worker POSTs tasks to.
    pub endpoint: String,
    /// Free-form JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub meta: Value,
    /// First registration.
    pub created_at: DateTime<Utc>,
    /// Last registration.
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /agents/register`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Agent name (`^[a-z0-9][a-z0-9._-]{0,63}$`).
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub name: String,
    /// Absolute http(s) URL with a host and without credentials, at most 2048 bytes; workers
    /// POST tasks here. Its host must also pass the egress policy (docs/SECURITY.md).
    #[cfg_attr(
        feature = "openapi",
        schema(
            format = "uri",
            pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$",
            max_length = 2048
        )
    )]
    pub endpoint: String,
    /// Free-form JSON object (at most 256 KiB; null or absent: `{}`), with the same rules as a
    /// task's `meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub meta: Option<Value>,
}

/// Body of `POST /agents/unregister`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UnregisterRequest {
    /// Agent name.
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$",
            min_length = 1,
            max_length = 64
        )
    )]
    pub name: String,
}

/// Answer of `POST /agents/unregister`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Unregistered {
    /// The agent.
    pub name: String,
    /// Always true.
    pub unregistered: bool,
}

/// All registered agents.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentList {
    /// Agents by name.
    pub agents: Vec<Agent>,
}
