//! Who may use the control room: the holder of the login token, then of the session cookie it
//! buys (see the module docs of [`super`]).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ftshop_platform::Problem;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::Room;

/// The login token and the session secret, kept in `<data-dir>/control-room.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub token: String,
    pub session: String,
}

const FILE: &str = "control-room.json";
const COOKIE: &str = "ftshop_control";

impl Credentials {
    /// Reads the credentials a previous run of this data dir made, or makes new ones (0600).
    /// New ones that cannot be written (a full disk) are used anyway, with a warning: the
    /// suite must start; only a restart would then need the new URL.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(found) = serde_json::from_str::<Credentials>(&text)
            && found.token.len() >= 32
            && found.session.len() >= 32
        {
            return Ok(found);
        }
        let made = Credentials {
            token: random_hex(32),
            session: random_hex(64),
        };
        if let Err(err) =
            ftshop_platform::private_fs::write_private_atomic(&path, &serde_json::to_vec(&made)?)
        {
            eprintln!(
                "[up] WARNING: cannot write {} ({err:#}); the control room's URL will change at \
                 the next start",
                path.display()
            );
        }
        Ok(made)
    }
}

fn random_hex(len: usize) -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The `token` query parameter of `query`, if any.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether the request carries the session cookie or the login token as a bearer token.
fn authorized(room: &Room, headers: &HeaderMap) -> bool {
    let c = &room.credentials;
    cookie(headers, COOKIE).is_some_and(|v| same(v, &c.session))
        || bearer(headers).is_some_and(|v| same(v, &c.token))
}

/// The middleware in front of every route.
pub async fn require(State(room): State<Arc<Room>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let path = request.uri().path();
    // Opening the printed URL: the token buys a session cookie, and the address bar loses it.
    if let Some(token) = query_token(request.uri().query()) {
        if request.method() == Method::GET && same(token, &room.credentials.token) {
            return login(&room);
        }
        return denied(path, "the token in this URL is not this control room's");
    }
    if !authorized(&room, headers) {
        return denied(
            path,
            "open the URL with the token that `ftshop up` printed (also in up.json, `control_room`)",
        );
    }
    if let Err(problem) = same_origin_json(request.method(), headers) {
        return problem.into_response();
    }
    next.run(request).await
}

fn login(room: &Room) -> Response {
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
        room.credentials.session
    );
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// 401: problem+json for the API, a short page for the rest.
fn denied(path: &str, why: &str) -> Response {
    if path.starts_with("/api/") {
        let mut response = Problem::unauthorized(why.to_owned()).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ftshop-control-room\""),
        );
        return response;
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>ftshop control room: \
         sign-in needed</title><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
         <h1>401: sign-in needed</h1><p>{}.</p><p>The URL looks like \
         <code>http://127.0.0.1:8070/?token=…</code>.</p></body></html>",
        html_escape(why)
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}

/// Actions (anything but GET/HEAD) must carry JSON or nothing, and a browser's `Origin` must be
/// this server's: a form on another site can do neither.
fn same_origin_json(method: &Method, headers: &HeaderMap) -> Result<(), Problem> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if origin != format!("http://{host}") {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "cross-origin",
                format!("actions are accepted from this page only, not from {origin}"),
            ));
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "actions take a JSON body (content-type: application/json) or none",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_query_and_the_session_from_its_cookie_only() {
        assert_eq!(query_token(Some("token=abc")), Some("abc"));
        assert_eq!(query_token(Some("x=1&token=abc")), Some("abc"));
        assert_eq!(query_token(Some("xtoken=abc")), None);
        assert_eq!(query_token(None), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; ftshop_control=s3ss; x=y"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("s3ss"));
        assert_eq!(cookie(&headers, "ftshop"), None);
    }

    #[test]
    fn actions_need_json_or_no_body_and_a_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8070"));
        assert!(same_origin_json(&Method::POST, &headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8070"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(same_origin_json(&Method::POST, &headers).is_ok());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            same_origin_json(&Method::POST, &headers).map_err(|p| p.status_code()),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert_eq!(
            same_origin_json(&Method::PUT, &headers).map_err(|p| p.status_code()),
            Err(StatusCode::FORBIDDEN)
        );
        // Reads are never refused for their origin (EventSource, navigation).
        assert!(same_origin_json(&Method::GET, &headers).is_ok());
    }

    #[test]
    fn credentials_survive_a_restart_and_are_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Credentials::load_or_create(dir.path()).expect("create");
        let again = Credentials::load_or_create(dir.path()).expect("load");
        assert_eq!((first.token.len(), first.session.len()), (32, 64));
        assert_eq!(
            (&first.token, &first.session),
            (&again.token, &again.session)
        );
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("stat")
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
