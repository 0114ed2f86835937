//! Usage tiers: checking Amplify's tiers, converting them to billing tiers, and what each side
//! charges for a number of units, so the conversion can be proven to bill the same.

use thiserror::Error;

use crate::amplify::AmplifyTier;
use crate::money::{Amount, AmountError};

/// The largest tier bound Recurly takes; Amplify marks "unlimited" with the same number
/// (reference §3.3 and Recurly §3).
pub const UNBOUNDED_QUANTITY: u64 = 999_999_999;

/// How the units of a period are priced across tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierModel {
    /// Each unit at the price of the tier it falls in (Amplify "graduated", Recurly `tiered`).
    Graduated,
    /// All units at the price of the tier the total reaches (Amplify and Recurly `volume`).
    Volume,
}

/// A billing tier: units up to `ending_quantity` (inclusive; `None` = no end) at `unit_amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTier {
    pub ending_quantity: Option<u64>,
    pub unit_amount: Amount,
}

/// Why Amplify tiers cannot be billed as they are.
#[derive(Debug, Error, PartialEq)]
pub enum TierError {
    #[error("the quota has no tiers")]
    Empty,
    #[error("tier {index} starts at {from}, but tiers must start at 0 or 1")]
    BadStart { index: usize, from: i64 },
    #[error(
        "tier {index} starts at {from}, but the tier before it ends at {previous_to}: tiers must follow each other without gaps or overlaps"
    )]
    NotContiguous {
        index: usize,
        from: i64,
        previous_to: i64,
    },
    #[error("tier {index} ends at {to}, before it starts at {from}")]
    Inverted { index: usize, from: i64, to: i64 },
    #[error(
        "tier {index} ends at {to}, past the {UNBOUNDED_QUANTITY} Recurly accepts; only the last tier may be unlimited"
    )]
    EndTooLarge { index: usize, to: i64 },
    #[error(
        "tier {index} charges a flat fee of {flat_fee}; Recurly usage tiers have no per-tier flat fee, so this plan would be billed wrong"
    )]
    FlatFee { index: usize, flat_fee: f64 },
    #[error("tier {index} cost: {source}")]
    Cost { index: usize, source: AmountError },
    #[error(
        "the limit of {value} units is outside what a Recurly tier can end at (0 to {})",
        UNBOUNDED_QUANTITY - 1
    )]
    IncludedUnits { value: i64 },
    #[error("overage price: {0}")]
    OverageCost(AmountError),
}

/// Converts Amplify tiers to billing tiers, refusing anything that would bill differently.
pub fn billing_tiers(tiers: &[AmplifyTier]) -> Result<Vec<PriceTier>, TierError> {
    if tiers.is_empty() {
        return Err(TierError::Empty);
    }
    let mut converted = Vec::with_capacity(tiers.len());
    for (index, tier) in tiers.iter().enumerate() {
        match index {
            0 if tier.from != 0 && tier.from != 1 => {
                return Err(TierError::BadStart {
                    index,
                    from: tier.from,
                });
            }
            0 => {}
            _ => {
                let previous_to = tiers[index - 1].to;
                if tier.from != previous_to + 1 {
                    return Err(TierError::NotContiguous {
                        index,
                        from: tier.from,
                        previous_to,
                    });
                }
            }
        }
        if tier.to < tier.from || tier.to < 1 {
            return Err(TierError::Inverted {
                index,
                from: tier.from,
                to: tier.to,
            });
        }
        if tier.flat_fee != 0.0 {
            return Err(TierError::FlatFee {
                index,
                flat_fee: tier.flat_fee,
            });
        }
        let last = index + 1 == tiers.len();
        // The last tier is open-ended in Recurly whatever Amplify's `to` says (Recurly reference
        // §3: leave it empty): units past it are not blocked by billing, and are priced as the
        // last tier, as Amplify's own rules price them.
        let ending_quantity = if last {
            None
        } else if tier.to >= UNBOUNDED_QUANTITY as i64 {
            return Err(TierError::EndTooLarge { index, to: tier.to });
        } else {
            Some(tier.to as u64)
        };
        let unit_amount =
            Amount::from_f64(tier.cost, 9).map_err(|source| TierError::Cost { index, source })?;
        converted.push(PriceTier {
            ending_quantity,
            unit_amount,
        });
    }
    Ok(converted)
}

/// A Standard quota's loose limit with an overage price (reference §3.3) as graduated billing
/// tiers: the first `included` units of a period free, each one past them at `overage`. With
/// nothing included it is one open tier at `overage`. Recurly tiers end at 1 or more, so the
/// free tier exists only when `included` > 0.
pub fn overage_tiers(included: i64, overage: f64) -> Result<Vec<PriceTier>, TierError> {
    if !(0..UNBOUNDED_QUANTITY as i64).contains(&included) {
        return Err(TierError::IncludedUnits { value: included });
    }
    let unit_amount = Amount::from_f64(overage, 9).map_err(TierError::OverageCost)?;
    let mut tiers = Vec::with_capacity(2);
    if included > 0 {
        tiers.push(PriceTier {
            ending_quantity: Some(included as u64),
            unit_amount: Amount::ZERO,
        });
    }
    tiers.push(PriceTier {
        ending_quantity: None,
        unit_amount,
    });
    Ok(tiers)
}

/// What a loose limit with overages charges for `units` in one period, by Amplify's rule:
/// `max(0, units - included) × overage`. Exact in nanos; `None` if it overflows.
pub fn overage_charge(included: u64, overage: Amount, units: u64) -> Option<Amount> {
    overage.times(units.saturating_sub(included))
}

/// What Amplify charges for `units` under its own tier rules (reference §3.3: graduated adds
/// each reached tier's flat fee; volume prices every unit at the final tier plus its flat fee).
/// Exact in nanos; `None` if the amount overflows or the tiers do not cover `units`.
pub fn amplify_charge(model: TierModel, tiers: &[AmplifyTier], units: u64) -> Option<Amount> {
    if units == 0 {
        return Some(Amount::ZERO);
    }
    let cost = |t: &AmplifyTier| Amount::from_f64(t.cost, 9).ok();
    let fee = |t: &AmplifyTier| Amount::from_f64(t.flat_fee, 9).ok();
    match model {
        TierModel::Graduated => {
            let mut total = Amount::ZERO;
            for tier in tiers {
                let start = tier.from.max(1) as u64;
                if units < start {
                    break;
                }
                let end = (tier.to as u64).min(units);
                total = total
                    .plus(cost(tier)?.times(end - start + 1)?)?
                    .plus(fee(tier)?)?;
            }
            Some(total)
        }
        TierModel::Volume => {
            let tier = tiers
                .iter()
                .find(|t| units >= t.from.max(1) as u64 && units <= t.to as u64)?;
            cost(tier)?.times(units)?.plus(fee(tier)?)
        }
    }
}

/// What the billing platform charges for `units` under converted tiers (Recurly `tiered` and
/// `volume` semantics).
pub fn billing_charge(model: TierModel, tiers: &[PriceTier], units: u64) -> Option<Amount> {
    let end = |t: &PriceTier| t.ending_quantity.unwrap_or(u64::MAX);
    match model {
        TierModel::Graduated => {
            let mut total = Amount::ZERO;
            let mut start = 1u64;
            for tier in tiers {
                if units < start {
                    break;
                }
                let stop = end(tier).min(units);
                total = total.plus(tier.unit_amount.times(stop - start + 1)?)?;
                start = end(tier).saturating_add(1);
            }
            Some(total)
        }
        TierModel::Volume => {
            if units == 0 {
                return Some(Amount::ZERO);
            }
            let tier = tiers.iter().find(|t| units <= end(t))?;
            tier.unit_amount.times(units)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tier(from: i64, to: i64, cost: f64, flat_fee: f64) -> AmplifyTier {
        AmplifyTier {
            from,
            to,
            cost,
            flat_fee,
        }
    }

    /// The worked example of the Amplify docs (reference §3.3): 5001 transactions cost
    /// $5530.50 graduated and $2520.50 volume.
    #[test]
    fn amplify_charges_match_the_documented_worked_example() {
        let tiers = [
            tier(1, 500, 2.0, 0.0),
            tier(501, 5000, 1.0, 10.0),
            tier(5001, 999_999_999, 0.5, 20.0),
        ];
        let dollars = |a: Amount| a.to_string();
        assert_eq!(
            dollars(amplify_charge(TierModel::Graduated, &tiers, 5001).unwrap()),
            "5530.5"
        );
        assert_eq!(
            dollars(amplify_charge(TierModel::Volume, &tiers, 5001).unwrap()),
            "2520.5"
        );
    }

    #[test]
    fn a_tier_with_a_flat_fee_is_refused_rather_than_billed_wrong() {
        let tiers = [tier(1, 500, 2.0, 0.0), tier(501, 999_999_999, 1.0, 10.0)];
        assert_eq!(
            billing_tiers(&tiers),
            Err(TierError::FlatFee {
                index: 1,
                flat_fee: 10.0
            })
        );
    }

    #[test]
    fn gaps_overlaps_and_bad_bounds_are_refused_with_the_tier_named() {
        assert_eq!(billing_tiers(&[]), Err(TierError::Empty));
        assert!(matches!(
            billing_tiers(&[tier(1, 10, 1.0, 0.0), tier(12, 20, 1.0, 0.0)]),
            Err(TierError::NotContiguous { index: 1, .. })
        ));
        assert!(matches!(
            billing_tiers(&[tier(1, 10, 1.0, 0.0), tier(10, 20, 1.0, 0.0)]),
            Err(TierError::NotContiguous { index: 1, .. })
        ));
        assert!(matches!(
            billing_tiers(&[tier(5, 10, 1.0, 0.0)]),
            Err(TierError::BadStart { .. })
        ));
        assert!(matches!(
            billing_tiers(&[tier(1, 0, 1.0, 0.0)]),
            Err(TierError::Inverted { .. })
        ));
        assert!(matches!(
            billing_tiers(&[
                tier(1, 1_000_000_000, 1.0, 0.0),
                tier(1_000_000_001, 2_000_000_000, 1.0, 0.0)
            ]),
            Err(TierError::EndTooLarge { index: 0, .. })
        ));
        assert!(matches!(
            billing_tiers(&[tier(1, 10, -1.0, 0.0)]),
            Err(TierError::Cost { index: 0, .. })
        ));
    }

    #[test]
    fn the_last_tier_is_open_ended_even_when_amplify_gives_it_an_end() {
        let converted =
            billing_tiers(&[tier(1, 100, 1.0, 0.0), tier(101, 5_000, 0.5, 0.0)]).unwrap();
        assert_eq!(converted[0].ending_quantity, Some(100));
        assert_eq!(converted[1].ending_quantity, None);
    }

    #[test]
    fn the_last_unlimited_tier_has_no_end() {
        let converted =
            billing_tiers(&[tier(1, 100, 0.0, 0.0), tier(101, 999_999_999, 0.002, 0.0)]).unwrap();
        assert_eq!(converted[0].ending_quantity, Some(100));
        assert_eq!(converted[1].ending_quantity, None);
        assert_eq!(converted[1].unit_amount.to_string(), "0.002");
    }

    /// Random contiguous, fee-free tiers: (widths, costs in nanos); the last tier is unlimited.
    fn fee_free_tiers() -> impl Strategy<Value = Vec<AmplifyTier>> {
        prop::collection::vec((1i64..5_000, 0u64..5_000_000_000), 1..6).prop_map(|spec| {
            let mut from = 1;
            let count = spec.len();
            spec.into_iter()
                .enumerate()
                .map(|(i, (width, nanos))| {
                    let to = if i + 1 == count {
                        999_999_999
                    } else {
                        from + width - 1
                    };
                    let t = tier(from, to, nanos as f64 / 1e9, 0.0);
                    from = to + 1;
                    t
                })
                .collect()
        })
    }

    #[test]
    fn a_loose_limit_becomes_a_free_tier_then_the_overage_price() {
        let tiers = overage_tiers(1000, 0.05).unwrap();
        assert_eq!(
            tiers,
            [
                PriceTier {
                    ending_quantity: Some(1000),
                    unit_amount: Amount::ZERO
                },
                PriceTier {
                    ending_quantity: None,
                    unit_amount: Amount::from_f64(0.05, 9).unwrap()
                }
            ]
        );
        let charge = |n| {
            billing_charge(TierModel::Graduated, &tiers, n)
                .unwrap()
                .to_string()
        };
        assert_eq!(charge(0), "0");
        assert_eq!(charge(1000), "0");
        assert_eq!(charge(1001), "0.05");
        assert_eq!(charge(1250), "12.5");
    }

    #[test]
    fn nothing_included_is_one_open_tier_and_impossible_limits_are_refused() {
        let tiers = overage_tiers(0, 2.0).unwrap();
        assert_eq!(tiers.len(), 1);
        assert_eq!(tiers[0].ending_quantity, None);
        assert_eq!(
            overage_tiers(-1, 1.0),
            Err(TierError::IncludedUnits { value: -1 })
        );
        assert_eq!(
            overage_tiers(UNBOUNDED_QUANTITY as i64, 1.0),
            Err(TierError::IncludedUnits {
                value: UNBOUNDED_QUANTITY as i64
            })
        );
        assert!(matches!(
            overage_tiers(10, 0.0000000001),
            Err(TierError::OverageCost(_))
        ));
    }

    proptest! {
        /// What Recurly charges under the overage tiers is exactly `max(0, n - N) × P`.
        #[test]
        fn overage_tiers_bill_only_the_units_past_the_limit(included in 0i64..1_000_000, nanos in 0u64..5_000_000_000, units in 0u64..3_000_000) {
            let overage = nanos as f64 / 1e9;
            let tiers = overage_tiers(included, overage).unwrap();
            // Computed independently of the tiers: whole nanos times the units past the limit.
            let past = units.saturating_sub(included as u64);
            let expected = Amount::from_nanos(nanos * past);
            prop_assert_eq!(billing_charge(TierModel::Graduated, &tiers, units), Some(expected));
            prop_assert_eq!(overage_charge(included as u64, Amount::from_nanos(nanos), units), Some(expected));
        }

        /// Converted tiers bill exactly what Amplify's own rules charge, for any usage.
        #[test]
        fn converted_tiers_bill_what_amplify_charges(tiers in fee_free_tiers(), units in 0u64..40_000, volume in any::<bool>()) {
            let model = if volume { TierModel::Volume } else { TierModel::Graduated };
            let converted = billing_tiers(&tiers).unwrap();
            prop_assert_eq!(converted.len(), tiers.len());
            prop_assert_eq!(billing_charge(model, &converted, units), amplify_charge(model, &tiers, units));
        }

        /// Any non-zero flat fee anywhere makes the conversion fail, naming that tier.
        #[test]
        fn any_flat_fee_is_refused(mut tiers in fee_free_tiers(), pick in any::<prop::sample::Index>(), fee in 0.01f64..100.0) {
            let index = pick.index(tiers.len());
            tiers[index].flat_fee = fee;
            prop_assert_eq!(billing_tiers(&tiers), Err(TierError::FlatFee { index, flat_fee: fee }));
        }
    }
}
