//! Money and exchange rates as exact decimals, end to end (docs/design.md, "Money").
//!
//! - Amounts are integer cents (`i64`, hundredths of the currency) in storage and arithmetic,
//!   and [`Decimal`] (`rust_decimal`) when shown: `4990` cents is `49.90`.
//! - Rates are [`Decimal`] (BRL per USD), never `f64`, and must lie in a [`RateBand`].
//! - **One rounding rule**, [`ROUNDING`]: half away from zero, to whole cents for money
//!   (`24.50 × 5.31 = 130.095 → 130.10`) and to whole points for the bonus
//!   (`49.50 → 50 points`). [`convert`] computes the product exactly in integers and rounds
//!   once, so no binary fraction ever decides a cent.
//! - JSON keeps `rate`, `total` and `value` as JSON numbers (the API contract shows
//!   `"rate": 5.31`): [`json`] writes the shortest number that reads back as the same decimal
//!   and reads numbers through their shortest decimal text, which is exact for up to 15
//!   significant digits (every price and rate in this suite has far fewer).
//!
//! Rounding half away from zero is the "commercial rounding" of retail receipts; it is
//! `RoundingStrategy::MidpointAwayFromZero` in `rust_decimal` and `ROUND_HALF_UP` in Java's
//! `BigDecimal` and Python's `decimal`.

use std::str::FromStr;

pub use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy;
use rust_decimal::prelude::ToPrimitive;

/// The suite's one rounding rule: to the nearest unit, and a tie (exactly half) away from zero.
pub const ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// `cents` as a decimal amount of the currency with two decimals (`4990` → `49.90`).
pub fn cents_to_decimal(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// An amount of the currency in whole cents, rounded by [`ROUNDING`] (`130.095` → `13010`).
/// `None` when it does not fit an `i64`.
pub fn to_cents(amount: Decimal) -> Option<i64> {
    amount
        .round_dp_with_strategy(2, ROUNDING)
        .checked_mul(Decimal::ONE_HUNDRED)?
        .to_i64()
}

/// `value_cents × rate` in cents of the target currency, rounded once by [`ROUNDING`]
/// (`2450` USD cents at `5.31` → `13010` BRL cents, from the exact `13009.5`).
///
/// The product is computed exactly in 128-bit integers (cents × the rate's mantissa, then one
/// division by the rate's power of ten); `None` when it does not fit (never for a price below
/// 10^12 cents and a rate of up to 17 significant digits) or the result exceeds `i64`.
pub fn convert(value_cents: i64, rate: Decimal) -> Option<i64> {
    let rate = rate.normalize();
    let product = i128::from(value_cents).checked_mul(rate.mantissa())?;
    let divisor = 10i128.checked_pow(rate.scale())?;
    let rounded = div_round(product, divisor);
    i64::try_from(rounded).ok()
}

/// Bonus points for a price: `round(value)` in whole currency units by [`ROUNDING`]
/// (`4950` cents → 50 points, `4949` → 49, `-50` → -1).
pub fn bonus_points(value_cents: i64) -> i64 {
    // i64 / 100 fits; the quotient and remainder are exact.
    i64::try_from(div_round(i128::from(value_cents), 100)).unwrap_or(i64::MAX)
}

/// `numerator / divisor` rounded by [`ROUNDING`]; `divisor` is positive.
fn div_round(numerator: i128, divisor: i128) -> i128 {
    let quotient = numerator / divisor;
    let remainder = numerator % divisor;
    // |remainder| >= divisor / 2, written without a division so odd divisors stay exact.
    if remainder.unsigned_abs() * 2 >= divisor.unsigned_abs() {
        quotient + numerator.signum()
    } else {
        quotient
    }
}

/// Significant digits a rate keeps: what a JSON number (an `f64`) carries exactly. Real rates
/// have 4 to 6.
pub const RATE_DIGITS: u32 = 15;

/// The plausible range of an exchange rate, both ends included. A rate outside it (or not
/// positive) is refused where it enters the suite: Exchange treats an upstream answer outside it
/// as a failed fetch, so its stale / last-known-good path answers instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBand {
    pub min: Decimal,
    pub max: Decimal,
}

/// Why a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate {0} is not a finite decimal number")]
    NotANumber(String),
    #[error("rate {0} is too large or too small for a decimal, far outside any plausible band")]
    Unrepresentable(String),
    #[error("rate {rate} is outside the plausible band {min}..={max}")]
    OutOfBand {
        rate: Decimal,
        min: Decimal,
        max: Decimal,
    },
}

impl RateBand {
    /// `0.5..=50` BRL per USD, the suite's one pair. USD/BRL has traded between about 0.8
    /// (1994, the real's launch) and 6.3 (2024); the band leaves more than 6x of room above
    /// and below that history, yet refuses the errors a wider band let through (reviewer
    /// finding F3: `0.000001` sold a 24.50 USD order for 0.00 BRL, `1,000,000` sold
    /// 1,000,000.49 USD for 10^12 BRL): a scale error (per 100, per 1,000,000), a unit error
    /// (cents) and the inverted pair (BRL→USD, about 0.19). Exchange may narrow it
    /// (`--rate-min/--rate-max`), never widen it; a jump inside the band is Exchange's jump
    /// guard's business.
    pub const DEFAULT: RateBand = RateBand {
        min: Decimal::from_parts(5, 0, 0, false, 1),
        max: Decimal::from_parts(50, 0, 0, false, 0),
    };

    /// A band from its ends; fails unless `0 < min <= max`.
    pub fn new(min: Decimal, max: Decimal) -> Result<Self, String> {
        if min <= Decimal::ZERO || min > max {
            return Err(format!(
                "the rate band {min}..={max} must have 0 < min <= max"
            ));
        }
        Ok(Self { min, max })
    }

    /// `rate` when it lies in the band, rounded by [`ROUNDING`] to [`RATE_DIGITS`] significant
    /// digits, so the rate a JSON number carries is the rate held and the rate used.
    pub fn check(&self, rate: Decimal) -> Result<Decimal, RateError> {
        if (self.min..=self.max).contains(&rate) {
            Ok(rate
                .round_sf_with_strategy(RATE_DIGITS, ROUNDING)
                .unwrap_or(rate)
                .normalize())
        } else {
            Err(RateError::OutOfBand {
                rate,
                min: self.min,
                max: self.max,
            })
        }
    }

    /// A rate given as an `f64` (a JSON number, the simulated market), read through its
    /// shortest decimal text, then checked. NaN and infinities are [`RateError::NotANumber`],
    /// finite values no decimal can hold (`1e300`) [`RateError::Unrepresentable`].
    pub fn check_f64(&self, rate: f64) -> Result<Decimal, RateError> {
        if !rate.is_finite() {
            return Err(RateError::NotANumber(rate.to_string()));
        }
        let decimal = decimal_from_f64(rate)
            .ok_or_else(|| RateError::Unrepresentable(format!("{rate:e}")))?;
        self.check(decimal)
    }
}

impl Default for RateBand {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The decimal an `f64` was written as: its shortest round-trip text (`5.31` for the double
/// nearest 5.31), parsed exactly. `None` for NaN, infinities and magnitudes beyond
/// [`Decimal::MAX`].
pub fn decimal_from_f64(value: f64) -> Option<Decimal> {
    if !value.is_finite() {
        return None;
    }
    let text = value.to_string();
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .ok()
}

/// A decimal as the nearest `f64`, for JSON numbers and gauges: its text parsed by the
/// correctly rounded `f64` parser, so the shortest form of the result is the decimal itself
/// (for up to 15 significant digits).
pub fn decimal_to_f64(value: Decimal) -> f64 {
    f64::from_str(&value.to_string()).unwrap_or(f64::NAN)
}

/// `#[serde(with = "ftshop_platform::money::json")]`: a [`Decimal`] as a JSON number.
///
/// Writes the `f64` whose shortest form is the decimal (`130.10` → `130.1`, `5.31` → `5.31`);
/// reads JSON numbers only (integers or decimals, through [`decimal_from_f64`]), so a string
/// such as `"1.00"` is refused like any other type error.
pub mod json {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{Decimal, decimal_from_f64, decimal_to_f64};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(decimal_to_f64(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }

    struct NumberVisitor;

    impl Visitor<'_> for NumberVisitor {
        type Value = Decimal;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a decimal number")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            decimal_from_f64(v)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &"a decimal number"))
        }
    }

    /// The same for `Option<Decimal>` (`null` is `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Decimal;

        pub fn serialize<S: Serializer>(
            value: &Option<Decimal>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Decimal>, D::Error> {
            #[derive(Deserialize)]
            struct Number(#[serde(with = "super")] Decimal);
            Ok(Option::<Number>::deserialize(deserializer)?.map(|Number(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn the_issue_example_rounds_half_away_from_zero() {
        // 24.50 × 5.31 = 130.095 exactly; in f64 it came out as 130.09.
        assert_eq!(convert(2450, dec("5.31")), Some(13010));
        assert_eq!(cents_to_decimal(13010).to_string(), "130.10");
        assert_eq!(to_cents(dec("130.095")), Some(13010));
        assert_eq!(to_cents(dec("-130.095")), Some(-13010));
        assert_eq!(to_cents(dec("130.0949")), Some(13009));
        assert_eq!(convert(4990, dec("5.3123")), Some(26508));
        assert_eq!(convert(-2450, dec("5.31")), Some(-13010));
    }

    #[test]
    fn overflow_is_refused_not_saturated() {
        assert_eq!(convert(i64::MAX, dec("1000000")), None);
        assert_eq!(convert(2450, Decimal::MAX), None);
        assert_eq!(to_cents(Decimal::MAX), None);
    }

    #[test]
    fn bonus_points_round_by_the_same_rule() {
        assert_eq!(bonus_points(4990), 50);
        assert_eq!(bonus_points(4949), 49);
        assert_eq!(bonus_points(4950), 50);
        assert_eq!(bonus_points(100), 1);
        assert_eq!(bonus_points(49), 0);
        assert_eq!(bonus_points(-50), -1);
    }

    #[test]
    fn the_band_refuses_absurd_rates() {
        let band = RateBand::DEFAULT;
        assert_eq!(band.check_f64(5.31), Ok(dec("5.31")));
        assert_eq!(band.check_f64(0.5), Ok(dec("0.5")));
        assert_eq!(band.check_f64(50.0), Ok(dec("50")));
        for absurd in [
            1e300,
            1e-9,
            f64::NAN,
            f64::INFINITY,
            -5.31,
            0.0,
            1.000001e6,
            0.000001,
            1e6,
            0.4999,
            50.01,
        ] {
            assert!(band.check_f64(absurd).is_err(), "{absurd} accepted");
        }
        // Past 15 significant digits a JSON number cannot carry it: rounded once, at the edge.
        assert_eq!(
            band.check(dec("5.123456789012345678")),
            Ok(dec("5.12345678901235"))
        );
        assert!(RateBand::new(Decimal::ZERO, Decimal::ONE).is_err());
        assert!(RateBand::new(Decimal::TEN, Decimal::ONE).is_err());
    }

    #[test]
    fn json_numbers_stay_numbers_and_exact() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Answer {
            #[serde(with = "json")]
            rate: Decimal,
            #[serde(with = "json::option")]
            total: Option<Decimal>,
        }
        let answer = Answer {
            rate: dec("5.31"),
            total: Some(cents_to_decimal(13010)),
        };
        let text = serde_json::to_string(&answer).unwrap_or_default();
        assert_eq!(text, r#"{"rate":5.31,"total":130.1}"#);
        let back: Answer = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.rate, dec("5.31"));
        assert_eq!(back.total.map(|t| t.normalize()), Some(dec("130.1")));
        assert!(serde_json::from_str::<Answer>(r#"{"rate":"5.31","total":null}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{"rate":1e300,"total":null}"#).is_err());
    }

    /// The exact reference: `cents × mantissa / 10^scale` in integers, rounded half away from
    /// zero by comparing twice the remainder with the divisor.
    fn reference(cents: i64, mantissa: i64, scale: u32) -> i128 {
        let exact = i128::from(cents) * i128::from(mantissa);
        let divisor = 10i128.pow(scale);
        let (q, r) = (exact.div_euclid(divisor), exact.rem_euclid(divisor));
        // Floor division: the candidates are q and q + 1; a tie goes away from zero.
        match (2 * r).cmp(&divisor) {
            std::cmp::Ordering::Less => q,
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal if exact >= 0 => q + 1,
            std::cmp::Ordering::Equal => q,
        }
    }

    proptest! {
        #[test]
        fn convert_matches_the_exact_reference(
            cents in -1_000_000_000_000i64..1_000_000_000_000,
            mantissa in 1i64..1_000_000_000_000,
            scale in 0u32..=12,
        ) {
            let rate = Decimal::new(mantissa, scale);
            let got = convert(cents, rate).map(i128::from);
            // Past i64 cents there is no answer, never a saturated one.
            let expected = i64::try_from(reference(cents, mantissa, scale)).ok().map(i128::from);
            prop_assert_eq!(got, expected);
            // The same through rust_decimal's own rounding of the exact product.
            let via_decimal = cents_to_decimal(cents)
                .checked_mul(rate)
                .and_then(to_cents)
                .map(i128::from);
            prop_assert_eq!(got, via_decimal);
        }

        #[test]
        fn half_cents_always_round_away_from_zero(cents in -1_000_000_000i64..1_000_000_000) {
            // (2 × cents + 1) / 2 is exactly half a cent above or below a whole cent.
            let half = Decimal::new(2 * cents + 1, 0);
            let got = convert(1, half / Decimal::TWO);
            let expected = if cents >= 0 { cents + 1 } else { cents };
            prop_assert_eq!(got, Some(expected));
        }

        #[test]
        fn json_round_trips_rates_and_totals(mantissa in 1i64..1_000_000_000_000_000 / 1000, scale in 0u32..=10) {
            let value = Decimal::new(mantissa, scale);
            let text = serde_json::to_string(&DecimalNumber(value)).unwrap_or_default();
            let back: DecimalNumber = serde_json::from_str(&text).unwrap_or(DecimalNumber(Decimal::ZERO));
            prop_assert_eq!(back.0, value.normalize(), "{}", text);
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct DecimalNumber(#[serde(with = "json")] Decimal);
}
