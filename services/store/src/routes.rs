//! The Store's HTTP API: `GET /product`, `GET /products`, `POST /sell`, and its OpenAPI
//! document. Every error is a problem+json answer; nothing here can panic.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ftshop_platform::Problem;
use ftshop_platform::extract::{IdempotencyKey, Json, Query, validate_id};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::money::cents_to_usd;
use crate::repo::{Inventory, Product, SellError, SellOutcome};
use crate::telemetry::{SaleOutcome, record_sale, record_stock};
use ftshop_platform::money::Decimal;
use ftshop_platform::repository::Read;

/// Response header set to `true` when a sale is answered from an earlier request with the same
/// `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub inventory: Inventory,
}

impl AppState {
    pub fn new(inventory: Inventory) -> Self {
        Self { inventory }
    }
}

/// The Store's own routes, with their state; [`crate::app`] wraps them in the platform layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/product", get(get_product))
        .route("/products", get(list_products))
        .route("/sell", post(sell))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    paths(get_product, list_products, sell),
    components(schemas(ProductView, SellRequest, SaleReceipt, Problem)),
    tags((name = "store", description = "Catalog, stock and sales ledger"))
)]
pub struct ApiDoc;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Product id, 1 to 64 characters of letters, digits, `_`, `-`, `.` or `:`.
    pub product: String,
}

/// A product with its price and current stock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    #[schema(example = "8")]
    pub id: String,
    #[schema(example = "Portable Bluetooth Speaker")]
    pub name: String,
    /// Price in US dollars, exact to the cent (a JSON number).
    #[schema(value_type = f64, example = 49.9)]
    #[serde(with = "ftshop_platform::money::json")]
    pub value: Decimal,
    /// Price in US cents, exact.
    #[schema(example = 4990)]
    pub value_cents: i64,
    /// Units available.
    #[schema(example = 500)]
    pub stock: i64,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        Self {
            value: cents_to_usd(p.value_cents),
            id: p.id,
            name: p.name,
            value_cents: p.value_cents,
            stock: p.stock,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SellRequest {
    /// Id of the product to sell one unit of.
    #[schema(example = "8")]
    pub product: String,
}

/// The receipt of one unit sold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SaleReceipt {
    /// Unique id of this sale (UUID v7); the same for every replay of an idempotent request.
    #[schema(example = "01890a5d-ac96-774b-bcce-b302099a8057")]
    pub transaction_id: String,
    /// Id of the product sold.
    #[schema(example = "8")]
    pub product: String,
    /// Price in US dollars, exact to the cent (a JSON number).
    #[schema(value_type = f64, example = 49.9)]
    #[serde(with = "ftshop_platform::money::json")]
    pub value: Decimal,
    /// Price in US cents, exact.
    #[schema(example = 4990)]
    pub value_cents: i64,
    /// Units left right after this sale.
    #[schema(example = 499)]
    pub stock_left: i64,
}

/// Looks up one product.
#[utoipa::path(
    get,
    path = "/product",
    tag = "store",
    params(ProductQuery),
    responses(
        (status = 200, description = "The product; while the database is away, the last one read, marked stale", body = ProductView,
            headers(
            ("x-ftshop-stale" = String, description = "`true` when the database is unreachable and this is the last value read, at most `--stale-reads-max` old (absent on a fresh answer)"),
            ("Age" = u64, description = "With `x-ftshop-stale`: whole seconds since the value was read from the database (RFC 9111)"),
        )),
        (status = 400, description = "Missing `product` parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown product", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid product id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable and nothing cached for this product (type `database-unavailable`, `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_product(
    State(state): State<AppState>,
    Query(query): Query<ProductQuery>,
) -> Result<Read<ProductView>, Problem> {
    validate_id("product", &query.product)?;
    let read = state.inventory.read_product(&query.product).await?;
    let stale = read.stale;
    match read.value {
        Some(product) => {
            if stale.is_none() {
                // Both replicas share the stock: each read keeps this replica's gauge current.
                record_stock(&product.id, product.stock);
            }
            Ok(Read {
                value: product.into(),
                stale,
            })
        }
        None => Err(unknown_product(&query.product)),
    }
}

/// Lists every product, ordered by id.
#[utoipa::path(
    get,
    path = "/products",
    tag = "store",
    responses(
        (status = 200, description = "All products; while the database is away, the last list read, marked stale", body = Vec<ProductView>,
            headers(
            ("x-ftshop-stale" = String, description = "`true` when the database is unreachable and this is the last value read, at most `--stale-reads-max` old (absent on a fresh answer)"),
            ("Age" = u64, description = "With `x-ftshop-stale`: whole seconds since the value was read from the database (RFC 9111)"),
        )),
        (status = 503, description = "Database unreachable and no list cached (type `database-unavailable`, `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_products(
    State(state): State<AppState>,
) -> Result<Read<Vec<ProductView>>, Problem> {
    let read = state.inventory.read_products().await?;
    Ok(read.map(|products| products.into_iter().map(ProductView::from).collect()))
}

/// Sells one unit of a product.
///
/// Stock never goes below zero. With an `Idempotency-Key`, the first request sells and every
/// later request with the same key and product (even a concurrent one) gets the same receipt,
/// with the header `idempotent-replayed: true`, and sells nothing.
#[utoipa::path(
    post,
    path = "/sell",
    tag = "store",
    request_body = SellRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: 1 to 200 visible ASCII characters"),
    ),
    responses(
        (status = 200, description = "Sold (or replayed)", body = SaleReceipt),
        (status = 400, description = "Malformed JSON or invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Out of stock (type `out-of-stock`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body or product id, or Idempotency-Key reused for another product (type `idempotency-key-reused`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable or failing (types `database-unavailable`, `storage-unavailable`; `Retry-After`): nothing was sold. A sale never uses cached data", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sell(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    Json(request): Json<SellRequest>,
) -> Result<Response, Problem> {
    validate_id("product", &request.product)?;
    match state.inventory.sell(&request.product, key.as_deref()).await {
        Ok(outcome) => {
            let replayed = matches!(outcome, SellOutcome::Replayed(_));
            let sale = outcome.sale();
            if replayed {
                record_sale(SaleOutcome::IdempotentReplay);
            } else {
                record_sale(SaleOutcome::Sold);
                record_stock(&sale.product_id, sale.stock_left);
            }
            let receipt = SaleReceipt {
                transaction_id: sale.transaction_id.clone(),
                product: sale.product_id.clone(),
                value: cents_to_usd(sale.value_cents),
                value_cents: sale.value_cents,
                stock_left: sale.stock_left,
            };
            let mut response = Json(receipt).into_response();
            if replayed {
                response.headers_mut().insert(
                    HeaderName::from_static(REPLAYED_HEADER),
                    HeaderValue::from_static("true"),
                );
            }
            Ok(response)
        }
        Err(SellError::OutOfStock(product)) => {
            record_sale(SaleOutcome::OutOfStock);
            record_stock(&product, 0);
            Err(Problem::conflict(
                "out-of-stock",
                format!("product {product:?} is out of stock"),
            ))
        }
        Err(SellError::UnknownProduct(product)) => {
            record_sale(SaleOutcome::UnknownProduct);
            Err(unknown_product(&product))
        }
        Err(err @ SellError::KeyReused { .. }) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            err.to_string(),
        )),
        Err(SellError::Database(err)) => Err(err.into()),
    }
}

fn unknown_product(id: &str) -> Problem {
    Problem::not_found(format!("no product with id {id:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        for path in ["/product", "/products", "/sell"] {
            assert!(doc["paths"][path].is_object(), "{path} undocumented");
        }
        let sell = &doc["paths"]["/sell"]["post"];
        let params = sell["parameters"].as_array().expect("parameters");
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
        );
        let conflict = &sell["responses"]["409"]["content"];
        assert!(
            conflict["application/problem+json"].is_object(),
            "{conflict}"
        );
        for path in ["/product", "/products"] {
            let ok = &doc["paths"][path]["get"]["responses"]["200"]["headers"];
            assert!(ok["x-ftshop-stale"].is_object(), "{path}: {ok}");
            assert!(ok["Age"].is_object(), "{path}: {ok}");
        }
        let get = &doc["paths"]["/product"]["get"]["parameters"][0];
        assert_eq!(get["name"], "product");
        assert_eq!(get["in"], "query");
    }
}
