//! The control room: a browser page served by `ftshop up` on its own port, to watch a purchase
//! survive failures and steer the failures.
//!
//! - **Access**: a login token, printed in the banner as `http://host:port/?token=...` (the way
//!   Jupyter does it) and kept in `<data-dir>/control-room.json` (0600) so a restarted
//!   `ftshop up` with the same data dir accepts the same URL and sessions. Opening the URL sets
//!   an HttpOnly, SameSite=Strict session cookie and redirects to `/` without the token.
//!   Every page, asset, stream and action answers 401 without the cookie (or
//!   `Authorization: Bearer <login token>`, for scripts). Actions also need a JSON body or no
//!   body, never a form, and a same-origin `Origin` when the browser sends one (no CSRF).
//! - **Actions** go to the services' admin API with the admin token, server-side: the admin
//!   token never reaches the page.
//! - **Live state** is one JSON snapshot, pushed by server-sent events each second while a page
//!   is open ([`feed`]); nothing is polled while no page is open. A supervisor change (a killed
//!   process) is pushed at once.
//! - **Assets** are embedded in the binary ([`assets`]): plain HTML, CSS and JS, nothing
//!   fetched from elsewhere.
//!
//! Endpoints (all under the session):
//! `GET /`, `/app.js`, `/app.css`: the page. `GET /api/state`: one snapshot. `GET /api/events`:
//! the snapshots as SSE (`event: snapshot`). `POST /api/processes/{name}/{kill|restart}`.
//! `POST /api/breakers/{name}/{reset|force-open}`, `POST /api/breakers/reset`.
//! `POST /api/faults/rules` (add or replace one rule), `PUT /api/faults/{process}` (a process's
//! whole rule list: change, remove), `POST /api/faults/preset`. `POST /api/traffic/start`,
//! `POST /api/traffic/stop`. `POST /api/buy`. `GET /api/purchases/{order_id}`.
//! `POST /api/invariants`. Bad input is 400/422 problem+json and changes nothing.

mod actions;
mod assets;
mod auth;
mod checks;
mod feed;
mod topology;
mod traffic;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

pub use topology::Topology;

/// One process of the suite, as the control room talks to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub service: String,
    pub url: String,
}

/// The control room's listener, bound before the suite starts so its URL can be printed and
/// written to up.json.
pub struct Bound {
    listener: tokio::net::TcpListener,
    credentials: auth::Credentials,
    /// `http://host:port`.
    pub base_url: String,
}

impl Bound {
    /// The URL to open: the base URL with the login token.
    pub fn login_url(&self) -> String {
        format!("{}/?token={}", self.base_url, self.credentials.token)
    }
}

/// Binds the control room on `host:port` (0: a free port). `shown_host` is how the URL names
/// the host (127.0.0.1 when listening on every address). Credentials come from
/// `<data_dir>/control-room.json`, created on first use.
///
/// # Errors
/// The port cannot be bound, or the credentials file cannot be read or written.
pub async fn bind(
    host: IpAddr,
    port: u16,
    shown_host: &str,
    data_dir: &Path,
) -> anyhow::Result<Bound> {
    let credentials = auth::Credentials::load_or_create(data_dir)?;
    let listener = ftshop_platform::server::bind(host, port).await?;
    let port = listener.local_addr()?.port();
    let shown = if shown_host.contains(':') {
        format!("[{shown_host}]")
    } else {
        shown_host.to_owned()
    };
    Ok(Bound {
        listener,
        credentials,
        base_url: format!("http://{shown}:{port}"),
    })
}

/// What the control room needs from `ftshop up`.
pub struct Settings {
    pub admin_token: String,
    pub members: Vec<Target>,
    pub topology: Arc<Topology>,
    /// Cancelled when the suite stops.
    pub stop: CancellationToken,
}

/// Shared by every handler.
pub(crate) struct Room {
    credentials: auth::Credentials,
    admin_token: String,
    members: Vec<Target>,
    http: reqwest::Client,
    topology: Arc<Topology>,
    feed: feed::Feed,
    traffic: traffic::Traffic,
    ledger: checks::Ledger,
    /// Processes frozen by the `exchange-down` preset (name, pid), continued when it ends or
    /// the suite stops.
    frozen: Mutex<Vec<(String, u32)>>,
    stop: CancellationToken,
    base_url: String,
}

impl Room {
    fn member(&self, name: &str) -> Option<&Target> {
        self.members.iter().find(|m| m.name == name)
    }

    fn url_of(&self, service: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.service == service)
            .map(|m| m.url.as_str())
    }
}

/// Serves the control room until `settings.stop` is cancelled.
pub fn start(bound: Bound, settings: Settings) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let http = crate::up::member_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .context("building the control room's HTTP client")?;
    let room = Arc::new(Room {
        credentials: bound.credentials,
        admin_token: settings.admin_token,
        members: settings.members,
        http,
        topology: settings.topology,
        feed: feed::Feed::new(),
        traffic: traffic::Traffic::default(),
        ledger: checks::Ledger::default(),
        frozen: Mutex::new(Vec::new()),
        stop: settings.stop.clone(),
        base_url: bound.base_url,
    });
    tokio::spawn(feed::run(room.clone()));
    tokio::spawn(checks::take_baseline(room.clone()));
    let app = router(room.clone());
    let stop = settings.stop;
    let listener = bound.listener;
    Ok(tokio::spawn(async move {
        let shutdown = {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        if let Err(err) = ftshop_platform::server::serve(
            listener,
            app,
            ftshop_platform::server::ServerLimits {
                max_connections: 64,
                ..Default::default()
            },
            shutdown,
        )
        .await
        {
            eprintln!("[up] the control room stopped: {err:#}");
        }
        actions::thaw_all(&room);
        room.traffic.stop_all();
    }))
}

fn router(room: Arc<Room>) -> Router {
    let api = Router::new()
        .route("/api/state", get(feed::state))
        .route("/api/events", get(feed::events))
        .route("/api/processes/{name}/{action}", post(actions::process))
        .route("/api/breakers/reset", post(actions::reset_breakers))
        .route("/api/breakers/{name}/{action}", post(actions::breaker))
        .route("/api/faults/rules", post(actions::add_rule))
        .route("/api/faults/preset", post(actions::preset))
        .route("/api/faults/{process}", put(actions::replace_rules))
        .route("/api/traffic/start", post(traffic::start))
        .route("/api/traffic/stop", post(traffic::stop))
        .route("/api/buy", post(actions::buy))
        .route("/api/purchases/{order_id}", get(actions::story))
        .route("/api/invariants", post(checks::run));
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/favicon.ico", get(assets::favicon))
        .merge(api)
        .fallback(assets::not_found)
        .layer(axum::middleware::from_fn_with_state(
            room.clone(),
            auth::require,
        ))
        .with_state(room)
}
