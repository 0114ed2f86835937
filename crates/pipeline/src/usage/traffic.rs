//! The TrafficPoller's adapter to Amplify Traceability: the one place that knows how a window's
//! traffic is asked for and read. Its contract is partly inferred (reference §5.1, §7.1): the
//! `groupBy` fields and whether `to` is exclusive. Correct a guess here and nothing else
//! changes.

use billing_bridge_amplify::{AmplifyClient, AmplifyError, SummaryQuery};
use billing_bridge_config::BilledCount;
use billing_bridge_domain::usage::{TrafficRow, Window};
use serde::Deserialize;

/// Rows per (subscription, asset resource) [I: reference §5.1 "per-subscription billing query"].
/// The name is a group key too: agents write `"unknown"` for a reference they could not resolve
/// (§5.3), so grouping by id alone would merge every such resource into one row, billed under
/// whichever name came with it; with the name each row can be matched by it.
pub const GROUP_BY: [&str; 3] = ["subscriptionId", "assetResourceId", "assetResourceName"];

/// Whether the summary's `to` excludes its instant [?]. Windows are half-open `[start, end)`;
/// if `to` turns out inclusive, this asks up to `end - 1` so back-to-back windows never count
/// an event twice.
const TO_IS_EXCLUSIVE: bool = true;

/// What the agents write when a reference could not be resolved (reference §5.3).
pub const UNKNOWN: &str = "unknown";

/// The fields of a summary row the bridge reads (reference §5.1's captured response).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub asset_resource_id: Option<String>,
    #[serde(default)]
    pub asset_resource_name: Option<String>,
    #[serde(default)]
    pub total_count: Option<u64>,
    #[serde(default)]
    pub success_count: Option<u64>,
}

pub fn summary_query(window: Window) -> SummaryQuery {
    SummaryQuery {
        from_ms: window.start_ms,
        to_ms: if TO_IS_EXCLUSIVE {
            window.end_ms
        } else {
            window.end_ms - 1
        },
        group_by: GROUP_BY.iter().map(|f| (*f).to_owned()).collect(),
        query: None,
    }
}

/// A summary row as the aggregator sees it: the resource by its id (`assetResourceId`) and by
/// its name (`assetResourceName`, the resource's own name as agents send it, reference §5.4),
/// both kept so the aggregator can try the id first.
pub fn traffic_row(row: SummaryRow, billed: BilledCount) -> TrafficRow {
    let units = match billed {
        BilledCount::Total => row.total_count,
        BilledCount::Success => row.success_count,
    }
    .unwrap_or(0);
    let present = |v: Option<String>| v.filter(|s| !s.is_empty() && s != UNKNOWN);
    TrafficRow {
        subscription_id: present(row.subscription_id).unwrap_or_else(|| UNKNOWN.into()),
        resource_id: present(row.asset_resource_id),
        resource_name: present(row.asset_resource_name),
        quota: None,
        units,
    }
}

/// Every row of a window with units, through the process-wide Amplify limiter.
pub async fn poll(
    amplify: &AmplifyClient,
    window: Window,
    billed: BilledCount,
    page_size: u32,
) -> Result<Vec<TrafficRow>, AmplifyError> {
    let rows: Vec<SummaryRow> = amplify
        .traceability_summary(&summary_query(window), page_size)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| traffic_row(row, billed))
        .filter(|row| row.units > 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_the_resource_id_and_name_with_the_configured_count() {
        let row: SummaryRow = serde_json::from_value(serde_json::json!({
            "subscriptionId": "s1", "assetResourceId": "r-id", "assetResourceName": "pets",
            "totalCount": 9, "successCount": 7, "failureCount": 2, "proxyId": "x"
        }))
        .unwrap();
        let total = traffic_row(row, BilledCount::Total);
        assert_eq!(
            (
                total.subscription_id.as_str(),
                total.resource_id.as_deref(),
                total.resource_name.as_deref(),
                total.units
            ),
            ("s1", Some("r-id"), Some("pets"), 9)
        );
        let row: SummaryRow = serde_json::from_value(serde_json::json!({
            "assetResourceId": "r-id", "assetResourceName": "", "successCount": 7
        }))
        .unwrap();
        let success = traffic_row(row, BilledCount::Success);
        assert_eq!(
            (
                success.subscription_id.as_str(),
                success.resource_id.as_deref(),
                success.resource_name.as_deref(),
                success.units
            ),
            (UNKNOWN, Some("r-id"), None, 7)
        );
    }

    #[test]
    fn the_query_covers_the_half_open_window() {
        let q = summary_query(Window {
            start_ms: 1000,
            end_ms: 2000,
        });
        assert_eq!((q.from_ms, q.to_ms), (1000, 2000));
        assert_eq!(
            q.group_by,
            ["subscriptionId", "assetResourceId", "assetResourceName"]
        );
    }
}
