//! Exact decimal amounts. Amplify sends prices as floats; Recurly takes decimal strings with at
//! most 9 places for usage (`unit_amount_decimal`) and 2 for plan prices. Amounts are held as
//! whole nanos so that arithmetic and comparisons are exact.

use std::fmt;

use thiserror::Error;

/// Recurly's ceiling for any price (reference §2: 0–1,000,000).
pub const MAX_AMOUNT_NANOS: u64 = 1_000_000 * NANOS_PER_UNIT;
const NANOS_PER_UNIT: u64 = 1_000_000_000;

/// A non-negative amount of money in the plan's currency, exact to 9 decimal places.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount {
    nanos: u64,
}

#[derive(Debug, Error, PartialEq)]
pub enum AmountError {
    #[error("{value} is negative; prices must be zero or more")]
    Negative { value: f64 },
    #[error("{value} is not a finite number")]
    NotFinite { value: f64 },
    #[error("{value} is above the 1,000,000 Recurly accepts")]
    TooLarge { value: f64 },
    #[error("{value} has more than {places} decimal places")]
    TooPrecise { value: f64, places: u32 },
}

impl Amount {
    pub const ZERO: Amount = Amount { nanos: 0 };

    pub fn from_nanos(nanos: u64) -> Self {
        Self { nanos }
    }

    pub fn nanos(self) -> u64 {
        self.nanos
    }

    /// Reads a float as sent by Amplify, refusing what cannot be billed exactly with at most
    /// `places` decimal places (9 for usage prices, 2 for plan prices).
    pub fn from_f64(value: f64, places: u32) -> Result<Self, AmountError> {
        if !value.is_finite() {
            return Err(AmountError::NotFinite { value });
        }
        if value < 0.0 {
            return Err(AmountError::Negative { value });
        }
        let nanos = (value * NANOS_PER_UNIT as f64).round();
        if nanos > MAX_AMOUNT_NANOS as f64 {
            return Err(AmountError::TooLarge { value });
        }
        let nanos = nanos as u64;
        // Floats such as 0.1 are not exact; accept them when the nearest nano is within float
        // noise of the value, and refuse values that really carry more places.
        let noise = value.abs() * 1e-12 + 1e-12;
        if ((nanos as f64 / NANOS_PER_UNIT as f64) - value).abs() > noise {
            return Err(AmountError::TooPrecise { value, places: 9 });
        }
        let step = 10u64.pow(9 - places.min(9));
        if !nanos.is_multiple_of(step) {
            return Err(AmountError::TooPrecise { value, places });
        }
        Ok(Self { nanos })
    }

    /// `self × quantity`, exact; `None` on overflow.
    pub fn times(self, quantity: u64) -> Option<Amount> {
        self.nanos.checked_mul(quantity).map(Amount::from_nanos)
    }

    pub fn plus(self, other: Amount) -> Option<Amount> {
        self.nanos.checked_add(other.nanos).map(Amount::from_nanos)
    }

    /// The amount as a float, for JSON fields Recurly types as numbers (plan prices).
    pub fn as_f64(self) -> f64 {
        self.nanos as f64 / NANOS_PER_UNIT as f64
    }
}

impl fmt::Display for Amount {
    /// Plain decimal without trailing zeros: `0.002`, `10`, `10.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.nanos / NANOS_PER_UNIT;
        let frac = self.nanos % NANOS_PER_UNIT;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_floats_amplify_sends() {
        assert_eq!(Amount::from_f64(0.1, 9).unwrap().to_string(), "0.1");
        assert_eq!(Amount::from_f64(10.99, 2).unwrap().to_string(), "10.99");
        assert_eq!(Amount::from_f64(0.002, 9).unwrap().to_string(), "0.002");
        assert_eq!(Amount::from_f64(2.0, 2).unwrap().to_string(), "2");
        assert_eq!(Amount::from_f64(0.000000001, 9).unwrap().nanos(), 1);
    }

    #[test]
    fn refuses_what_cannot_be_billed_exactly() {
        assert!(matches!(
            Amount::from_f64(-1.0, 9),
            Err(AmountError::Negative { .. })
        ));
        assert!(matches!(
            Amount::from_f64(f64::NAN, 9),
            Err(AmountError::NotFinite { .. })
        ));
        assert!(matches!(
            Amount::from_f64(1_000_001.0, 9),
            Err(AmountError::TooLarge { .. })
        ));
        assert!(matches!(
            Amount::from_f64(0.0000000001, 9),
            Err(AmountError::TooPrecise { .. })
        ));
        assert!(matches!(
            Amount::from_f64(10.999, 2),
            Err(AmountError::TooPrecise { places: 2, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_nine_place_amount_round_trips_through_its_float(nanos in 0u64..=MAX_AMOUNT_NANOS / 1000) {
            let amount = Amount::from_nanos(nanos);
            let parsed = Amount::from_f64(amount.as_f64(), 9).unwrap();
            prop_assert_eq!(parsed, amount);
            let text: f64 = amount.to_string().parse().unwrap();
            prop_assert_eq!(Amount::from_f64(text, 9).unwrap(), amount);
        }
    }
}
