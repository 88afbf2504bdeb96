//! Server bootstrap: the standard layers and endpoints around a service's router, binding, and
//! graceful shutdown on Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;

use crate::admin::AdminToken;
use crate::config::CommonArgs;
use crate::faults::{FaultEngine, FaultProfile};
use crate::health::Readiness;
use crate::{MAX_BODY_BYTES, Problem, REQUEST_ID_HEADER, admin, extract, faults, http_metrics};

/// A service's router plus what the platform needs to wrap it.
pub struct Service {
    name: &'static str,
    router: Router,
    openapi: utoipa::openapi::OpenApi,
    readiness: Readiness,
    faults: Arc<FaultEngine>,
    admin_token: AdminToken,
    admin_routes: Router,
}

impl Service {
    /// `router` holds the service's own routes, already given their state.
    pub fn new(name: &'static str, router: Router, openapi: utoipa::openapi::OpenApi) -> Self {
        // Install the recorder before anything records (a service that sets gauges while it
        // starts should call `http_metrics::prometheus()` earlier still).
        http_metrics::prometheus();
        Self {
            name,
            router,
            openapi,
            readiness: Readiness::new(),
            faults: FaultEngine::off(name),
            admin_token: AdminToken::default(),
            admin_routes: Router::new(),
        }
    }

    /// Fault profile, fault seed, instance name and admin token from the common flags.
    pub fn with_common(mut self, common: &CommonArgs) -> anyhow::Result<Self> {
        let profile = FaultProfile::load(&common.faults)?;
        self.faults = FaultEngine::new(
            self.name,
            common.instance.clone(),
            &profile,
            common.fault_seed,
        );
        let status = self.faults.status();
        if !status.rules.is_empty() {
            tracing::warn!(
                profile = %status.profile,
                seed = status.seed,
                rules = status.rules.len(),
                "fault injection is ON"
            );
        }
        self.admin_token = AdminToken::new(common.admin_token.as_deref());
        Ok(self)
    }

    /// Uses `engine` for fault injection (tests).
    pub fn faults(mut self, engine: Arc<FaultEngine>) -> Self {
        self.faults = engine;
        self
    }

    pub fn admin_token(mut self, token: AdminToken) -> Self {
        self.admin_token = token;
        self
    }

    /// Extra operator routes (already given their state), served behind the admin token.
    pub fn admin_routes(mut self, routes: Router) -> Self {
        self.admin_routes = self.admin_routes.merge(routes);
        self
    }

    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// The full application: service routes, `/health/*`, `/metrics`, `/openapi.json`, `/docs`,
    /// problem+json fallbacks, request ids, body limit, panic catcher and HTTP metrics.
    pub fn into_router(self) -> Router {
        let Service {
            name,
            router,
            mut openapi,
            readiness,
            faults,
            admin_token,
            admin_routes,
        } = self;
        openapi.merge(faults::admin::AdminDoc::openapi());
        openapi.info.title = format!("ftshop {name}");
        openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let request_id = HeaderName::from_static(REQUEST_ID_HEADER);

        let standard = Router::new()
            .route("/health/live", get(move || async move { live(name) }))
            .route(
                "/health/ready",
                get(move || {
                    let readiness = readiness.clone();
                    async move { readiness.report(name).await }
                }),
            )
            .route("/metrics", get(http_metrics::render));

        let admin = faults::admin::routes(faults.clone())
            .merge(admin_routes)
            .layer(axum::middleware::from_fn_with_state(
                admin_token,
                admin::require,
            ));

        router
            .layer(axum::middleware::from_fn_with_state(
                faults,
                faults::layer::inject,
            ))
            .merge(standard)
            .merge(admin)
            .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
            .fallback(extract::not_found_fallback)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(move |req, next| {
                http_metrics::track(name, req, next)
            }))
            .layer(
                TraceLayer::new_for_http().make_span_with(move |req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", service = name, method = %req.method(),
                        path = %req.uri().path(), request_id = %id)
                }),
            )
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
            .layer(CatchPanicLayer::custom(panic_to_problem))
    }
}

fn live(service: &'static str) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "service": service, "status": "live" }))
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed on this route",
    )
}

fn panic_to_problem(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    Problem::internal(format_args!("handler panicked: {detail}")).into_response()
}

/// Binds `host:port`; port 0 picks a free one (tests).
pub async fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish (at most 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        shutdown_token().cancel();
        let _ = tx.send(());
    });
    let drain_limit = async move {
        let _ = rx.await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = drain_limit => {
            tracing::warn!("in-flight requests did not finish within 10 s; closing");
            Ok(())
        }
    }
}

fn shutdown_token() -> &'static CancellationToken {
    static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
    TOKEN.get_or_init(CancellationToken::new)
}

/// Resolves once this process has begun to shut down (held requests let go at once).
pub(crate) async fn shutting_down() {
    shutdown_token().cancelled().await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
