//! Usage records (reference §6): creation under a subscription's add-on, listing by billing
//! status, look-up by id, and the refusal of future timestamps.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::client::{Recurly, field_of, list_data};

fn usage_path(subscription: &Value) -> String {
    let id = subscription["id"].as_str().unwrap();
    format!("/subscriptions/{id}/add_ons/code-api_calls/usage")
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn usage_is_recorded_with_its_amount_and_found_by_id() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-7f3a", "gold").await;
    let at = Utc::now() - Duration::minutes(10);
    let body = json!({"amount": 1523, "merchant_tag": "rpt:1:consumer-7f3a",
                      "usage_timestamp": timestamp(at),
                      "recording_timestamp": timestamp(at + Duration::minutes(2))});
    let created = r.post(&usage_path(&sub), &body).await.expect(201);
    assert_eq!(created["object"], "usage");
    assert_eq!(created["amount"].as_f64(), Some(1523.0), "{created}");
    assert_eq!(created["merchant_tag"], "rpt:1:consumer-7f3a");
    assert_eq!(created["usage_type"], "price");
    assert_eq!(created["tier_type"], "tiered");
    // §6: `billed_at` is null while unbilled.
    assert!(created["billed_at"].is_null(), "{created}");
    let usage_at: DateTime<Utc> = created["usage_timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("usage_timestamp is a date-time: {created}"));
    assert_eq!(usage_at, at.with_nanosecond_zero());

    let id = created["id"].as_str().unwrap();
    let fetched = r.get(&format!("/usage/{id}")).await.expect(200);
    assert_eq!(fetched["amount"].as_f64(), Some(1523.0));
    assert_eq!(fetched["merchant_tag"], "rpt:1:consumer-7f3a");
    r.get("/usage/nosuchusage")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn usage_without_timestamps_is_dated_now() {
    // §6: omitted timestamps default to the current time [V RDOCS].
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let before = Utc::now() - Duration::seconds(5);
    let created = r
        .post(&usage_path(&sub), &json!({"amount": 7}))
        .await
        .expect(201);
    let after = Utc::now() + Duration::seconds(5);
    for field in ["usage_timestamp", "recording_timestamp"] {
        let at: DateTime<Utc> = created[field]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{field} is set: {created}"));
        assert!(before <= at && at <= after, "{field} {at} is now");
    }
    r.finish().await;
}

#[tokio::test]
async fn usage_lists_default_to_unbilled_and_billing_status_all_shows_everything() {
    // §6: `billing_status` defaults to `unbilled`; nothing is billed in a fresh subscription.
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let path = usage_path(&sub);
    let mut ids = Vec::new();
    for amount in [10, 20, 30] {
        let created = r.post(&path, &json!({"amount": amount})).await.expect(201);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    for query in ["", "?billing_status=unbilled", "?billing_status=all"] {
        let list = r.get(&format!("{path}{query}")).await.expect(200);
        let mut listed = field_of(&list, "id");
        listed.sort();
        assert_eq!(listed, ids, "{path}{query}");
    }
    let billed = r
        .get(&format!("{path}?billing_status=billed"))
        .await
        .expect(200);
    assert!(list_data(&billed).is_empty(), "{billed}");
    r.finish().await;
}

#[tokio::test]
async fn usage_with_a_future_timestamp_is_refused() {
    // §6: future `usage_timestamp`s were refused in v2 [V]; v3 assumed the same [U].
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let path = usage_path(&sub);
    // "even a few seconds ahead from clock skew" (§6), so 30 s ahead is refused too.
    for ahead in [Duration::hours(1), Duration::seconds(30)] {
        let future = timestamp(Utc::now() + ahead);
        r.post(&path, &json!({"amount": 5, "usage_timestamp": future}))
            .await
            .expect_error(422, "validation");
    }
    let all = r
        .get(&format!("{path}?billing_status=all"))
        .await
        .expect(200);
    assert!(list_data(&all).is_empty(), "nothing recorded: {all}");
    r.finish().await;
}

#[tokio::test]
async fn usage_on_an_unknown_subscription_or_add_on_is_404() {
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let id = sub["id"].as_str().unwrap();
    r.post(
        "/subscriptions/nosuchsub/add_ons/code-api_calls/usage",
        &json!({"amount": 1}),
    )
    .await
    .expect_error(404, "not_found");
    r.post(
        &format!("/subscriptions/{id}/add_ons/code-nosuchaddon/usage"),
        &json!({"amount": 1}),
    )
    .await
    .expect_error(404, "not_found");
    r.finish().await;
}

trait WholeSeconds {
    fn with_nanosecond_zero(self) -> Self;
}

impl WholeSeconds for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        chrono::DateTime::from_timestamp(self.timestamp(), 0).expect("valid timestamp")
    }
}

#[tokio::test]
async fn unbilled_usage_can_be_updated_and_deleted() {
    // §6: PUT /usage/{id} answers 200; DELETE answers 204; unbilled records are editable.
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let created = r
        .post(
            &usage_path(&sub),
            &json!({"amount": 10, "merchant_tag": "first"}),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let updated = r
        .put(
            &format!("/usage/{id}"),
            &json!({"amount": 12, "merchant_tag": "second"}),
        )
        .await
        .expect(200);
    assert_eq!(updated["amount"].as_f64(), Some(12.0));
    assert_eq!(updated["merchant_tag"], "second");
    let deleted = r.delete(&format!("/usage/{id}")).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(deleted.body.is_null(), "204 has no body: {}", deleted.body);
    r.get(&format!("/usage/{id}"))
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn usage_posts_are_not_rate_limited() {
    // §1.4: "The Usage API endpoints are not rate-limited to support real-time logging"
    // [V RDOCS]. A budget of 10 requests: 5 go to the set-up, 12 usage posts follow, and a GET
    // afterwards is still within the budget.
    let r = Recurly::start_with(billing_bridge_sandbox::RecurlySettings {
        requests_per_minute: Some(2),
        ..Default::default()
    })
    .await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    for amount in 0..12 {
        r.post(&usage_path(&sub), &json!({"amount": amount}))
            .await
            .expect(201);
    }
    r.get("/plans").await.expect(200);
    r.finish().await;
}

#[tokio::test]
async fn usage_is_listed_by_usage_timestamp_and_filtered_by_time() {
    // §6: `sort` defaults to `usage_timestamp`; §1.2: `order` defaults to `desc`;
    // `begin_time`/`end_time` filter on the sort field.
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let path = usage_path(&sub);
    let base = Utc::now() - Duration::hours(10);
    // Posted out of order, so creation order and usage order differ.
    for (tag, hours) in [("b", 2), ("c", 3), ("a", 1)] {
        let at = timestamp(base + Duration::hours(hours));
        r.post(
            &path,
            &json!({"amount": 1, "merchant_tag": tag, "usage_timestamp": at}),
        )
        .await
        .expect(201);
    }
    let desc = r.get(&path).await.expect(200);
    assert_eq!(field_of(&desc, "merchant_tag"), ["c", "b", "a"]);
    let asc = r.get(&format!("{path}?order=asc")).await.expect(200);
    assert_eq!(field_of(&asc, "merchant_tag"), ["a", "b", "c"]);
    let begin = timestamp(base + Duration::minutes(90));
    let window = r
        .get(&format!("{path}?order=asc&begin_time={begin}"))
        .await
        .expect(200);
    assert_eq!(field_of(&window, "merchant_tag"), ["b", "c"]);
    // §1.2: a value without a time zone is read as UTC.
    let naive = (base + Duration::minutes(90))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let end = timestamp(base + Duration::minutes(150));
    let window = r
        .get(&format!(
            "{path}?order=asc&begin_time={naive}&end_time={end}"
        ))
        .await
        .expect(200);
    assert_eq!(field_of(&window, "merchant_tag"), ["b"]);
    r.finish().await;
}

#[tokio::test]
async fn a_repeated_merchant_tag_is_not_deduplicated() {
    // §6: no server-side uniqueness on `merchant_tag`; only an Idempotency-Key deduplicates.
    let r = Recurly::start().await;
    let sub = r.create_subscription("consumer-1", "gold").await;
    let path = usage_path(&sub);
    let body = json!({"amount": 4, "merchant_tag": "rpt:2024-05-01T00:00Z:consumer-1"});
    let first = r.post(&path, &body).await.expect(201);
    let second = r.post(&path, &body).await.expect(201);
    assert_ne!(first["id"], second["id"]);
    let all = r
        .get(&format!("{path}?billing_status=all"))
        .await
        .expect(200);
    assert_eq!(list_data(&all).len(), 2, "{all}");
    r.finish().await;
}
