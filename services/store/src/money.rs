//! Prices are stored and computed as integer US cents, and read and shown as exact decimals
//! ([`ftshop_platform::money`]): the seed file writes prices as JSON numbers (`49.90`) and
//! responses show `value` in dollars as a JSON number (`49.9`).

use ftshop_platform::money::{Decimal, cents_to_decimal};

/// Converts a dollar amount read from JSON into cents, exactly. Rejects negative and too large
/// values and more than two decimals (`49.999`: a price is never rounded on the way in).
pub fn usd_to_cents(value: Decimal) -> Result<i64, String> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{value} is not a non-negative amount"));
    }
    let value = value.normalize();
    if value.scale() > 2 {
        return Err(format!("{value} has more than two decimals"));
    }
    value
        .checked_mul(Decimal::ONE_HUNDRED)
        .and_then(|cents| i64::try_from(cents).ok())
        .ok_or_else(|| format!("{value} is too large"))
}

/// Dollars for display in JSON (`4990` → `49.90`, written as the number `49.9`).
pub fn cents_to_usd(cents: i64) -> Decimal {
    cents_to_decimal(cents)
}

#[cfg(test)]
mod tests {
    use ftshop_platform::money::decimal_from_f64;

    use super::*;

    /// A price as the seed file's JSON number gives it.
    fn usd(value: f64) -> Result<i64, String> {
        let decimal = decimal_from_f64(value).ok_or_else(|| format!("{value} is not a number"))?;
        usd_to_cents(decimal)
    }

    #[test]
    fn dollars_become_exact_cents() {
        assert_eq!(usd(49.90), Ok(4990));
        assert_eq!(usd(49.9), Ok(4990));
        assert_eq!(usd(0.1), Ok(10));
        assert_eq!(usd(0.07), Ok(7));
        assert_eq!(usd(599.0), Ok(59900));
        assert_eq!(usd(39.99), Ok(3999));
        assert_eq!(usd(0.0), Ok(0));
        assert_eq!(usd(1_000_000.01), Ok(100_000_001));
    }

    #[test]
    fn bad_amounts_are_rejected() {
        assert!(usd(49.999).is_err());
        assert!(usd(0.001).is_err());
        assert!(usd(-1.0).is_err());
        assert!(usd(f64::NAN).is_err());
        assert!(usd(f64::INFINITY).is_err());
        assert!(usd(1e300).is_err());
        assert!(usd_to_cents(Decimal::MAX).is_err());
    }

    #[test]
    fn cents_display_as_dollars() {
        let number = |cents| {
            serde_json::json!(ftshop_platform::money::decimal_to_f64(cents_to_usd(cents)))
                .to_string()
        };
        assert_eq!(number(4990), "49.9");
        assert_eq!(number(3999), "39.99");
        assert_eq!(number(7), "0.07");
        assert_eq!(number(59900), "599.0");
        assert_eq!(cents_to_usd(4990).to_string(), "49.90");
    }
}
