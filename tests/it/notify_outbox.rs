//! Notifications survive an outage (issue 14): every card and mail the bridge makes while Teams
//! and SendGrid fail, with `serve` killed (SIGKILL) and started again on the same state file in
//! the middle, is delivered exactly once after they recover.
//!
//! The issue's outage lasts 10 minutes. By default time is compressed through the configurable
//! back-off (`[notify] retry_first = "50ms"`, `retry_max = "300ms"`), so each notice is tried
//! (and refused) many times during an outage of a few seconds, as it would be over 10 minutes
//! at the production schedule; every step polls with a deadline. `NOTIFY_OUTAGE_SECS=600` runs
//! the outage literally: production back-off from 10 s (at most 1 minute apart), the restart
//! when half the outage has passed, recovery when all of it has, and the time from recovery to
//! the last delivery printed (`cargo test --release --test it notify_outbox -- --nocapture`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::provisioning::{Provider, WAIT, cards, mails, sandbox_json, seed, titled};
use crate::reporting_cli::{TempDir, binary_config, serve_with};
use crate::support::{TEAMS_CHANNEL, TestSandbox, bridge_sandbox, metric_sum, wait_for};

/// Errors the sandbox injected into `upstream` so far.
async fn refused(sb: &TestSandbox, upstream: &str) -> u64 {
    sandbox_json(sb, "/_sandbox/faults").await[upstream]["injected"]["errors"]
        .as_u64()
        .unwrap_or(0)
}

async fn outage(sb: &TestSandbox, on: bool) {
    for upstream in ["teams", "sendgrid"] {
        let url = sb.at(&format!("/_sandbox/faults/{upstream}"));
        let status = if on {
            sb.http
                .put(url)
                .json(&json!({"error_rate": 1.0, "error_status": 503}))
                .send()
                .await
        } else {
            sb.http.delete(url).send().await
        }
        .unwrap()
        .status();
        assert!(status.is_success(), "{upstream}: {status}");
    }
}

#[actix_rt::test]
async fn every_card_and_mail_made_during_an_outage_and_a_restart_is_delivered_once_after_it() {
    // The outage's length when it is run literally; `None`: compressed.
    let literal = std::env::var("NOTIFY_OUTAGE_SECS")
        .ok()
        .map(|s| Duration::from_secs(s.parse().expect("NOTIFY_OUTAGE_SECS: seconds")));
    let (retry_first, retry_max, recovery) = match literal {
        Some(_) => ("10s", "1m", Duration::from_secs(180)),
        None => ("50ms", "300ms", Duration::from_secs(20)),
    };
    // Waits until `part` of the literal outage has passed since it began (at once when
    // compressed).
    let began = Instant::now();
    let outage_part = |part: u32| async move {
        if let Some(outage) = literal {
            actix_rt::time::sleep_until((began + outage / part).into()).await;
        }
    };
    let sb = bridge_sandbox().await;
    let dir = TempDir::new();
    let state = dir.path("bridge.state");
    let notify = format!(
        r#"
[notify]
retry_first = "{retry_first}"
retry_max = "{retry_max}"
[notify.teams]
webhook_url = "{sb}{TEAMS_CHANNEL}"
[notify.mail]
backend = "sendgrid"
from = "billing@market.example"
[notify.mail.sendgrid]
api_key = "SG.test"
base_url = "{sb}/sendgrid"
"#,
        sb = sb.url
    );
    let config = |listen: &str| binary_config(&sb, listen, &state, &notify);
    outage(&sb, true).await;

    let mut first = serve_with(&sb, &dir, config).await;
    crate::provisioning::hooks_at(&sb, &first.url).await;
    let users: Vec<Value> = (1..=3)
        .map(|i| json!({"guid": format!("user-{i}"), "email": format!("dev{i}@consumer.example"), "firstname": "Dana", "lastname": "Dev"}))
        .collect();
    seed(
        &sb,
        json!({"amplify": {"users": users},
               "recurly": {"accounts": [{"code": "amplify-team-team-1"}, {"code": "amplify-team-team-3"}]}}),
    )
    .await;

    // Before the restart: a plan billed (a card), an approval (a mail), a rejection (a card).
    let provider = Provider::new(&sb).await;
    provider.catalog("silver").await;
    provider.activate("silver").await;
    provider.linked("silver").await;
    provider
        .subscribe("sub-1", "silver", "team-1", "user-1")
        .await;
    provider.approval("sub-1", "approved").await;
    provider
        .subscribe("sub-2", "silver", "team-2", "user-2")
        .await;
    provider.approval("sub-2", "rejected").await;
    outage_part(2).await;
    // Both channels refused the first process's notices, several times each.
    wait_for("refused tries at both channels", WAIT, || async {
        (refused(&sb, "teams").await >= 4 && refused(&sb, "sendgrid").await >= 2).then_some(())
    })
    .await;
    assert!(cards(&sb).await.is_empty() && mails(&sb).await.is_empty());
    first.kill();

    // While it is down a subscription waits; the restarted process's start-up pass approves it
    // (another mail), still during the outage, and keeps retrying the first process's notices.
    provider
        .subscribe("sub-3", "silver", "team-3", "user-3")
        .await;
    let before_restart = (refused(&sb, "teams").await, refused(&sb, "sendgrid").await);
    let second = serve_with(&sb, &dir, config).await;
    provider.approval("sub-3", "approved").await;
    outage_part(1).await;
    wait_for("the restarted process retrying", WAIT, || async {
        (refused(&sb, "teams").await >= before_restart.0 + 4
            && refused(&sb, "sendgrid").await >= before_restart.1 + 4)
            .then_some(())
    })
    .await;
    assert!(cards(&sb).await.is_empty() && mails(&sb).await.is_empty());

    // Recovery: everything goes out, and the outbox empties.
    outage(&sb, false).await;
    let recovered = Instant::now();
    let metrics_url = format!("{}/metrics", second.url);
    let text = wait_for("the outbox emptied", recovery, || async {
        let text = sb
            .http
            .get(&metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let sent = metric_sum(
            &text,
            "billing_bridge_notifications_total",
            r#"channel="mail",outcome="sent""#,
        ) + metric_sum(
            &text,
            "billing_bridge_notifications_total",
            r#"channel="teams",outcome="sent""#,
        );
        let waiting = metric_sum(
            &text,
            "billing_bridge_mailbox_depth_messages",
            r#"actor="notifier""#,
        );
        (sent >= 4.0 && waiting == 0.0).then_some(text)
    })
    .await;
    let expired = metric_sum(
        &text,
        "billing_bridge_notifications_total",
        r#"channel="mail",outcome="expired""#,
    ) + metric_sum(
        &text,
        "billing_bridge_notifications_total",
        r#"channel="teams",outcome="expired""#,
    );
    assert_eq!(expired, 0.0, "{text}");
    println!(
        "outage of {:.0} s with a restart in the middle: every notice delivered {:.1} s after recovery",
        recovered.duration_since(began).as_secs_f64(),
        recovered.elapsed().as_secs_f64()
    );

    let mut recipients: Vec<String> = mails(&sb)
        .await
        .iter()
        .map(|m| m["recipients"][0].as_str().unwrap().to_owned())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["dev1@consumer.example", "dev3@consumer.example"],
        "each approval mail once\n{}",
        second.log()
    );
    let mut titles: Vec<String> = cards(&sb).await.into_iter().map(|c| c.title).collect();
    titles.sort();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert_eq!(titled(&titles, "Plan billed in Recurly"), 1, "{titles:?}");
    assert_eq!(titled(&titles, "Subscription not billed"), 1, "{titles:?}");
}
