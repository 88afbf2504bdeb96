//! Server bootstrap: the standard layers and endpoints around a service's router, binding, and
//! graceful shutdown on Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;

use crate::admin::AdminToken;
use crate::config::CommonArgs;
use crate::db::Db;
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
    database: Option<Db>,
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
            database: None,
        }
    }

    /// Fault profile, fault seed, instance name and admin token from the common flags.
    pub fn with_common(mut self, common: &CommonArgs) -> anyhow::Result<Self> {
        let profile = FaultProfile::load(&common.faults)?;
        self.faults = FaultEngine::with_epoch(
            self.name,
            common.instance.clone(),
            &profile,
            common.fault_seed,
            common.fault_epoch,
        );
        let status = self.faults.status();
        if !status.rules.is_empty() {
            tracing::warn!(
                profile = %status.profile,
                seed = status.seed,
                epoch = status.epoch,
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

    /// The service's database: while its SQLite file is removed, renamed or replaced (see
    /// [`Db::check_file`]), the service's routes answer 503 problem+json
    /// (`storage-unavailable`) instead of running, and an answer produced while it went away
    /// is withheld the same way, because what the handler wrote went to a file that no longer
    /// has a name and is lost with it. Health, metrics and admin routes are not guarded.
    pub fn database(mut self, db: &Db) -> Self {
        self.database = Some(db.clone());
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
            database,
        } = self;
        let router = match database {
            Some(db) if db.file.is_some() => router.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    database_file_guard(db.clone(), req, next)
                },
            )),
            _ => router,
        };
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
            .route("/metrics", get(http_metrics::render))
            .route("/metrics/exemplars", get(crate::exemplars::render));

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
            // tower-http's log of a failed response (a 5xx, at `error`), inside the server span
            // that `track` opens (its fields carry the request id). No span of its own: a second
            // span per request cost every service ~3 % of its CPU, formatting fields no line
            // printed (docs/benchmarks/happy-path.md).
            .layer(
                TraceLayer::new_for_http().make_span_with(|_: &Request<_>| tracing::Span::none()),
            )
            .layer(axum::middleware::from_fn(move |req, next| {
                http_metrics::track(name, req, next)
            }))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
            .layer(CatchPanicLayer::custom(panic_to_problem))
    }
}

/// See [`Service::database`]: checked before the handler (nothing is done on a lost file) and
/// after it (the file went away while it ran: its answer cannot be kept).
async fn database_file_guard(
    db: Db,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(why) = db.check_file() {
        return lost_database_file(&why);
    }
    let response = next.run(req).await;
    if response.status().is_server_error() {
        return response;
    }
    match db.check_file() {
        Ok(()) => response,
        Err(why) => lost_database_file(&why),
    }
}

fn lost_database_file(why: &str) -> Response {
    tracing::error!(reason = why, "database file lost; request refused");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        format!(
            "the service cannot write its data (damaged: {why}); nothing is acknowledged, \
             retry later"
        ),
    )
    .into_response()
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
    if let Some(listener) = inherited_listener(port) {
        return listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|e| anyhow::anyhow!("cannot use the listener passed for {addr}: {e}"));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// The listening socket this process was started with, if any: systemd's socket-activation
/// protocol (`LISTEN_FDS=1`, the socket at fd 3; `LISTEN_PID` unset or this process), which
/// `ftshop up --port-base 0` uses to hand each child the port it picked without ever releasing
/// it. Taken by [`adopt_inherited_listener`].
static INHERITED: std::sync::Mutex<Option<std::net::TcpListener>> = std::sync::Mutex::new(None);

/// Takes the inherited listener (see [`INHERITED`]) out of the environment: reads and removes
/// `LISTEN_FDS`/`LISTEN_PID`, so call it at the start of `main`, before any other thread
/// exists. A later [`bind`] of the listener's own port uses it instead of binding.
pub fn adopt_inherited_listener() {
    let mut fds = listenfd::ListenFd::from_env();
    if let Ok(Some(listener)) = fds.take_tcp_listener(0) {
        *INHERITED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }
}

/// The inherited listener when it listens on `port` (once).
fn inherited_listener(port: u16) -> Option<std::net::TcpListener> {
    let mut inherited = INHERITED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let matches = inherited
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|a| a.port() == port && port != 0);
    if matches { inherited.take() } else { None }
}

/// How long a client may take, and how many connections it may hold, before the server lets
/// go of it. Every listener of the `ftshop` binary is served with these
/// ([`CommonArgs::server_limits`](crate::config::CommonArgs::server_limits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time a connection has to deliver a complete request head, counted from the moment it is
    /// ready for one: right after accept and again after each response. So it is at once the
    /// slowloris guard (headers sent byte by byte) and the idle keep-alive timeout (a connection
    /// that sends nothing). On expiry the connection is closed without an answer (hyper's
    /// `header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Longest pause between two chunks of a request body; on expiry the handler sees a body
    /// error and answers 400 (tower-http's `RequestBodyTimeout`).
    pub body_read_timeout: Duration,
    /// Connections served at once by this listener. One more is answered `503` problem+json
    /// with `Retry-After: 1` and `Connection: close` (at most [`SHED_SLOTS`] such answers at
    /// once, each bounded by [`SHED_DEADLINE`]); beyond those it is closed at accept.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Over-cap connections answered `503` at once; more than these are closed without an answer,
/// so shedding itself holds a bounded number of file descriptors.
pub const SHED_SLOTS: usize = 64;
/// The whole life of a shed connection: read the request head, answer 503, close.
pub const SHED_DEADLINE: Duration = Duration::from_secs(1);
/// Connections the health listener serves at once (see [`serve_with_health`]): probes and a
/// Prometheus scrape, never customers.
pub const HEALTH_MAX_CONNECTIONS: usize = 16;
/// The paths the health listener serves; anything else there is 404 problem+json.
/// The exemplars (OpenMetrics) are a scrape path too: Kubernetes scrapes only this listener.
pub const HEALTH_PATHS: [&str; 4] = [
    "/health/live",
    "/health/ready",
    "/metrics",
    "/metrics/exemplars",
];

/// In-flight requests get this long to finish once shutdown begins.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish (at most 10 s).
///
/// HTTP/1.1 through hyper directly (what `axum::serve` does, plus a header-read timeout): each
/// accepted connection takes a permit of `limits.max_connections`; without one it is shed (see
/// [`ServerLimits::max_connections`]). Accept errors go through axum's `Listener` for
/// `TcpListener`: connection errors are skipped, anything else (`EMFILE`: too many open files)
/// is logged and the loop waits 1 s before accepting again, instead of spinning.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = tower::ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout))
        .map_request(|request: Request<_>| request.map(axum::body::Body::new))
        .service(app);
    let service = TowerToHyperService::new(app);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let shed_slots = Arc::new(Semaphore::new(SHED_SLOTS));
    let graceful = GracefulShutdown::new();

    let mut listener = listener;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            (stream, _peer) = axum::serve::Listener::accept(&mut listener) => stream,
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shed(stream, &shed_slots);
            continue;
        };
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    shutdown_token().cancel();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_LIMIT) => {
            tracing::warn!("in-flight requests did not finish within 10 s; closing");
        }
    }
    Ok(())
}

/// Runs a service the one way every service runs: binds `port` on `common.host` (and the health
/// port, when `--health-port` is set), logs the address, and serves `app` with
/// `common.server_limits()` until `shutdown` resolves.
///
/// Errors: a port that cannot be bound, or the server failing.
pub async fn run_service(
    service: &'static str,
    common: &crate::config::CommonArgs,
    port: u16,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(common.host, port).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| anyhow::anyhow!("listener has no local address: {e}"))?;
    tracing::info!(service, %addr, "listening on http://{addr}");
    let health = common.bind_health().await?;
    serve_with_health(listener, health, app, common.server_limits(), shutdown).await
}

/// [`serve`] on `listener`, and, when `health` is given, the same `app` restricted to
/// [`HEALTH_PATHS`] on that second listener with its own cap ([`HEALTH_MAX_CONNECTIONS`], and
/// its own shed slots): a flood of connections on the public port (which may hold all its
/// `max_connections` and [`SHED_SLOTS`]) cannot starve the liveness and readiness probes,
/// which would otherwise turn the flood into restarts. The idea is linkerd2-proxy's admin port
/// and Envoy's admin listener. Both stop on `shutdown`.
pub async fn serve_with_health(
    listener: TcpListener,
    health: Option<TcpListener>,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(health) = health else {
        return serve(listener, app, limits, shutdown).await;
    };
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let health_app = app.clone().layer(axum::middleware::from_fn(only_health));
    let health_limits = ServerLimits {
        header_read_timeout: limits.header_read_timeout.min(Duration::from_secs(5)),
        body_read_timeout: limits.body_read_timeout.min(Duration::from_secs(5)),
        max_connections: HEALTH_MAX_CONNECTIONS,
    };
    let health_task = tokio::spawn(serve(
        health,
        health_app,
        health_limits,
        stop.clone().cancelled_owned(),
    ));
    let served = serve(listener, app, limits, stop.clone().cancelled_owned()).await;
    stop.cancel();
    match health_task.await {
        Ok(Err(err)) => tracing::warn!(error = %err, "the health listener stopped with an error"),
        Err(err) => tracing::warn!(error = %err, "the health listener task failed"),
        Ok(Ok(())) => {}
    }
    served
}

/// The health listener's filter: [`HEALTH_PATHS`] pass, anything else is 404 problem+json.
async fn only_health(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if HEALTH_PATHS.contains(&req.uri().path()) {
        next.run(req).await
    } else {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "the health listener serves /health/live, /health/ready and /metrics only",
        )
        .into_response()
    }
}

/// Answers an over-cap connection `503` problem+json and closes it, or closes it at once when
/// [`SHED_SLOTS`] answers are already under way. The request head is read first (within
/// [`SHED_DEADLINE`]) so the answer is not lost to a reset from unread bytes.
fn shed(stream: tokio::net::TcpStream, shed_slots: &Arc<Semaphore>) {
    let Ok(permit) = shed_slots.clone().try_acquire_owned() else {
        metrics::counter!("http_server_connections_shed_total", "outcome" => "closed").increment(1);
        drop(stream);
        return;
    };
    metrics::counter!("http_server_connections_shed_total", "outcome" => "answered").increment(1);
    tokio::spawn(async move {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(SHED_DEADLINE)
            .keep_alive(false);
        // A liveness probe asks whether the process is alive, and it is: a shed connection
        // asking for it gets 200, not the 503 that would get the process restarted.
        let answer =
            hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(if request.uri().path() == "/health/live" {
                    let mut live =
                        axum::Json(serde_json::json!({ "status": "live", "shed": true }))
                            .into_response();
                    live.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    live
                } else {
                    overloaded()
                })
            });
        let _ = tokio::time::timeout(
            SHED_DEADLINE,
            http.serve_connection(TokioIo::new(stream), answer),
        )
        .await;
        drop(permit);
    });
}

/// The answer of a shed connection.
fn overloaded() -> Response {
    let mut response = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "this server holds as many connections as it serves at once; retry shortly",
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt as _;

    /// Every route of a service with a database answers 503 problem+json while its SQLite
    /// file is gone, and withholds an answer whose write went to a file that lost its name
    /// while the handler ran; health stays served, and the same file back heals it.
    #[tokio::test]
    async fn a_lost_database_file_withholds_every_answer_of_the_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(None, dir.path(), "guarded").await.expect("db");
        let path = dir.path().join("guarded.db");
        let away = dir.path().join("away.db");
        let routes = Router::new()
            .route("/read", get(|| async { "read" }))
            .route(
                "/write",
                post({
                    let db = db.clone();
                    let (path, away) = (path.clone(), away.clone());
                    move || async move {
                        sqlx::query(
                            "INSERT INTO ftshop_storage_probe (id, checked_at, pad) \
                                     VALUES (7, 0, '')",
                        )
                        .execute(&db.pool)
                        .await
                        .expect("write");
                        // The file loses its name after the commit, before the answer.
                        std::fs::rename(&path, &away).expect("rename away");
                        "written"
                    }
                }),
            );
        let app = Service::new("guarded", routes, utoipa::openapi::OpenApi::default())
            .database(&db)
            .into_router();
        let call = |method: &str, uri: &str| {
            let app = app.clone();
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            async move { app.oneshot(request).await.expect("answer") }
        };

        assert_eq!(call("GET", "/read").await.status(), 200);
        let withheld = call("POST", "/write").await;
        assert_eq!(withheld.status(), 503);
        assert_eq!(
            withheld.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let read = call("GET", "/read").await;
        assert_eq!(read.status(), 503, "nothing is served from a lost file");
        assert_eq!(call("GET", "/health/live").await.status(), 200);
        assert_eq!(call("GET", "/health/ready").await.status(), 200);

        std::fs::rename(&away, &path).expect("rename back");
        assert_eq!(call("GET", "/read").await.status(), 200);
    }
}

/// Helpers for tests that run a service in-process.
pub mod testing {
    use super::*;

    /// Serves `router` on a free loopback port with the default [`ServerLimits`] until the
    /// test's runtime ends; returns its base URL (`http://127.0.0.1:PORT`).
    ///
    /// Errors: no loopback port could be bound.
    pub async fn serve_on_free_port(router: Router) -> anyhow::Result<String> {
        let listener = bind([127, 0, 0, 1].into(), 0).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(
            listener,
            router,
            ServerLimits::default(),
            std::future::pending(),
        ));
        Ok(format!("http://{addr}"))
    }
}
