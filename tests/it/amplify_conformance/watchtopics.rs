//! WatchTopics (§4.5): created through the management API with `spec.filters`, every matching
//! change retained with an increasing sequence id as a thin event (no spec), read with
//! `GET /events/management/v1/watchtopics/{name}?sort=sequenceID&query=sequenceID>N`.

use serde_json::{Value, json};

use super::client::{Amplify, Resp, assert_central_error};

const TOPIC: &str = "billing-events";

fn topic_body(name: &str, filters: Value) -> Value {
    json!({"group": "management", "apiVersion": "v1", "kind": "WatchTopic", "name": name,
           "title": "billing events", "spec": {"description": "plans and subscriptions", "filters": filters}})
}

/// The filters billing-bridge uses: plans and subscriptions, every change type.
fn billing_filters() -> Value {
    json!([
        {"group": "catalog", "kind": "ProductPlan", "name": "*", "type": ["created", "updated", "deleted"]},
        {"group": "catalog", "kind": "Subscription", "name": "*", "type": ["created", "updated", "deleted"]}
    ])
}

/// `GET {CENTRAL}/events/management/v1/watchtopics/{name}` with `query` parameters (§4.5).
async fn read(amp: &Amplify, name: &str, query: &[(&str, &str)]) -> Resp {
    let url = amp
        .sb
        .at(&format!("/amplify/events/management/v1/watchtopics/{name}"));
    amp.send(amp.sb.http.get(url).query(query)).await
}

async fn events_after(amp: &Amplify, after: i64) -> Vec<Value> {
    let after = format!("sequenceID>{after}");
    let body = read(
        amp,
        TOPIC,
        &[
            ("sort", "sequenceID"),
            ("query", &after),
            ("pageSize", "1000"),
        ],
    )
    .await
    .expect(200, "events after");
    body.as_array().expect("an array of events").clone()
}

fn sequence(event: &Value) -> i64 {
    event["metadata"]["sequenceID"]
        .as_i64()
        .unwrap_or_else(|| panic!("§4.5 metadata.sequenceID: {event}"))
}

#[tokio::test]
async fn a_watch_topic_is_created_through_the_management_api_and_its_filters_are_checked() {
    let amp = Amplify::start().await;
    let created = amp
        .create(
            "/management/v1/watchtopics",
            &topic_body(TOPIC, billing_filters()),
        )
        .await;
    assert_eq!(created["kind"], "WatchTopic");
    assert_eq!(
        created["metadata"]["selfLink"],
        format!("/management/v1/watchtopics/{TOPIC}")
    );
    assert_eq!(created["spec"]["filters"], billing_filters());
    let read_back = amp
        .get(&format!("/management/v1/watchtopics/{TOPIC}"))
        .await
        .expect(200, "get the topic");
    assert_eq!(read_back["metadata"]["id"], created["metadata"]["id"]);

    for (filters, what) in [
        (json!("all"), "filters not an array"),
        (
            json!([{"kind": "Subscription", "type": ["updated"]}]),
            "no group",
        ),
        (
            json!([{"group": "catalog", "kind": "Subscription", "type": []}]),
            "no type",
        ),
        (
            json!([{"group": "catalog", "kind": "Subscription", "type": ["renamed"]}]),
            "unknown type",
        ),
    ] {
        let resp = amp
            .post(
                "/management/v1/watchtopics",
                &topic_body("bad-topic", filters),
            )
            .await;
        assert_central_error(&resp, 400);
        assert!(!resp.text.is_empty(), "{what}");
    }
    // A second create of the same name is a conflict, as for every kind.
    let again = amp
        .post(
            "/management/v1/watchtopics",
            &topic_body(TOPIC, billing_filters()),
        )
        .await;
    assert_central_error(&again, 409);
}

#[tokio::test]
async fn matching_changes_are_retained_in_order_as_thin_events_with_increasing_sequence_ids() {
    let amp = Amplify::start().await;
    let topic = amp
        .create(
            "/management/v1/watchtopics",
            &topic_body(TOPIC, billing_filters()),
        )
        .await;
    amp.product_with_active_plan("p", "silver").await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    amp.delete("/catalog/v1/subscriptions/sub-1")
        .await
        .expect(202, "delete the subscription");

    let events = events_after(&amp, 0).await;
    let sequences: Vec<i64> = events.iter().map(sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "§4.5 ascending sequence ids: {sequences:?}"
    );
    // Products match no filter: only plans and subscriptions are kept.
    assert!(
        events.iter().all(|e| matches!(
            e["payload"]["kind"].as_str(),
            Some("ProductPlan" | "Subscription")
        )),
        "{events:?}"
    );
    let kinds_and_types: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e["payload"]["kind"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["metadata"]["subresource"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let position = |kind: &str, ty: &str, sub: Option<&str>| {
        kinds_and_types
            .iter()
            .position(|(k, t, s)| k == kind && t == ty && s.as_deref() == sub)
            .unwrap_or_else(|| panic!("{kind} {ty} {sub:?} retained: {kinds_and_types:?}"))
    };
    assert!(
        position("ProductPlan", "ResourceCreated", None)
            < position("ProductPlan", "SubResourceUpdated", Some("state"))
    );
    assert!(
        position("Subscription", "ResourceCreated", None)
            < position("Subscription", "SubResourceUpdated", Some("approval"))
    );
    assert_eq!(
        position("Subscription", "ResourceDeleted", None),
        events.len() - 1,
        "the deletion is the last change"
    );
    for event in &events {
        // The envelope of §4.3 with the watch metadata of §4.5.
        for field in ["id", "time", "type", "payload", "metadata", "organization"] {
            assert!(event.get(field).is_some(), "{field} in {event}");
        }
        let time = event["time"].as_str().unwrap();
        assert!(
            time.len() == 26 && time.as_bytes()[10] == b' ' && !time.contains('+'),
            "§2.4 REST watch events use `2024-10-28 15:43:02.689148`: {time}"
        );
        assert_eq!(event["metadata"]["watchTopicID"], topic["metadata"]["id"]);
        assert_eq!(
            event["metadata"]["watchTopicSelfLink"],
            format!("/management/v1/watchtopics/{TOPIC}")
        );
        // Thin: identity, attributes, tags and metadata only — no spec, no subresources.
        let payload = event["payload"].as_object().unwrap();
        for absent in ["spec", "approval", "state", "status", "marketplace"] {
            assert!(
                !payload.contains_key(absent),
                "§4.5 thin payload has no {absent}: {event}"
            );
        }
        assert!(payload["metadata"]["id"].is_string());
        assert!(payload["metadata"]["selfLink"].is_string());
        assert_eq!(payload["group"], "catalog");
    }
}

#[tokio::test]
async fn reads_filter_by_sequence_id_sort_both_ways_and_page() {
    let amp = Amplify::start().await;
    amp.create(
        "/management/v1/watchtopics",
        &topic_body(TOPIC, billing_filters()),
    )
    .await;
    amp.product_with_active_plan("p", "silver").await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let all = events_after(&amp, 0).await;
    assert!(all.len() >= 4, "{all:?}");
    let middle = sequence(&all[1]);
    let later = events_after(&amp, middle).await;
    assert_eq!(
        later,
        all[2..].to_vec(),
        "§4.5 query=sequenceID>N: the events after N, in order"
    );
    assert!(
        events_after(&amp, sequence(all.last().unwrap()))
            .await
            .is_empty()
    );

    // The SDK's first read: the newest event only.
    let newest = read(
        &amp,
        TOPIC,
        &[("pageSize", "1"), ("sort", "sequenceID,DESC")],
    )
    .await
    .expect(200, "newest");
    assert_eq!(newest.as_array().unwrap().len(), 1);
    assert_eq!(newest[0], *all.last().unwrap());

    // Pages of 2, ascending.
    let mut paged = Vec::new();
    for page in 1.. {
        let page = page.to_string();
        let body = read(
            &amp,
            TOPIC,
            &[
                ("sort", "sequenceID,ASC"),
                ("query", "sequenceID>0"),
                ("page", &page),
                ("pageSize", "2"),
            ],
        )
        .await
        .expect(200, "a page");
        let batch = body.as_array().unwrap().clone();
        let full = batch.len() == 2;
        paged.extend(batch);
        if !full {
            break;
        }
    }
    assert_eq!(paged, all);

    for (query, what) in [
        (vec![("sort", "name")], "sort by another field"),
        (vec![("query", "sequenceID")], "a query without operator"),
        (vec![("pageSize", "0")], "page size 0"),
        (vec![("sort", "sequenceID,UP")], "an unknown direction"),
    ] {
        let resp = read(&amp, TOPIC, &query).await;
        assert_eq!(resp.status.as_u16(), 400, "{what}: {}", resp.text);
        assert_central_error(&resp, 400);
    }
}

#[tokio::test]
async fn unknown_topics_missing_tokens_and_purged_sequences_are_refused_as_central_does() {
    let amp = Amplify::start().await;
    assert_central_error(&read(&amp, "nope", &[]).await, 404);
    amp.create(
        "/management/v1/watchtopics",
        &topic_body(TOPIC, billing_filters()),
    )
    .await;
    let anonymous = amp
        .sb
        .http
        .get(amp.sb.at(&format!(
            "/amplify/events/management/v1/watchtopics/{TOPIC}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    amp.product_with_active_plan("p", "silver").await;
    let all = events_after(&amp, 0).await;
    let first = sequence(&all[0]);
    let newest = sequence(all.last().unwrap());
    // Retention drops the first events: asking from before them is 410 with the newest id.
    let purge = amp
        .sb
        .http
        .post(amp.sb.at(&format!(
            "/_sandbox/watchtopics/{TOPIC}/purge?through={first}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status().as_u16(), 200);
    let before = format!("sequenceID>{}", first - 1);
    let gone = read(&amp, TOPIC, &[("sort", "sequenceID"), ("query", &before)]).await;
    assert_central_error(&gone, 410);
    assert_eq!(
        gone.header("X-Axway-Max-Sequence-Id"),
        Some(newest.to_string().as_str()),
        "the SDK restarts from the newest id a 410 names"
    );
    // From the purged id on, the rest is still there.
    let from = format!("sequenceID>{first}");
    let rest = read(&amp, TOPIC, &[("sort", "sequenceID"), ("query", &from)])
        .await
        .expect(200, "after the purge");
    assert_eq!(rest.as_array().unwrap().as_slice(), &all[1..]);

    // A deleted topic and its events are gone.
    amp.delete(&format!("/management/v1/watchtopics/{TOPIC}"))
        .await
        .expect(202, "delete the topic");
    assert_central_error(&read(&amp, TOPIC, &[]).await, 404);
}

#[tokio::test]
async fn the_watch_event_and_the_webhook_delivery_of_a_change_share_its_id() {
    let amp = Amplify::start().await;
    let mut rx = super::receiver::Receiver::start().await;
    amp.product_with_active_plan("p", "silver").await;
    amp.create(
        "/management/v1/watchtopics",
        &topic_body(TOPIC, billing_filters()),
    )
    .await;
    let base = "/management/v1/integrations/billing";
    amp.create(
        "/management/v1/integrations",
        &json!({"group": "management", "apiVersion": "v1", "kind": "Integration", "name": "billing", "spec": {}}),
    )
    .await;
    amp.create(
        &format!("{base}/webhooks"),
        &json!({"group": "management", "apiVersion": "v1", "kind": "Webhook", "name": "wh",
                "spec": {"enabled": true, "url": rx.url}}),
    )
    .await;
    amp.create(
        &format!("{base}/resourcehooks"),
        &json!({"group": "management", "apiVersion": "v1", "kind": "ResourceHook", "name": "rh",
                "spec": {"triggers": billing_filters(), "webhooks": ["wh"]}}),
    )
    .await;
    amp.subscription("v1", "sub-1", "p", "silver").await;
    let delivered = rx
        .wait_until(std::time::Duration::from_secs(2), |got| {
            got.iter()
                .any(|d| d.body["metadata"]["subresource"] == "approval")
        })
        .await
        .to_vec();
    let watched = events_after(&amp, 0).await;
    let hook_ids: Vec<&str> = delivered
        .iter()
        .filter_map(|d| d.body["id"].as_str())
        .collect();
    let watch_ids: Vec<&str> = watched
        .iter()
        .filter(|e| e["payload"]["kind"] == "Subscription")
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert!(!hook_ids.is_empty());
    assert_eq!(
        &watch_ids[..hook_ids.len()],
        hook_ids.as_slice(),
        "one event, one id, whichever way it is read [I]"
    );
}
