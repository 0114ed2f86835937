//! The billing period (and trial) of each linked Recurly subscription and how each of its add-ons
//! prices usage, read from Recurly and cached; re-read when a window reaches past the cached end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use billing_bridge_billing::recurly::{RecurlyClient, RecurlyError, Subscription};
use billing_bridge_domain::usage::{Period, Pricing};
use chrono::DateTime;

/// What the reporter needs to know of one Recurly subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Billing {
    /// `None` when Recurly states no period (a subscription not started): usage is dated in
    /// its window, as before the renewal rule.
    pub period: Option<Period>,
    /// Add-on code → its pricing model (`tier_type`).
    pub pricing: HashMap<String, Pricing>,
    pub state: String,
    /// When it was read (the bridge's clock, epoch ms).
    pub read_ms: i64,
}

impl Billing {
    pub fn pricing_of(&self, add_on: &str) -> Pricing {
        self.pricing
            .get(add_on)
            .copied()
            .unwrap_or(Pricing::from_tier_type(None))
    }
}

fn ms(text: Option<&str>) -> Option<i64> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Below this many subscriptions to read, each is read on its own (one call each); from it on,
/// the site's live subscriptions are listed instead, 200 a call, until every one is found.
pub const LIST_FROM: usize = 100;

/// A subscription whose period has ended (by the clock, or for a window reaching past it) is
/// read again, at most this often while Recurly has not renewed it yet.
const REREAD_MS: i64 = 60_000;

/// Reads a Recurly subscription into [`Billing`], as read at `read_ms`.
pub fn billing_of(subscription: &Subscription, read_ms: i64) -> Billing {
    let start = ms(subscription.current_period_started_at.as_deref());
    let end = ms(subscription.current_period_ends_at.as_deref());
    let trial_ends_ms = ms(subscription.trial_ends_at.as_deref());
    // The first period starts when the trial does, or when the subscription was activated.
    let first = ms(subscription.trial_started_at.as_deref())
        .or_else(|| ms(subscription.activated_at.as_deref()))
        .or_else(|| ms(subscription.created_at.as_deref()));
    let period = match (start, end) {
        (Some(start_ms), Some(end_ms)) => Some(Period {
            start_ms,
            end_ms,
            trial_ends_ms,
            // Recurly's timestamps are whole seconds: a later start is a renewal.
            renewed: first.is_some_and(|f| start_ms >= f + 1_000),
        }),
        _ => None,
    };
    Billing {
        period,
        pricing: subscription
            .add_ons
            .iter()
            .filter_map(|a| {
                let code = a.add_on.code.clone()?;
                Some((code, Pricing::from_tier_type(a.tier_type.as_deref())))
            })
            .collect(),
        state: subscription.state.clone(),
        read_ms,
    }
}

impl Billing {
    /// Whether what was read may date a window ending at `reaching_ms`, at `now_ms`: not once
    /// the period has ended (the renewal must be seen), unless it was read since (Recurly has
    /// not renewed yet) less than [`REREAD_MS`] ago.
    pub fn fresh_for(&self, reaching_ms: i64, now_ms: i64) -> bool {
        match self.period {
            None => now_ms - self.read_ms < REREAD_MS,
            Some(p) if reaching_ms.max(now_ms) <= p.end_ms => true,
            Some(p) => self.read_ms > p.end_ms && now_ms - self.read_ms < REREAD_MS,
        }
    }
}

/// The cache, shared by the reporter's runs (one process; another instance keeps its own and
/// reads Recurly for what it lacks).
#[derive(Default)]
pub struct Periods {
    cache: Mutex<HashMap<String, Arc<Billing>>>,
}

impl Periods {
    /// The billing of `id` good for a window ending at `reaching_ms` at `now_ms`: the cached
    /// one while [`Billing::fresh_for`] says so, otherwise read again. `None`: no such
    /// subscription.
    pub async fn get(
        &self,
        recurly: &RecurlyClient,
        id: &str,
        reaching_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Arc<Billing>>, RecurlyError> {
        let cached = self.cache.lock().expect("periods lock").get(id).cloned();
        if let Some(billing) = cached
            && billing.fresh_for(reaching_ms, now_ms)
        {
            return Ok(Some(billing));
        }
        self.read(recurly, id, now_ms).await
    }

    /// Makes the billing of many subscriptions fresh in few calls, for a reporting run that is
    /// about to ask for each (a fresh process knows none): when at least [`LIST_FROM`] of `ids`
    /// are not fresh for a window ending at `reaching_ms`, the site's live subscriptions are
    /// listed, a page at a time, until each of them has been seen or the list ends. What the
    /// list lacks (an expired subscription) is read on its own by [`Periods::get`] later.
    pub async fn prefetch(
        &self,
        recurly: &RecurlyClient,
        ids: &[&str],
        reaching_ms: i64,
        now_ms: i64,
    ) -> Result<(), RecurlyError> {
        let mut wanted: std::collections::HashSet<&str> = {
            let cache = self.cache.lock().expect("periods lock");
            ids.iter()
                .copied()
                .filter(|id| {
                    cache
                        .get(*id)
                        .is_none_or(|b| !b.fresh_for(reaching_ms, now_ms))
                })
                .collect()
        };
        if wanted.len() < LIST_FROM {
            return Ok(());
        }
        let mut next: Option<String> = None;
        loop {
            let (page, after) = recurly
                .site_subscriptions_page("live", next.as_deref())
                .await?;
            for subscription in &page {
                if wanted.remove(subscription.id.as_str()) {
                    self.keep(subscription, now_ms);
                }
            }
            match after {
                Some(after) if !wanted.is_empty() => next = Some(after),
                _ => return Ok(()),
            }
        }
    }

    /// Reads `id` from Recurly now and caches it.
    pub async fn read(
        &self,
        recurly: &RecurlyClient,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Arc<Billing>>, RecurlyError> {
        let Some(subscription) = recurly.subscription(id).await? else {
            self.cache.lock().expect("periods lock").remove(id);
            return Ok(None);
        };
        Ok(Some(self.keep(&subscription, now_ms)))
    }

    /// Caches what a read of the subscription says (a notification's re-read, say).
    pub fn keep(&self, subscription: &Subscription, now_ms: i64) -> Arc<Billing> {
        let billing = Arc::new(billing_of(subscription, now_ms));
        self.cache
            .lock()
            .expect("periods lock")
            .insert(subscription.id.clone(), billing.clone());
        billing
    }

    /// Every cached subscription whose period ends in `(after_ms, until_ms]`: those whose
    /// renewal falls in a window still open.
    pub fn ending_between(&self, after_ms: i64, until_ms: i64) -> Vec<String> {
        self.cache
            .lock()
            .expect("periods lock")
            .iter()
            .filter(|(_, b)| {
                b.period
                    .is_some_and(|p| after_ms < p.end_ms && p.end_ms <= until_ms)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every cached subscription whose period started (after a renewal) in `(after_ms, until_ms]`.
    pub fn renewed_between(&self, after_ms: i64, until_ms: i64) -> Vec<(String, i64)> {
        self.cache
            .lock()
            .expect("periods lock")
            .iter()
            .filter_map(|(id, b)| {
                let p = b.period?;
                (p.renewed && after_ms < p.start_ms && p.start_ms <= until_ms)
                    .then(|| (id.clone(), p.start_ms))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_subscription_and_a_trial_are_read_from_recurlys_fields() {
        let sub: Subscription = serde_json::from_value(serde_json::json!({
            "id": "s1", "uuid": "u", "state": "active",
            "plan": {"id": "p"}, "account": {"id": "a"},
            "created_at": "2026-01-01T00:00:00Z",
            "activated_at": "2026-01-01T00:00:00Z",
            "trial_started_at": "2026-01-01T00:00:00Z",
            "trial_ends_at": "2026-01-15T00:00:00Z",
            "current_period_started_at": "2026-01-15T00:00:00Z",
            "current_period_ends_at": "2026-02-15T00:00:00Z",
            "add_ons": [{"id": "x", "add_on": {"id": "y", "code": "q1"}, "tier_type": "tiered"},
                        {"id": "z", "add_on": {"id": "w", "code": "q2"}, "tier_type": "volume"}]
        }))
        .unwrap();
        let billing = billing_of(&sub, 0);
        let period = billing.period.unwrap();
        let end = period.end_ms;
        assert!(billing.fresh_for(end, end));
        assert!(
            !billing.fresh_for(end + 1, end),
            "a window past the period's end"
        );
        assert!(
            !billing.fresh_for(end, end + 1),
            "the period has ended since"
        );
        let reread = billing_of(&sub, end + 5);
        assert!(
            reread.fresh_for(end + 10, end + 10),
            "read after the end, not renewed yet"
        );
        assert!(!reread.fresh_for(end + 10, end + 5 + REREAD_MS));
        assert!(period.renewed);
        assert_eq!(period.trial_ends_ms, Some(period.start_ms));
        assert_eq!(billing.pricing_of("q1"), Pricing::Tiered);
        assert_eq!(billing.pricing_of("q2"), Pricing::Volume);
        assert_eq!(billing.pricing_of("unknown"), Pricing::Volume);
    }
}
