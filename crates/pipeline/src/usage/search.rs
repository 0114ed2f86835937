//! The TrafficPoller's adapter to Traceability search (reference §5.2), for `[reporting] source
//! = "search"`: a window's raw transaction summaries in both shapes agents send (§5.3's
//! `transactionSummary` LogEvents, §5.4's `api.transaction.summary` InsightsEvents), paged with
//! `find`, counted by the aggregation core (`domain::transactions`) so each transaction id
//! counts once however often, and in whichever shapes, it is stored or paged. The request
//! follows §5.2's documented example; what §5.2 leaves open (how `find` sorts, the answer's
//! shape, how v4 events are filtered) is guessed here, in one place.
//!
//! A run keeps the ids it has read across its windows (oldest first), so a transaction Amplify
//! holds twice with times in two windows counts once, in the older window, whenever both are
//! read in one run; a run reads the last `repoll_windows` reported windows again, so that holds
//! across runs for windows up to that far apart.
//!
//! Paging is by offset over a sorted result, so an event stored while the window is paged may
//! shift a page: it can be read twice (counted once) or missed by this poll, in which case the
//! window's next re-poll counts it and reports the difference.

use billing_bridge_amplify::{AmplifyClient, AmplifyError};
use billing_bridge_config::BilledCount;
use billing_bridge_domain::transactions::{
    INSIGHTS_SUMMARY, IdSet, Parsed, TRANSACTION_SUMMARY, WindowCounts, parse_event, traffic_rows,
    tx_key,
};
use billing_bridge_domain::usage::{TrafficRow, Window};
use serde_json::{Value, json};

/// The query language version of §5.2's example.
const VERSION: &str = "0.2";
/// The field holding an event's time (§5.2).
const TIME_FIELD: &str = "@event_time";

/// Selects InsightsEvent v4 transaction summaries [I: §5.2 documents filters on §5.3 bodies
/// (`type`, `transactionSummary.*`) only; that v4 events are searchable by their top-level
/// `event` name, with `@event_time` their time, is inferred]. Correct it here.
pub fn insights_summary_filter() -> Value {
    json!({"$match": {"event": [INSIGHTS_SUMMARY]}})
}

/// Selects transaction summaries of both shapes.
fn summaries_filter() -> Value {
    json!({"$or": [
        {"$match": {"type": [TRANSACTION_SUMMARY]}},
        insights_summary_filter(),
    ]})
}

/// One page of a window's transaction summaries (both shapes), oldest first [I: §5.2 names
/// `find`'s `params{limit, offset, sort}` but not the form of `sort`].
pub fn find_query(window: Window, limit: u32, offset: u64) -> Value {
    json!({
        "filters": {
            "$and": [summaries_filter()],
            "$range": {TIME_FIELD: {"gte": window.start_ms, "lt": window.end_ms}}
        },
        "invoke": {
            "field": TIME_FIELD,
            "method": "find",
            "params": {"limit": limit, "offset": offset, "sort": {TIME_FIELD: "asc"}}
        },
        "version": VERSION
    })
}

/// The events of a `find` answer [?: §5.2 does not show it]: an array of events, or an object
/// listing them under `hits` or `results`; each event either the §5.3 body itself or wrapped
/// as `{"body": …}`.
pub fn events_of(answer: &Value) -> Option<Vec<&Value>> {
    let list = match answer {
        Value::Array(items) => items,
        Value::Object(o) => o
            .get("hits")
            .or_else(|| o.get("results"))
            .and_then(Value::as_array)?,
        _ => return None,
    };
    Some(
        list.iter()
            .map(|e| match e.get("body") {
                Some(body) if body.is_object() => body,
                _ => e,
            })
            .collect(),
    )
}

/// Every transaction summary of the window whose id `seen` does not hold yet (it holds the ids
/// of the run's earlier windows), each id once, as rows for the aggregator.
pub async fn poll(
    amplify: &AmplifyClient,
    window: Window,
    billed: BilledCount,
    page_size: u32,
    seen: &mut IdSet,
) -> Result<Vec<TrafficRow>, AmplifyError> {
    let page_size = page_size.max(1);
    let mut counts = WindowCounts::default();
    let mut offset = 0u64;
    let mut unreadable = 0u64;
    loop {
        let answer = amplify
            .traceability_search(&find_query(window, page_size, offset))
            .await?;
        let events = events_of(&answer).ok_or_else(|| AmplifyError::Unexpected {
            operation: "traceability search",
            detail: "expected a list of events".into(),
        })?;
        let read = events.len() as u64;
        for event in events {
            let bytes = serde_json::to_vec(event).unwrap_or_default();
            match parse_event(&bytes) {
                Ok(Parsed::Transaction(tx))
                    if tx.timestamp_ms >= window.start_ms && tx.timestamp_ms < window.end_ms =>
                {
                    if seen.insert(tx_key(&tx.id)) {
                        counts.add(&tx.group, 1);
                    }
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
        offset += read;
        if read < u64::from(page_size) {
            break;
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            window = window.start_ms,
            events = unreadable,
            "traceability search: events without a transaction id or timestamp, or with a field over the size limit, are not counted"
        );
    }
    Ok(traffic_rows(counts.groups(), super::counted(billed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_asks_for_one_page_of_the_half_open_window() {
        let q = find_query(
            Window {
                start_ms: 1000,
                end_ms: 2000,
            },
            500,
            1500,
        );
        assert_eq!(
            q["filters"]["$range"]["@event_time"],
            json!({"gte": 1000, "lt": 2000})
        );
        assert_eq!(q["invoke"]["method"], "find");
        assert_eq!(q["invoke"]["params"]["limit"], 500);
        assert_eq!(q["invoke"]["params"]["offset"], 1500);
        let shapes = &q["filters"]["$and"][0]["$or"];
        assert_eq!(shapes[0]["$match"]["type"], json!(["transactionSummary"]));
        assert_eq!(shapes[1], insights_summary_filter());
    }

    #[test]
    fn answers_list_events_bare_or_wrapped() {
        let e = json!({"type": "transactionSummary"});
        assert_eq!(events_of(&json!([e])).unwrap(), vec![&e]);
        assert_eq!(
            events_of(&json!({"hits": [{"body": e}]})).unwrap(),
            vec![&e]
        );
        assert!(events_of(&json!({"count": 3})).is_none());
    }
}
