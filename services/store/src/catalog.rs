//! The seed catalog: the products (with opening stock) written into an empty database at
//! start. The default is `catalog.json`, compiled into the binary; `--catalog FILE` replaces it.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::money::usd_to_cents;

/// The catalog compiled into the binary.
pub const DEFAULT_CATALOG: &str = include_str!("../catalog.json");

/// One product as seeded: validated, price in cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedProduct {
    pub id: String,
    pub name: String,
    pub value_cents: i64,
    pub stock: i64,
}

/// Reads the catalog from `path`, or the built-in one when `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<Vec<SeedProduct>> {
    match path {
        None => parse(DEFAULT_CATALOG).context("built-in catalog.json is invalid"),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read catalog {}", path.display()))?;
            parse(&text).with_context(|| format!("invalid catalog {}", path.display()))
        }
    }
}

/// Parses and validates a catalog: a JSON array of `{"id", "name", "value", "stock"}` with
/// `value` in dollars (at most two decimals) inside the suite's limits ([`check_limits`]),
/// unique valid ids and at least one product. Errors name the product.
pub fn parse(json: &str) -> anyhow::Result<Vec<SeedProduct>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        id: String,
        name: String,
        /// A JSON number, read exactly (strings are refused).
        #[serde(with = "ftshop_platform::money::json")]
        value: ftshop_platform::money::Decimal,
        stock: u32,
    }

    let entries: Vec<Entry> = serde_json::from_str(json).context("not a JSON array of products")?;
    if entries.is_empty() {
        bail!("the catalog has no products");
    }
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .map(|entry| {
            ftshop_platform::extract::validate_id("id", &entry.id)
                .map_err(|p| anyhow::anyhow!("product {:?}: {p}", entry.id))?;
            if !seen.insert(entry.id.clone()) {
                bail!("product {:?} appears twice", entry.id);
            }
            let name = entry.name.trim();
            if name.is_empty() {
                bail!("product {:?} has an empty name", entry.id);
            }
            let value_cents = usd_to_cents(entry.value)
                .map_err(|e| anyhow::anyhow!("product {:?}: value {e}", entry.id))?;
            check_limits(&entry.id, value_cents)?;
            Ok(SeedProduct {
                id: entry.id,
                name: name.to_owned(),
                value_cents,
                stock: i64::from(entry.stock),
            })
        })
        .collect()
}

/// Refuses a price whose bonus Fidelity would refuse (a zero price included) or whose total
/// could not be computed at a plausible rate: the suite's shared limits
/// ([`ftshop_platform::limits::check_price`], docs/design.md "Limits"), checked here, where
/// prices enter the suite, so a sale never fails on them later. The error names the product.
pub fn check_limits(id: &str, value_cents: i64) -> anyhow::Result<()> {
    ftshop_platform::limits::check_price(value_cents)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("product {id:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_catalog_has_twelve_products() {
        let products = load(None).expect("built-in catalog parses");
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        let expected: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
        assert_eq!(ids, expected);
        assert!(products.iter().all(|p| p.value_cents > 0 && p.stock > 0));
        let low = products.iter().find(|p| p.id == "12").expect("product 12");
        assert!(low.stock <= 10, "product 12 is the low-stock demo product");
    }

    #[test]
    fn prices_are_read_as_cents() {
        let products =
            parse(r#"[{"id": "a", "name": "Lamp", "value": 49.90, "stock": 3}]"#).expect("parses");
        assert_eq!(
            products,
            vec![SeedProduct {
                id: "a".into(),
                name: "Lamp".into(),
                value_cents: 4990,
                stock: 3
            }]
        );
    }

    #[test]
    fn invalid_catalogs_are_rejected() {
        for bad in [
            "[]",
            "{}",
            r#"[{"id": "a", "name": "Lamp", "value": 49.999, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": -1, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": 0, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": 0.49, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": 1000000.50, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": 1, "stock": -3}]"#,
            r#"[{"id": "a b", "name": "Lamp", "value": 1, "stock": 3}]"#,
            r#"[{"id": "a", "name": " ", "value": 1, "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": "1.00", "stock": 3}]"#,
            r#"[{"id": "a", "name": "Lamp", "value": 1, "stock": 3},
                {"id": "a", "name": "Lamp 2", "value": 1, "stock": 3}]"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad}");
        }
    }

    /// Issue 14, class 6: the edges named in the issue are refused at load with an error naming
    /// the product and the limit; their neighbours load.
    #[test]
    fn prices_whose_bonus_fidelity_refuses_are_refused_naming_the_product() {
        for (value, points) in [("0.49", 0), ("1000000.50", 1_000_001), ("0.01", 0)] {
            let catalog = format!(
                r#"[{{"id": "ok", "name": "Fine", "value": 10, "stock": 1}},
                    {{"id": "odd-{points}", "name": "Odd", "value": {value}, "stock": 1}}]"#
            );
            let err = match parse(&catalog) {
                Ok(products) => panic!("price {value} accepted: {products:?}"),
                Err(err) => format!("{err:#}"),
            };
            assert!(err.contains(&format!("product \"odd-{points}\"")), "{err}");
            assert!(err.contains(&format!("bonus of {points} points")), "{err}");
            assert!(err.contains("1 to 1000000 points"), "{err}");
        }
        for (value, cents) in [("0.50", 50), ("1000000.49", 100_000_049)] {
            let catalog =
                format!(r#"[{{"id": "a", "name": "Edge", "value": {value}, "stock": 1}}]"#);
            let products = parse(&catalog).unwrap_or_else(|e| panic!("{value}: {e:#}"));
            assert_eq!(products[0].value_cents, cents);
        }
    }

    /// Every price the catalog accepts has a bonus Fidelity accepts and a total at every
    /// plausible rate (the platform's property test covers the arithmetic; this one goes
    /// through the catalog parser itself).
    #[test]
    fn every_accepted_catalog_price_has_an_accepted_bonus_and_total() {
        use ftshop_platform::limits::{check_bonus, check_total};
        use ftshop_platform::money::{RateBand, bonus_points};
        let prices = (0..=120).chain((100_000_000..=100_000_060).map(|c| c as i64));
        for cents in prices {
            let catalog = format!(
                r#"[{{"id": "p", "name": "P", "value": {}, "stock": 1}}]"#,
                ftshop_platform::money::cents_to_decimal(cents)
            );
            if let Ok(products) = parse(&catalog) {
                let value_cents = products[0].value_cents;
                assert_eq!(value_cents, cents);
                assert!(check_bonus(bonus_points(value_cents)).is_ok(), "{cents}");
                for rate in [RateBand::DEFAULT.min, RateBand::DEFAULT.max] {
                    assert!(check_total(value_cents, rate).is_ok(), "{cents} at {rate}");
                }
            } else {
                assert!(check_bonus(bonus_points(cents)).is_err(), "{cents} refused");
            }
        }
    }
}
