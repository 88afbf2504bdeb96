//! Money is integer cents in storage and arithmetic, rates are exact decimals, and JSON shows
//! both as decimal numbers; the one rounding rule (half away from zero) and the conversion live
//! in [`ftshop_platform::money`] so every service rounds the same way.

pub use ftshop_platform::money::{Decimal, bonus_points, cents_to_decimal, convert, to_cents};

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
        let rate: Decimal = "5.3123".parse().unwrap_or_default();
        assert_eq!(convert(4990, rate), Some(26508));
        assert_eq!(cents_to_decimal(4990).to_string(), "49.90");
        // The case: 24.50 USD at 5.31 is 130.095 BRL, half a cent up: 130.10.
        let rate: Decimal = "5.31".parse().unwrap_or_default();
        assert_eq!(convert(2450, rate), Some(13010));
    }
}
