//! The contract check itself, run on real recorded traffic: it must see the exchanges and
//! flag what departs from the spec, or every other test's final check proves nothing.

use billing_bridge_contract::{ExchangePolicy, check_recorded_exchanges};
use serde_json::json;

use super::client::{Recurly, recorded_exchanges, usage_plan};

#[tokio::test]
async fn the_recorded_traffic_check_flags_a_request_outside_the_contract() {
    let r = Recurly::start().await;
    r.create_measured_unit("api_calls").await;
    let mut plan = usage_plan("gold");
    plan["colour"] = json!("gold");
    let reply = r.post("/plans", &plan).await;

    let entries = recorded_exchanges(&r.sb).await;
    assert_eq!(entries.len(), 2, "both exchanges recorded: {entries:?}");
    assert_eq!(entries[1]["path"], "/recurly/plans");
    assert_eq!(
        entries[1]["body"]["colour"], "gold",
        "the request body is recorded"
    );
    assert_eq!(entries[1]["status"], reply.status);
    assert_eq!(entries[1]["response_body"], reply.body);

    // As the bridge's traffic, the invented field is a violation whatever the answer was.
    let violations =
        check_recorded_exchanges(&entries, "/recurly", ExchangePolicy::ClientMustConform)
            .expect_err("an invented field breaks the contract");
    assert!(
        violations.0.iter().any(|v| v.message.contains("colour")),
        "{violations}"
    );
    // As server conformance, it is fine only if the emulator refused it.
    let as_server = check_recorded_exchanges(
        &entries,
        "/recurly",
        ExchangePolicy::ServerMustRefuseInvalid,
    );
    assert_eq!(
        as_server.is_ok(),
        (400..500).contains(&reply.status),
        "{as_server:?}"
    );
    // The spec's 400 on writes is "Invalid or unpermitted parameter."; the emulator must not
    // swallow a field it does not know.
    reply.expect_error(400, "bad_request");
    r.sb.handle.stop().await;
}
