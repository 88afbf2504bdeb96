//! `GET/PUT /admin/faults` and `POST /admin/faults/reset`, behind the admin token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use super::{FaultEngine, FaultProfile, FaultRule, FaultsStatus};
use crate::Problem;
use crate::extract::Json;

/// Body of `PUT /admin/faults`: either `rules` or a named `profile` (`off`, `default`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    /// Replaces every rule. Rules naming another service or replica are ignored, so one list can
    /// be sent to the whole suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<FaultRule>>,
    /// `off` or `default` instead of `rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Restarts the random streams from this seed (kept when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    paths(get_faults, put_faults, reset_faults),
    components(schemas(FaultsStatus, FaultsUpdate, FaultRule, super::RuleStatus, super::FaultKind, Problem)),
    modifiers(&BearerAuth),
    tags((name = "admin", description = "Fault injection and other operator endpoints (bearer token)"))
)]
pub struct AdminDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The fault routes (without the token check, which the caller layers on).
pub fn routes(engine: Arc<FaultEngine>) -> Router {
    Router::new()
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/faults/reset", post(reset_faults))
        .with_state(engine)
}

/// The fault rules of this process, their windows and what they injected.
#[utoipa::path(get, path = "/admin/faults", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = FaultsStatus),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_faults(State(engine): State<Arc<FaultEngine>>) -> Json<FaultsStatus> {
    Json(engine.status())
}

/// Replaces the rules (or loads a named profile); answers the new state.
#[utoipa::path(put, path = "/admin/faults", tag = "admin",
    security(("admin_token" = [])),
    request_body = FaultsUpdate,
    responses(
        (status = 200, body = FaultsStatus),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_faults(
    State(engine): State<Arc<FaultEngine>>,
    Json(update): Json<FaultsUpdate>,
) -> Result<Json<FaultsStatus>, Problem> {
    let (rules, name) = match (update.rules, update.profile.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Problem::validation(
                "send either `rules` or `profile`, not both",
            ));
        }
        (Some(rules), None) => (rules, "admin".to_owned()),
        (None, Some(name @ ("off" | "default"))) => (
            FaultProfile::load(name)
                .map_err(|e| Problem::validation(e.to_string()))?
                .rules,
            name.to_owned(),
        ),
        (None, Some(other)) => {
            return Err(Problem::validation(format!(
                "unknown profile `{other}`: use `off`, `default` or send `rules` \
                 (`ftshop fault set --profile FILE` reads a file and sends its rules)"
            )));
        }
        (None, None) => return Err(Problem::validation("send `rules` or `profile`")),
    };
    if rules.len() > 100 {
        return Err(Problem::validation("at most 100 rules"));
    }
    for (index, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|detail| Problem::validation(format!("rule {index}: {detail}")))?;
    }
    let seed = update.seed.unwrap_or_else(|| engine.seed());
    tracing::warn!(rules = rules.len(), profile = %name, seed, "fault rules replaced through the admin API");
    engine.install(rules, seed, name);
    Ok(Json(engine.status()))
}

/// Removes every rule: faults off until set again.
#[utoipa::path(post, path = "/admin/faults/reset", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = FaultsStatus),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
async fn reset_faults(State(engine): State<Arc<FaultEngine>>) -> Json<FaultsStatus> {
    tracing::warn!("fault rules reset through the admin API");
    engine.reset();
    Json(engine.status())
}
