//! The OpenAPI 3 document, generated from the handlers' annotations and types.
//!
//! Answers every route can give for the same reason (a missing key, a malformed body, a timeout)
//! are added here once, by [`CommonResponses`], so no operation can forget one: the document must
//! list every status the server can answer, or schema-driven clients and fuzzers (the fuzz suite,
//! `scripts/suites/30-fuzz.sh`) take the server's answers for errors.

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes::{agents, control, health, tasks, workers};

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Background Agent API", description = "Durable task queue for AI agents and services."),
    paths(
        tasks::enqueue, tasks::list_tasks, tasks::get_task, tasks::cancel_task, tasks::list_processed,
        crate::routes::retry::retry_task, crate::routes::retry::retry_all,
        crate::routes::events::events,
        agents::register, agents::unregister, agents::list_agents,
        control::stop, control::start, workers::list_workers,
        health::health, health::ready, crate::routes::metrics::serve, openapi_json,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&ApiKeyScheme, &CommonResponses),
    tags(
        (name = "tasks", description = "Enqueue, inspect and cancel tasks"),
        (name = "agents", description = "Agent registry used for routing"),
        (name = "control", description = "Pause and resume the worker fleet"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// Operations that need no database (so never answer 503 for it).
const WITHOUT_DATABASE: [&str; 1] = ["openapi_json"];

/// Shared answers, by the kind of operation:
/// - every operation: 408 (`BGAGENT_REQUEST_TIMEOUT_SECS`);
/// - protected ones (`x-api-key`): 401, and 503 when they read or write the database;
/// - those with a JSON body: 400 (malformed JSON, empty body), 413 (over `BGAGENT_MAX_BODY_BYTES`),
///   415 (a `Content-Type` other than JSON) and 422 (a field missing, unknown or out of bounds).
struct CommonResponses;

/// (name in `components/responses`, status, description)
const COMMON: [(&str, &str, &str); 7] = [
    (
        "Timeout",
        "408",
        "The request took longer than BGAGENT_REQUEST_TIMEOUT_SECS",
    ),
    ("Unauthorized", "401", "Missing or wrong x-api-key"),
    (
        "Unavailable",
        "503",
        "PostgreSQL is unreachable; nothing was changed, retry later",
    ),
    (
        "BadRequest",
        "400",
        "Malformed request: the body is not JSON (or empty), or a path or query value cannot be read",
    ),
    (
        "PayloadTooLarge",
        "413",
        "The body is larger than BGAGENT_MAX_BODY_BYTES",
    ),
    (
        "UnsupportedMediaType",
        "415",
        "The body is declared as something other than JSON (send Content-Type: application/json or none)",
    ),
    (
        "Unprocessable",
        "422",
        "A field is missing, unknown, of the wrong type or out of bounds; error.field names it",
    ),
];

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, _, description) in COMMON {
            components
                .responses
                .insert(name.to_owned(), RefOr::T(error_response(description)));
        }
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_common(operation);
            }
        }
    }
}

fn add_common(operation: &mut Operation) {
    let protected = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let database = !operation
        .operation_id
        .as_deref()
        .is_some_and(|id| WITHOUT_DATABASE.contains(&id));
    let body = operation.request_body.is_some();
    for (name, status, _) in COMMON {
        let applies = match name {
            "Timeout" => true,
            "Unauthorized" => protected,
            "Unavailable" => protected && database,
            _ => body,
        };
        if applies {
            // A status the handler documents itself keeps its own, more precise description.
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")),
    security(("api_key" = [])))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgagent_shared::domain;
    use serde_json::{Value, json};

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        found
    }

    #[test]
    fn every_protected_operation_documents_401_and_every_body_its_errors() {
        let doc = document();
        let operations = operations(&doc);
        assert!(operations.len() >= 15);
        let mut protected = 0;
        for (path, method, op) in &operations {
            let has = |status: &str| op["responses"].get(status).is_some();
            assert!(has("408"), "{method} {path} lacks 408");
            if op.get("security").is_some() {
                protected += 1;
                assert!(has("401"), "{method} {path} lacks 401");
                if path != "/openapi.json" {
                    assert!(has("503"), "{method} {path} lacks 503");
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(has(status), "{method} {path} lacks {status}");
                }
            }
        }
        assert_eq!(protected, 15, "protected operations");
        for path in ["/tasks/{id}", "/tasks/{id}/cancel", "/tasks/{id}/retry"] {
            let op = operations
                .iter()
                .find(|(p, _, _)| p == path)
                .map(|(_, _, op)| op.clone())
                .unwrap_or_default();
            assert!(op["responses"].get("400").is_some(), "{path} lacks 400");
            assert_eq!(op["parameters"][0]["schema"]["format"], "uuid", "{path}");
        }
        for path in ["/agents/register", "/agents/unregister"] {
            assert!(
                doc["paths"][path]["post"]["responses"]["400"].is_object(),
                "{path} lacks 400"
            );
        }
    }

    #[test]
    fn request_fields_carry_the_servers_bounds() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let enqueue = &schemas["EnqueueRequest"]["properties"];
        assert_eq!(enqueue["agent"]["pattern"], "^[a-z0-9][a-z0-9._-]{0,63}$");
        assert_eq!(enqueue["command"]["minLength"], 1);
        assert_eq!(enqueue["command"]["maxLength"], domain::MAX_COMMAND_BYTES);
        assert_eq!(enqueue["idempotency_key"]["minLength"], 1);
        assert_eq!(
            enqueue["idempotency_key"]["maxLength"],
            domain::MAX_IDEMPOTENCY_KEY_BYTES
        );
        let range = |field: &str| {
            (
                enqueue[field]["minimum"].as_f64(),
                enqueue[field]["maximum"].as_f64(),
            )
        };
        assert_eq!(
            range("max_attempts"),
            (Some(1.0), Some(f64::from(domain::MAX_ATTEMPTS_LIMIT)))
        );
        assert_eq!(
            range("timeout_secs"),
            (Some(1.0), Some(f64::from(domain::MAX_TIMEOUT_SECS)))
        );
        #[allow(clippy::cast_precision_loss)] // a small constant
        let max_delay = domain::MAX_DELAY_SECS as f64;
        assert_eq!(range("delay_secs"), (Some(0.0), Some(max_delay)));
        assert_eq!(enqueue["meta"]["type"], json!(["object", "null"]));
        assert_eq!(schemas["EnqueueRequest"]["additionalProperties"], false);

        let retry_all = &schemas["RetryAllRequest"];
        assert_eq!(retry_all["properties"]["limit"]["minimum"], 1);
        assert_eq!(
            retry_all["properties"]["limit"]["maximum"],
            bgagent_types::retry::RETRY_ALL_MAX_LIMIT
        );
        assert_eq!(
            retry_all["properties"]["finished_after"]["format"],
            "date-time"
        );
        assert_eq!(retry_all["additionalProperties"], false);
        assert!(schemas["RetryAllResult"].is_object());

        let register = &schemas["RegisterRequest"]["properties"];
        assert_eq!(register["name"]["pattern"], enqueue["agent"]["pattern"]);
        assert_eq!(register["endpoint"]["format"], "uri");
        assert_eq!(
            register["endpoint"]["maxLength"],
            domain::MAX_ENDPOINT_BYTES
        );
        assert_eq!(
            schemas["UnregisterRequest"]["properties"]["name"]["pattern"],
            enqueue["agent"]["pattern"]
        );

        let tasks = &doc["paths"]["/tasks"]["get"]["parameters"];
        let param = |name: &str| {
            tasks
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"].clone())
                .unwrap_or_default()
        };
        assert_eq!(param("limit")["minimum"], 1);
        assert_eq!(param("limit")["maximum"], 500);
        assert_eq!(param("cursor")["format"], "uuid");
        assert_eq!(param("agent")["pattern"], enqueue["agent"]["pattern"]);
        assert_eq!(param("full")["type"], "boolean");
    }

    #[test]
    fn listed_tasks_may_leave_out_meta_and_result() {
        let doc = document();
        let task = &doc["components"]["schemas"]["Task"];
        let required: Vec<&str> = task["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            required.contains(&"id") && required.contains(&"status"),
            "{task}"
        );
        for field in ["meta", "result"] {
            assert!(!required.contains(&field), "{field} is required: {task}");
            // Absent, never null.
            assert_eq!(
                task["properties"][field]["type"], "object",
                "{field}: {task}"
            );
        }
    }
}
