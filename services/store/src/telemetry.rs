//! The Store's own metrics. Labels are bounded: `product` only ever takes ids from the catalog
//! (set after the product was found), `outcome` one of four fixed values.

use crate::repo::Product;

/// `store_stock_units{product}`: units left, per product.
pub fn record_stock(product: &str, stock: i64) {
    metrics::gauge!("store_stock_units", "product" => product.to_owned()).set(stock as f64);
}

pub fn record_all_stock(products: &[Product]) {
    for product in products {
        record_stock(&product.id, product.stock);
    }
}

/// `store_sales_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub enum SaleOutcome {
    Sold,
    OutOfStock,
    IdempotentReplay,
    UnknownProduct,
}

/// Registers `store_sales_total` at 0 for every outcome at start: a counter created at its first
/// increment loses that increment in Prometheus' `increase()`/`rate()`, and shows "No data"
/// where the truth is 0.
pub fn register_counters() {
    for outcome in [
        SaleOutcome::Sold,
        SaleOutcome::OutOfStock,
        SaleOutcome::IdempotentReplay,
        SaleOutcome::UnknownProduct,
    ] {
        metrics::counter!("store_sales_total", "outcome" => outcome.label()).increment(0);
    }
}

impl SaleOutcome {
    fn label(self) -> &'static str {
        match self {
            SaleOutcome::Sold => "sold",
            SaleOutcome::OutOfStock => "out_of_stock",
            SaleOutcome::IdempotentReplay => "idempotent_replay",
            SaleOutcome::UnknownProduct => "unknown_product",
        }
    }
}

pub fn record_sale(outcome: SaleOutcome) {
    metrics::counter!("store_sales_total", "outcome" => outcome.label()).increment(1);
}
