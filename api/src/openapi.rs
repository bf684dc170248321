//! The OpenAPI 3 document, generated from the handlers' annotations and types.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{agents, control, health, tasks, workers};

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Background Agent API", description = "Durable task queue for AI agents and services."),
    paths(
        tasks::enqueue, tasks::list_tasks, tasks::get_task, tasks::cancel_task, tasks::list_processed,
        agents::register, agents::unregister, agents::list_agents,
        control::stop, control::start, workers::list_workers,
        health::health, health::ready, crate::metrics::serve, openapi_json,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&ApiKeyScheme),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document")), security(("api_key" = [])))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
