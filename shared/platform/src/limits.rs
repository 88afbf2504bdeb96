//! The limits one service enforces on data another service produces or relays, in one place,
//! so they cannot disagree (issue 14, class 6: a 0.49 USD price gave a bonus of 0 points that
//! Fidelity refused after the sale).
//!
//! Every limit here is checked **where the data enters the suite, before any side effect**:
//!
//! | data | produced by | refused by | checked where it enters |
//! |------|-------------|------------|-------------------------|
//! | bonus points | Ecommerce (`round(value)`) | Fidelity `POST /bonus` ([`check_bonus`]) | Store's catalog load and start ([`check_price`]), Ecommerce before the sale ([`check_price`]) |
//! | total in BRL cents | Ecommerce (`value × rate`) | JSON numbers (15 significant digits); never 0 (nothing is given away) | Ecommerce before the sale ([`check_total`]) |
//! | ids (product, user, transaction) | clients, the catalog, Store | every service ([`is_valid_id`]) | the request, the catalog load, Ecommerce on Store's sale answer |
//! | exchange rate | Exchange | Ecommerce ([`crate::money::RateBand::DEFAULT`]) | Exchange's `--rate-min/--rate-max` must lie inside it |
//!
//! The price range is *derived* from the bonus range through the suite's one rounding rule
//! ([`crate::money::bonus_points`]), never written down twice: [`check_price`] accepts exactly
//! the prices whose bonus [`check_bonus`] accepts, which a property test checks together with
//! "every accepted price has a representable total at every plausible rate".

use crate::money::{Decimal, RateBand, bonus_points, cents_to_decimal, convert};

/// Fewest points Fidelity credits for one purchase.
pub const BONUS_POINTS_MIN: i64 = 1;
/// Most points Fidelity credits for one purchase.
pub const BONUS_POINTS_MAX: i64 = 1_000_000;

/// Smallest price in US cents whose bonus Fidelity accepts: `0.50` USD rounds to 1 point
/// (`0.49` gives 0 points and is refused).
pub const PRICE_CENTS_MIN: i64 = BONUS_POINTS_MIN * 100 - 50;
/// Largest price in US cents whose bonus Fidelity accepts: `1,000,000.49` USD rounds to
/// 1,000,000 points (`1,000,000.50` gives 1,000,001 and is refused).
pub const PRICE_CENTS_MAX: i64 = BONUS_POINTS_MAX * 100 + 49;

/// Largest total in cents an answer may carry: 15 significant digits, what a JSON number (an
/// `f64`) holds exactly ([`crate::money::RATE_DIGITS`]). The largest price at the largest
/// plausible rate (`1,000,000.49 × 50`) stays far below it.
pub const TOTAL_CENTS_MAX: i64 = 999_999_999_999_999;

/// Smallest total in cents ever sold: 1 cent. A total that rounds to 0 (a rate far too small)
/// would give the product away with its bonus (reviewer finding F3: `"total": 0.0`).
pub const TOTAL_CENTS_MIN: i64 = 1;

/// Longest id (product, user, transaction id) any service accepts.
pub const ID_MAX_LEN: usize = 64;

/// Why a value is outside the suite's limits. The messages name the limit and its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "a bonus of {points} points is outside Fidelity's {BONUS_POINTS_MIN} to {BONUS_POINTS_MAX} points per purchase"
    )]
    Bonus { points: i64 },
    #[error(
        "price {price} USD gives a bonus of {points} points, outside Fidelity's {BONUS_POINTS_MIN} to {BONUS_POINTS_MAX} points per purchase (prices {min} to {max} USD)",
        price = cents_to_decimal(*value_cents),
        min = cents_to_decimal(PRICE_CENTS_MIN),
        max = cents_to_decimal(PRICE_CENTS_MAX)
    )]
    Price { value_cents: i64, points: i64 },
    #[error(
        "price {price} USD at rate {rate} gives no total between {TOTAL_CENTS_MIN} and {TOTAL_CENTS_MAX} cents",
        price = cents_to_decimal(*value_cents)
    )]
    Total { value_cents: i64, rate: Decimal },
}

/// `Ok` when Fidelity credits `points` for one purchase: [`BONUS_POINTS_MIN`] to
/// [`BONUS_POINTS_MAX`], both included.
pub fn check_bonus(points: i64) -> Result<(), LimitError> {
    if (BONUS_POINTS_MIN..=BONUS_POINTS_MAX).contains(&points) {
        Ok(())
    } else {
        Err(LimitError::Bonus { points })
    }
}

/// The bonus points of a price in US cents, when Fidelity accepts them ([`check_bonus`] of
/// [`bonus_points`]): exactly the prices [`PRICE_CENTS_MIN`] to [`PRICE_CENTS_MAX`].
pub fn check_price(value_cents: i64) -> Result<i64, LimitError> {
    let points = bonus_points(value_cents);
    check_bonus(points).map_err(|_| LimitError::Price {
        value_cents,
        points,
    })?;
    Ok(points)
}

/// The total in cents of `value_cents × rate` ([`convert`], rounded once), when it is
/// [`TOTAL_CENTS_MIN`] to [`TOTAL_CENTS_MAX`]: never 0 (nothing is sold for nothing) and never
/// beyond what a JSON number holds.
pub fn check_total(value_cents: i64, rate: Decimal) -> Result<i64, LimitError> {
    convert(value_cents, rate)
        .filter(|total| (TOTAL_CENTS_MIN..=TOTAL_CENTS_MAX).contains(total))
        .ok_or(LimitError::Total { value_cents, rate })
}

/// `true` for an id every service accepts: 1 to [`ID_MAX_LEN`] characters of
/// `[A-Za-z0-9_.:-]` (URL-safe, so ids go into paths and query strings unencoded).
pub fn is_valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= ID_MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// `true` when `band` lies inside the band Ecommerce accepts ([`RateBand::DEFAULT`]): an
/// Exchange configured with a wider band would serve rates Ecommerce then refuses.
pub fn rate_band_is_accepted(band: &RateBand) -> bool {
    band.min >= RateBand::DEFAULT.min && band.max <= RateBand::DEFAULT.max
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_issue_edges_are_refused_and_their_neighbours_accepted() {
        // 0.49 USD gives 0 points; 1,000,000.50 USD gives 1,000,001.
        assert_eq!(
            check_price(49),
            Err(LimitError::Price {
                value_cents: 49,
                points: 0
            })
        );
        assert_eq!(
            check_price(100_000_050),
            Err(LimitError::Price {
                value_cents: 100_000_050,
                points: 1_000_001
            })
        );
        assert_eq!(check_price(50), Ok(1));
        assert_eq!(check_price(100_000_049), Ok(1_000_000));
        assert_eq!(
            check_price(0),
            Err(LimitError::Price {
                value_cents: 0,
                points: 0
            })
        );
        assert!(check_price(-50).is_err());
        assert!(check_price(i64::MAX).is_err());
        assert_eq!((PRICE_CENTS_MIN, PRICE_CENTS_MAX), (50, 100_000_049));
        let message = check_price(49)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            message,
            "price 0.49 USD gives a bonus of 0 points, outside Fidelity's 1 to 1000000 points per \
             purchase (prices 0.50 to 1000000.49 USD)"
        );
    }

    #[test]
    fn bonus_edges() {
        assert!(check_bonus(0).is_err());
        assert!(check_bonus(1).is_ok());
        assert!(check_bonus(1_000_000).is_ok());
        assert!(check_bonus(1_000_001).is_err());
        assert!(check_bonus(-1).is_err());
    }

    #[test]
    fn the_largest_price_at_the_largest_rate_has_a_total() {
        assert_eq!(
            check_total(PRICE_CENTS_MAX, RateBand::DEFAULT.max),
            Ok(5_000_002_450)
        );
        assert_eq!(check_total(PRICE_CENTS_MIN, RateBand::DEFAULT.min), Ok(25));
        assert!(check_total(PRICE_CENTS_MIN, RateBand::DEFAULT.min).is_ok());
        assert!(check_total(i64::MAX, RateBand::DEFAULT.max).is_err());
        assert!(check_total(-100, Decimal::ONE).is_err());
    }

    /// Reviewer finding F3 (c): a total that rounds to 0 cents is never sold. 24.50 and
    /// 0.50 USD at 0.000001 gave `"total": 0.0` and completed.
    #[test]
    fn a_total_of_zero_cents_is_refused() {
        let tiny = Decimal::new(1, 6);
        assert_eq!(
            check_total(2450, tiny),
            Err(LimitError::Total {
                value_cents: 2450,
                rate: tiny
            })
        );
        assert!(check_total(PRICE_CENTS_MIN, tiny).is_err());
        assert!(check_total(0, Decimal::ONE).is_err());
        // 50 cents at 0.01 is exactly half a cent: rounds to 1 cent, the smallest sale.
        assert_eq!(check_total(50, Decimal::new(1, 2)), Ok(1));
        assert!(check_total(49, Decimal::new(1, 2)).is_err());
    }

    /// Reviewer finding F3 (a): the band is the USD->BRL pair's, not any pair's.
    #[test]
    fn the_default_band_is_the_pairs() {
        let band = RateBand::DEFAULT;
        for refused in ["0.000001", "0.19", "0.49", "50.01", "1000000", "531"] {
            let rate = Decimal::from_str(refused).unwrap_or_default();
            assert!(band.check(rate).is_err(), "{refused} accepted");
        }
        for accepted in ["0.5", "5.31", "6.3", "50"] {
            let rate = Decimal::from_str(accepted).unwrap_or_default();
            assert!(band.check(rate).is_ok(), "{accepted} refused");
        }
    }

    #[test]
    fn only_bands_inside_the_default_are_accepted() {
        let band = |min: &str, max: &str| {
            RateBand::new(
                Decimal::from_str(min).unwrap_or_default(),
                Decimal::from_str(max).unwrap_or_default(),
            )
            .unwrap_or_default()
        };
        assert!(rate_band_is_accepted(&RateBand::DEFAULT));
        assert!(rate_band_is_accepted(&band("1", "10")));
        assert!(!rate_band_is_accepted(&band("0.0000001", "10")));
        assert!(!rate_band_is_accepted(&band("1", "1000001")));
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("0193a5b2-7c1e-7d4f-9a8b-2f6c1d0e9a31"));
        assert!(is_valid_id(&"x".repeat(ID_MAX_LEN)));
        assert!(!is_valid_id(&"x".repeat(ID_MAX_LEN + 1)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
    }

    proptest! {
        /// The class: for every price the catalog check accepts, Fidelity accepts its bonus
        /// and the total computes at every plausible rate; every price it refuses has a bonus
        /// Fidelity refuses.
        #[test]
        fn accepted_prices_have_accepted_bonuses_and_totals(
            value_cents in prop_oneof![
                -1_000i64..1_000,
                0i64..200_000_000,
                PRICE_CENTS_MAX - 1_000..PRICE_CENTS_MAX + 1_000,
                any::<i64>(),
            ],
            mantissa in 1i64..1_000_000_000_000_000,
            scale in 0u32..=15,
        ) {
            let rate = Decimal::new(mantissa, scale);
            match check_price(value_cents) {
                Ok(points) => {
                    prop_assert_eq!(points, bonus_points(value_cents));
                    prop_assert!(check_bonus(points).is_ok());
                    prop_assert!((PRICE_CENTS_MIN..=PRICE_CENTS_MAX).contains(&value_cents));
                    if let Ok(rate) = RateBand::DEFAULT.check(rate) {
                        let total = check_total(value_cents, rate);
                        prop_assert!(total.is_ok(), "{} cents at {}: {:?}", value_cents, rate, total);
                    }
                }
                Err(_) => {
                    prop_assert!(check_bonus(bonus_points(value_cents)).is_err());
                    prop_assert!(!(PRICE_CENTS_MIN..=PRICE_CENTS_MAX).contains(&value_cents));
                }
            }
        }
    }
}
