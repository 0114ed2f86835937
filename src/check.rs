//! `check`: is the configuration complete, and does every upstream answer?

use std::path::Path;

use billing_bridge_config::{BridgeConfig, TrafficSource};
use billing_bridge_notify::MailBackend;
use billing_bridge_pipeline::Bridge;
use billing_bridge_upstream::RetryPolicy;

enum Status {
    Ok,
    Off,
    Fail,
}

struct Row {
    what: &'static str,
    status: Status,
    detail: String,
}

fn print(rows: &[Row]) {
    println!("{:<24} {:<6} detail", "check", "status");
    for row in rows {
        let status = match row.status {
            Status::Ok => "ok",
            Status::Off => "off",
            Status::Fail => "FAIL",
        };
        println!("{:<24} {:<6} {}", row.what, status, row.detail);
    }
}

pub async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let config = match BridgeConfig::load(config) {
        Ok(config) => config,
        Err(e) => {
            rows.push(Row {
                what: "configuration",
                status: Status::Fail,
                detail: e.to_string(),
            });
            print(&rows);
            anyhow::bail!("the configuration could not be read");
        }
    };
    let problems = config.problems();
    rows.push(Row {
        what: "configuration",
        status: if problems.is_empty() {
            Status::Ok
        } else {
            Status::Fail
        },
        detail: if problems.is_empty() {
            "complete".into()
        } else {
            problems.join("; ")
        },
    });
    let teams = config.notify.teams.webhook_url.is_some();
    let mail = config.notify.mail.backend;
    // `check` only talks to the upstreams: it leaves the state file to a running `serve`.
    let mut config = config;
    config.store.state_file.clear();
    let (bridge, _channels) = Bridge::build(
        config,
        RetryPolicy::new(
            2,
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(1),
        ),
    )?;
    rows.push(match bridge.amplify.check_credentials().await {
        Ok(()) => Row {
            what: "Amplify token",
            status: Status::Ok,
            detail: "service account accepted".into(),
        },
        Err(e) => Row {
            what: "Amplify token",
            status: Status::Fail,
            detail: e.to_string(),
        },
    });
    let version = &bridge.config.amplify.api_version;
    rows.push(
        match bridge
            .amplify
            .list(
                &format!("/catalog/{version}/products"),
                Some("attributes.billingSystem==recurly"),
            )
            .await
        {
            Ok(products) => Row {
                what: "Amplify catalog",
                status: Status::Ok,
                detail: format!("{} product(s) billed by Recurly", products.len()),
            },
            Err(e) => Row {
                what: "Amplify catalog",
                status: Status::Fail,
                detail: e.to_string(),
            },
        },
    );
    rows.push(match bridge.recurly.plan("amplify-plan-check").await {
        Ok(_) => Row {
            what: "Recurly",
            status: Status::Ok,
            detail: format!(
                "{} answers with this API key",
                bridge.config.recurly.base_url
            ),
        },
        Err(e) => Row {
            what: "Recurly",
            status: Status::Fail,
            detail: e.to_string(),
        },
    });
    rows.push(if bridge.config.store.redis_url.is_some() {
        match bridge.store.ping().await {
            Ok(()) => Row {
                what: "store",
                status: Status::Ok,
                detail: format!(
                    "Redis answers (shared by {} instance(s))",
                    bridge.config.store.instances
                ),
            },
            Err(e) => Row {
                what: "store",
                status: Status::Fail,
                detail: e.to_string(),
            },
        }
    } else {
        Row {
            what: "store",
            status: Status::Ok,
            detail: "embedded (one instance); state file left to serve".into(),
        }
    });
    let reporting = &bridge.config.reporting;
    rows.push(Row {
        what: "traffic source",
        status: if reporting.enabled {
            Status::Ok
        } else {
            Status::Off
        },
        detail: match reporting.source {
            TrafficSource::Summary => "Traceability summary counts".to_owned(),
            TrafficSource::Search => {
                "raw transactions from Traceability search, each transactionId once".to_owned()
            }
            TrafficSource::Push => format!(
                "pushed to POST /ingest/transactions, each transactionId once; horizon {}",
                humantime::format_duration(bridge.config.ingest.horizon)
            ),
        },
    });
    rows.push(if teams {
        Row {
            what: "Teams channel",
            status: Status::Ok,
            detail: "configured (not posted to by check)".into(),
        }
    } else {
        Row {
            what: "Teams channel",
            status: Status::Off,
            detail: "no notify.teams.webhook_url: providers get no cards".into(),
        }
    });
    rows.push(match mail {
        MailBackend::Off => Row {
            what: "subscriber mail",
            status: Status::Off,
            detail: "notify.mail.backend = off".into(),
        },
        MailBackend::Sendgrid => Row {
            what: "subscriber mail",
            status: Status::Ok,
            detail: "SendGrid".into(),
        },
        MailBackend::Smtp => Row {
            what: "subscriber mail",
            status: Status::Ok,
            detail: format!(
                "SMTP via {}:{}",
                bridge.config.notify.mail.smtp.host, bridge.config.notify.mail.smtp.port
            ),
        },
    });
    print(&rows);
    if rows.iter().any(|r| matches!(r.status, Status::Fail)) {
        anyhow::bail!("some checks failed");
    }
    Ok(())
}
