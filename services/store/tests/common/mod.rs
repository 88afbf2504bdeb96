//! Spawns real Store instances for the integration tests: the full router from `app()`, served
//! on 127.0.0.1:0, over a fresh SQLite file in a temp dir or a fresh PostgreSQL database.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::Arc;

use ftshop_store::{Config, app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One running Store.
pub struct TestStore {
    pub base: String,
    pub client: reqwest::Client,
    /// Keeps the SQLite data dir alive as long as any instance uses it.
    _data_dir: Arc<TempDir>,
}

/// An answer from the Store, with what the tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub replayed: bool,
    pub body: Value,
}

impl Answer {
    /// Asserts a problem+json answer with `status`, and returns its `type`.
    pub fn assert_problem(&self, status: u16) -> &str {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        self.body["type"].as_str().unwrap_or_default()
    }
}

/// A fresh configuration for `backend`: its own temp data dir, and for PostgreSQL its own
/// database.
pub async fn config(backend: Backend) -> (Config, Arc<TempDir>) {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    let mut config = Config::for_data_dir(dir.path());
    if backend == Backend::Postgres {
        let url = ftshop_platform::db::testing::fresh_postgres_database()
            .await
            .expect("a PostgreSQL server for the tests");
        config.common.database_url = Some(url);
    }
    (config, dir)
}

/// Starts a Store on a fresh database.
pub async fn spawn(backend: Backend) -> TestStore {
    let (config, dir) = config(backend).await;
    spawn_with(&config, dir).await
}

/// Starts a Store with `config`, which may share its database with other instances.
pub async fn spawn_with(config: &Config, data_dir: Arc<TempDir>) -> TestStore {
    let router = app(config).await.expect("store app starts");
    serve_router(router, data_dir).await
}

/// Serves an already built router on a free port until the test's runtime ends.
pub async fn serve_router(router: axum::Router, data_dir: Arc<TempDir>) -> TestStore {
    let base = ftshop_platform::server::testing::serve_on_free_port(router)
        .await
        .expect("serve on a free port");
    TestStore {
        base,
        client: reqwest::Client::new(),
        _data_dir: data_dir,
    }
}

impl TestStore {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        answer(response).await
    }

    /// `POST /sell {"product": product}` with an optional `Idempotency-Key`.
    pub async fn sell(&self, product: &str, key: Option<&str>) -> Answer {
        let mut request = self
            .client
            .post(self.url("/sell"))
            .json(&json!({ "product": product }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        answer(request.send().await.expect("POST /sell")).await
    }

    /// `POST /sell` with a raw body and content type.
    pub async fn sell_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut request = self.client.post(self.url("/sell")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        answer(request.send().await.expect("POST /sell")).await
    }

    pub async fn stock(&self, product: &str) -> i64 {
        let answer = self.get(&format!("/product?product={product}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body["stock"].as_i64().expect("stock is an integer")
    }

    /// Every product as returned by `GET /products`.
    pub async fn products(&self) -> Value {
        let answer = self.get("/products").await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        answer.body
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let replayed = header("idempotent-replayed") == "true";
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        content_type,
        replayed,
        body,
    }
}

/// An answer with its headers and how long it took.
#[derive(Debug)]
pub struct Timed {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub elapsed: std::time::Duration,
}

impl Timed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Marked stale by the resilient repository (`x-ftshop-stale: true`).
    pub fn is_stale(&self) -> bool {
        self.header("x-ftshop-stale") == Some("true")
    }
}

impl TestStore {
    /// `GET path`, timed.
    pub async fn timed_get(&self, path: &str) -> Timed {
        timed(self.client.get(self.url(path))).await
    }

    /// `POST /sell {"product": product}` with `Idempotency-Key: key`, timed.
    pub async fn timed_sell(&self, product: &str, key: &str) -> Timed {
        timed(
            self.client
                .post(self.url("/sell"))
                .header("idempotency-key", key)
                .json(&json!({ "product": product })),
        )
        .await
    }
}

async fn timed(request: reqwest::RequestBuilder) -> Timed {
    let started = std::time::Instant::now();
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body");
    Timed {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        elapsed: started.elapsed(),
    }
}
