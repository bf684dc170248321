//! The Background Agent HTTP API: validates tasks, records them in PostgreSQL and publishes them
//! to RabbitMQ. [`Api::build`] binds and wires everything; [`Api::run_until_stopped`] serves until
//! the shutdown token fires, so `bgagent dev` and the tests run it in-process.

pub mod config;
pub mod enqueue;
pub mod error;
pub mod events;
pub mod extract;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod ui;
pub mod wait;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use bgagent_shared::Error;
use bgagent_shared::engine::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::ApiConfig;
use error::ApiError;
use state::{AppContext, AppState};

/// `bgagent-api` / `bgagent api`: the API's settings plus logging, run until SIGTERM/SIGINT.
#[derive(clap::Parser)]
#[command(name = "bgagent-api", version, about = "Background Agent HTTP API")]
pub struct ApiCommand {
    /// API settings.
    #[command(flatten)]
    pub api: ApiConfig,
    /// Logging.
    #[command(flatten)]
    pub telemetry: bgagent_shared::telemetry::TelemetryConfig,
}

impl ApiCommand {
    /// Init logging, build the API and serve until a shutdown signal.
    pub async fn run(self) -> Result<(), Error> {
        bgagent_shared::telemetry::init(self.telemetry.log_format);
        Api::build(&self.api)
            .await?
            .run_until_stopped(bgagent_shared::shutdown::on_signal())
            .await
    }
}

/// A bound, ready-to-serve API.
pub struct Api {
    listener: TcpListener,
    state: AppState,
    enqueue_loops: JoinSet<()>,
    request_timeout: Duration,
    limits: server::ServerLimits,
}

impl Api {
    /// Connect (lazily) to PostgreSQL and RabbitMQ, migrate when configured, and bind.
    /// RabbitMQ being down does not stop the start: enqueue keeps accepting tasks and `/ready`
    /// reports it.
    pub async fn build(config: &ApiConfig) -> Result<Self, Error> {
        let host = bgagent_shared::telemetry::hostname();
        let engine = Engine::postgres_rabbitmq(
            &config.database,
            &config.broker,
            &format!("bgagent-api@{host}"),
            0,
        )?;
        Self::with_engine(config, engine).await
    }

    /// An API on `engine` (the embedded engine, or one shared with workers in the same
    /// process). The database and broker settings of `config` are not used.
    pub async fn with_engine(config: &ApiConfig, engine: Engine) -> Result<Self, Error> {
        let api_key = config.resolved_api_key()?;
        if config.migrate {
            engine.store.migrate().await?;
        }
        if !engine.queue.ping(Duration::from_secs(3)).await {
            tracing::warn!(
                queue = engine.queue.engine(),
                "queue unreachable at start; tasks stay unpublished until it returns"
            );
        }
        let metrics = Arc::new(
            metrics::Metrics::new(bgagent_shared::labels::AgentLabels::new(
                engine.store.clone(),
            ))
            .map_err(|e| Error::Config(format!("metrics: {e}")))?,
        );
        let (enqueuer, enqueue_loops) = enqueue::Enqueuer::start(
            engine.store.clone(),
            engine.queue.clone(),
            metrics.clone(),
            config.enqueue_loops,
            usize::from(config.broker.tasks_per_message),
            Duration::from_secs(config.request_timeout_secs.max(1)),
        );
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            Error::Io(format!(
                "BGAGENT_BIND: cannot listen on {}: {e}",
                config.bind
            ))
        })?;
        let waits = wait::Waits::start(
            engine.store.clone(),
            Duration::from_secs(config.request_timeout_secs.max(1)),
        );
        let events = events::EventHub::start(engine.queue.clone(), config.max_event_streams);
        Ok(Self {
            listener,
            state: AppState::new(AppContext {
                store: engine.store,
                queue: engine.queue,
                enqueuer,
                metrics,
                api_key,
                max_body_bytes: config.max_body_bytes,
                egress: config.egress.policy(),
                waits,
                ui: ui::UiSettings::new(config.ui_session_ttl, config.ui_secure_cookie),
                events,
            }),
            enqueue_loops,
            request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            limits: server::ServerLimits {
                header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
                idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
                max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
                shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            },
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))
    }

    /// Serve until `shutdown` fires, then finish in-flight requests (within the shutdown grace)
    /// and drain the enqueue loops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        // Open event streams never end on their own: end them when the shutdown begins, so the
        // graceful shutdown does not wait its whole grace for them.
        let events = self.state.events.clone();
        let closing = shutdown.clone();
        tokio::spawn(async move {
            closing.cancelled().await;
            events.close();
        });
        let app = router(self.state, self.request_timeout);
        tracing::info!(addr = %self.listener.local_addr().map_err(|e| Error::Io(e.to_string()))?, "API listening");
        server::serve(self.listener, app, self.limits, shutdown).await?;
        // The router (and with it every enqueue handle) is gone: the loops finish what they hold.
        let mut loops = self.enqueue_loops;
        while loops.join_next().await.is_some() {}
        tracing::info!("API stopped");
        Ok(())
    }
}

/// The full router with its layers.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let protected = Router::new()
        .merge(routes::tasks::router())
        .merge(routes::retry::router())
        .merge(routes::agents::router())
        .merge(routes::control::router())
        .merge(routes::workers::router())
        .route("/openapi.json", get(openapi::openapi_json))
        // Model Context Protocol (not a REST route, so not in the OpenAPI document).
        .route_service("/mcp", mcp::service(state.clone()))
        .route_layer(from_fn_with_state(state.clone(), extract::require_api_key));
    // The dashboard's pages open the stream from the browser, with their session cookie.
    let events = routes::events::router().route_layer(from_fn_with_state(
        state.clone(),
        extract::require_api_key_or_session,
    ));
    let public = Router::new()
        .merge(routes::health::router())
        .route("/metrics", get(routes::metrics::serve));
    Router::new()
        .merge(protected)
        .merge(events)
        .merge(public)
        // The dashboard signs in with its own session cookie, never with x-api-key.
        .merge(ui::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), routes::metrics::track))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn(timeout_as_json))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str);
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok());
            tracing::info_span!("http", method = %req.method(), path = req.uri().path(), route, request_id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Outside the request-id layers: a client id they would echo must be bounded first.
        .layer(from_fn(bound_request_id))
        // Answers are JSON or text for programs: never sniffed as something else, never cached
        // (they carry task data behind the key).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

/// Longest client `x-request-id` kept; longer ones are replaced by a generated id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Keep a client's `x-request-id` only if it is 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
/// characters; otherwise drop it so a generated one takes its place. The id is echoed in the
/// answer and written to every log line of the request, so its size and bytes must be bounded.
async fn bound_request_id(
    mut req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let valid = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic())
    };
    let ids = req.headers().get_all("x-request-id");
    if ids.iter().count() > 1 || ids.iter().any(|v| !valid(v)) {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> (StatusCode, axum::Json<error::ErrorBody>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(error::ErrorBody {
            error: error::ErrorDetail {
                code: "method_not_allowed".to_owned(),
                message: "method not allowed on this route".into(),
                field: None,
            },
        }),
    )
}

/// The timeout layer answers with an empty 408; give it the JSON error shape.
async fn timeout_as_json(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let response = next.run(req).await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        return (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(error::ErrorBody {
                error: error::ErrorDetail {
                    code: "timeout".to_owned(),
                    message: "request took too long".into(),
                    field: None,
                },
            }),
        )
            .into_response();
    }
    response
}
