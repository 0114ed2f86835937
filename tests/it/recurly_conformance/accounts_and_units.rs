//! Measured units (reference §3) and accounts (§4): creation and look-up by natural key.

use serde_json::json;

use super::client::{Recurly, list_data};

#[tokio::test]
async fn a_measured_unit_is_created_and_found_by_name_and_id() {
    let r = Recurly::start().await;
    let created = r.create_measured_unit("api_calls").await;
    assert_eq!(created["object"], "measured_unit");
    assert_eq!(created["name"], "api_calls");
    assert_eq!(created["display_name"], "API calls");
    assert_eq!(created["state"], "active");
    let by_name = r.get("/measured_units/name-api_calls").await.expect(200);
    assert_eq!(by_name["id"], created["id"]);
    let id = created["id"].as_str().unwrap();
    let by_id = r.get(&format!("/measured_units/{id}")).await.expect(200);
    assert_eq!(by_id["name"], "api_calls");
    r.get("/measured_units/name-nope")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn a_measured_unit_display_name_outside_its_pattern_is_refused() {
    // §3.1: display_name `/^[\w ]+$/`, maxLength 50.
    let r = Recurly::start().await;
    for display_name in ["calls/second".to_owned(), "x".repeat(51)] {
        let unit = json!({"name": "calls", "display_name": display_name});
        r.post("/measured_units", &unit)
            .await
            .expect_error(422, "validation");
    }
    r.get("/measured_units/name-calls")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn an_account_is_created_and_found_by_code() {
    let r = Recurly::start().await;
    let created = r.create_account("consumer-7f3a").await;
    assert_eq!(created["object"], "account");
    assert_eq!(created["code"], "consumer-7f3a");
    assert_eq!(created["email"], "consumer-7f3a@consumer.example");
    assert_eq!(created["state"], "active");
    let by_code = r.get("/accounts/code-consumer-7f3a").await.expect(200);
    assert_eq!(by_code["id"], created["id"]);
    let id = created["id"].as_str().unwrap();
    let by_id = r.get(&format!("/accounts/{id}")).await.expect(200);
    assert_eq!(by_id["code"], "consumer-7f3a");
    r.finish().await;
}

#[tokio::test]
async fn an_unknown_account_is_404_not_found() {
    // §4: the get-or-create look-up relies on this 404.
    let r = Recurly::start().await;
    r.get("/accounts/code-nobody")
        .await
        .expect_error(404, "not_found");
    r.finish().await;
}

#[tokio::test]
async fn a_duplicate_account_code_is_422() {
    let r = Recurly::start().await;
    r.create_account("consumer-1").await;
    r.post("/accounts", &json!({"code": "consumer-1"}))
        .await
        .expect_error(422, "validation");
    let list = r.get("/accounts").await.expect(200);
    assert_eq!(list_data(&list).len(), 1, "{list}");
    r.finish().await;
}

#[tokio::test]
async fn an_account_without_a_code_or_with_a_code_over_50_is_refused() {
    // §4: `code` is required, max 50.
    let r = Recurly::start().await;
    r.post("/accounts", &json!({"email": "a@b.example"}))
        .await
        .expect_error(422, "validation");
    r.post("/accounts", &json!({"code": "c".repeat(51)}))
        .await
        .expect_error(422, "validation");
    let list = r.get("/accounts").await.expect(200);
    assert!(list_data(&list).is_empty(), "{list}");
    r.finish().await;
}

#[tokio::test]
async fn a_deleted_account_is_inactive_and_a_second_delete_is_422() {
    // §4: DELETE /accounts/{id} deactivates (200); the spec's 422 is "Account may already be
    // inactive."
    let r = Recurly::start().await;
    r.create_account("consumer-1").await;
    let deleted = r.delete("/accounts/code-consumer-1").await.expect(200);
    assert_eq!(deleted["state"], "inactive");
    let fetched = r.get("/accounts/code-consumer-1").await.expect(200);
    assert_eq!(fetched["state"], "inactive");
    let reply = r.delete("/accounts/code-consumer-1").await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    r.finish().await;
}
