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

pub fn record_sale(outcome: SaleOutcome) {
    let outcome = match outcome {
        SaleOutcome::Sold => "sold",
        SaleOutcome::OutOfStock => "out_of_stock",
        SaleOutcome::IdempotentReplay => "idempotent_replay",
        SaleOutcome::UnknownProduct => "unknown_product",
    };
    metrics::counter!("store_sales_total", "outcome" => outcome).increment(1);
}
