//! Money is integer cents in storage and arithmetic, rates are exact decimals, and JSON shows
//! both as decimal numbers; the one rounding rule (half away from zero) and the conversion live
//! in [`ftshop_platform::money`] so every service rounds the same way.

pub use ftshop_platform::money::{Decimal, cents_to_decimal, to_cents};
