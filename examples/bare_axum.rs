//! The floor for the happy-path benchmark: a bare axum `POST /buy` that parses the same JSON body
//! and answers a fixed purchase, with no downstream calls, no database and no middleware. It
//! shows what the HTTP stack alone costs on the machine, in the same run as the real suite
//! (scripts/bench/happy-path.sh).
//!
//! Run: `cargo run --release --example bare_axum -- 127.0.0.1:28999`

use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:28999".to_owned());
    let app = axum::Router::new().route(
        "/buy",
        post(|Json(body): Json<Value>| async move {
            Json(json!({
                "order_id": "bare",
                "status": "completed",
                "product": {"id": body["product"], "name": "bare", "value": 1.0},
                "rate": 5.3,
                "total": 5.3,
                "bonus": {"points": 1, "status": "credited"},
                "degraded": []
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare axum /buy on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
