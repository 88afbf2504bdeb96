//! Prices are stored and computed as integer US cents. Floats appear only at the edges: the
//! seed file writes prices as JSON numbers (`49.90`) and responses show `value` in dollars.

/// Converts a dollar amount read from JSON into cents, exactly. Rejects negative, non-finite,
/// too large values and more than two decimals (`49.999`).
pub fn usd_to_cents(value: f64) -> Result<i64, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{value} is not a non-negative amount"));
    }
    // `Display` for f64 prints the shortest decimal that reads back as the same f64, never in
    // exponent form, so a literal like `49.90` comes back as "49.9" and `0.1` as "0.1": the
    // decimal digits the author wrote, without binary rounding noise.
    let text = value.to_string();
    let (units, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if fraction.len() > 2 {
        return Err(format!("{text} has more than two decimals"));
    }
    let units: i64 = units.parse().map_err(|_| format!("{text} is too large"))?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        // "9" means 90 cents, "09" means 9 cents.
        format!("{fraction:0<2}")
            .parse()
            .map_err(|_| format!("{text} is not a decimal amount"))?
    };
    units
        .checked_mul(100)
        .and_then(|c| c.checked_add(fraction))
        .ok_or_else(|| format!("{text} is too large"))
}

/// Dollars for display in JSON (`4990` → `49.9`). Exact for any realistic price: every cent
/// amount below 2^53 has a nearest f64 whose shortest decimal form is the amount itself.
pub fn cents_to_usd(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_become_exact_cents() {
        assert_eq!(usd_to_cents(49.90), Ok(4990));
        assert_eq!(usd_to_cents(49.9), Ok(4990));
        assert_eq!(usd_to_cents(0.1), Ok(10));
        assert_eq!(usd_to_cents(0.07), Ok(7));
        assert_eq!(usd_to_cents(599.0), Ok(59900));
        assert_eq!(usd_to_cents(39.99), Ok(3999));
        assert_eq!(usd_to_cents(0.0), Ok(0));
        assert_eq!(usd_to_cents(1_000_000.01), Ok(100_000_001));
    }

    #[test]
    fn bad_amounts_are_rejected() {
        assert!(usd_to_cents(49.999).is_err());
        assert!(usd_to_cents(0.001).is_err());
        assert!(usd_to_cents(-1.0).is_err());
        assert!(usd_to_cents(f64::NAN).is_err());
        assert!(usd_to_cents(f64::INFINITY).is_err());
        assert!(usd_to_cents(1e300).is_err());
    }

    #[test]
    fn cents_display_as_dollars() {
        assert_eq!(cents_to_usd(4990).to_string(), "49.9");
        assert_eq!(cents_to_usd(3999).to_string(), "39.99");
        assert_eq!(cents_to_usd(7).to_string(), "0.07");
        assert_eq!(cents_to_usd(59900).to_string(), "599");
    }
}
