//! Money is integer cents everywhere; JSON shows it as a decimal number of the currency.

/// Cents as the JSON number users read (49.9 for 4990 cents).
pub fn cents_to_number(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// `value × rate`, rounded half away from zero to whole cents.
pub fn convert(value_cents: i64, rate: f64) -> i64 {
    (value_cents as f64 * rate).round() as i64
}

/// Bonus points: `round(value)` in whole currency units, half away from zero.
pub fn bonus_points(value_cents: i64) -> i64 {
    (value_cents + 50).div_euclid(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bonus_is_value_rounded() {
        assert_eq!(bonus_points(4990), 50);
        assert_eq!(bonus_points(4949), 49);
        assert_eq!(bonus_points(4950), 50);
        assert_eq!(bonus_points(100), 1);
    }

    #[test]
    fn conversion_rounds_to_cents() {
        assert_eq!(convert(4990, 5.3123), 26508);
        assert_eq!(cents_to_number(4990), 49.9);
    }
}
