//! `GET /exchange`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use ftshop_platform::Problem;
use ftshop_platform::extract::Json;
use ftshop_platform::money::Decimal;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::OpenApi;

use crate::AppState;
use crate::cache::{Origin, Quote};

#[derive(OpenApi)]
#[openapi(
    paths(get_exchange),
    components(schemas(ExchangeRate, RateOrigin, Problem)),
    tags((name = "exchange", description = "USD→BRL exchange rate with cache and stale fallback"))
)]
pub struct ApiDoc;

/// The service's own routes (the platform adds health, metrics and docs).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/exchange", get(get_exchange))
        .with_state(state)
}

/// The USD→BRL rate.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExchangeRate {
    /// BRL per USD: an exact decimal written as a JSON number (up to 15 significant digits,
    /// inside the configured plausible band, default 0.5..=50, and within the jump guard).
    #[schema(value_type = f64, example = 5.3123)]
    #[serde(with = "ftshop_platform::money::json")]
    pub rate: Decimal,
    /// When the rate was fetched from the source (RFC 3339, UTC).
    #[schema(example = "2025-01-31T12:00:00.123Z")]
    pub as_of: String,
    pub source: RateOrigin,
}

/// How the rate was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateOrigin {
    /// Fetched from the source for this request.
    Live,
    /// From memory, younger than the TTL.
    Cache,
    /// The source is failing; the last known good rate, younger than the max staleness.
    Stale,
}

impl From<Origin> for RateOrigin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Live => RateOrigin::Live,
            Origin::Cache => RateOrigin::Cache,
            Origin::Stale => RateOrigin::Stale,
        }
    }
}

/// Current USD→BRL rate.
#[utoipa::path(
    get, path = "/exchange", tag = "exchange",
    responses(
        (status = 200, description = "The rate, fresh, cached or stale", body = ExchangeRate),
        (status = 503, description = "The source is failing and no rate is recent enough (type `rate-unavailable`)",
            body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_exchange(State(state): State<AppState>) -> Result<Json<ExchangeRate>, Problem> {
    let quote = state.cache.get(|| state.refresh()).await.map_err(|err| {
        // The reason can name the upstream host: it goes to the logs, not to the client.
        tracing::warn!(reason = %err.reason, "no exchange rate to serve");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate-unavailable",
            format!(
                "the rate source is failing and no rate younger than {:?} is available",
                err.max_stale
            ),
        )
    })?;
    Ok(Json(answer(&quote)?))
}

fn answer(quote: &Quote) -> Result<ExchangeRate, Problem> {
    let as_of = quote
        .as_of
        .replace_millisecond(quote.as_of.millisecond())
        .unwrap_or(quote.as_of)
        .format(&Rfc3339)
        .map_err(Problem::internal)?;
    Ok(ExchangeRate {
        rate: quote.rate,
        as_of,
        source: quote.origin.into(),
    })
}
