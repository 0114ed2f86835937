//! The notify crate against the sandbox over HTTP: cards reach the Teams channel, mail reaches
//! SendGrid or an SMTP relay, transient failures are retried, refusals are not, and no secret
//! leaks into an error.

use std::collections::BTreeMap;
use std::time::Duration;

use billing_bridge_notify::{
    Address, Delivery, Mail, MailBackend, MailConfig, Mailer, NotifyConfig, NotifyError,
    ProviderCard, SendGridMailer, SmtpConfig, SmtpSecurity, TeamsClient, Tone, channels,
};
use billing_bridge_sandbox::{SandboxConfig, SendgridSettings};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{TestSandbox, default_sandbox, spawn_sandbox};

const TEAMS_TOKEN: &str = "secret-channel-token-7f3a";

fn card(title: &str) -> ProviderCard {
    ProviderCard {
        title: title.to_owned(),
        tone: Tone::Good,
        text: "Silver is now billed in Recurly.".into(),
        facts: vec![("Plan".into(), "amplify-plan-8a2e".into())],
        link: None,
    }
}

fn mail(to: &str) -> Mail {
    Mail {
        from: Address::new("billing@market.example"),
        reply_to: Some(Address::new("support@market.example")),
        to: Address {
            email: to.into(),
            name: Some("Dev Team".into()),
        },
        subject: "Your subscription is approved".into(),
        text: "Manage it at https://market.example".into(),
        html: Some(
            "<p>Manage it at <a href=\"https://market.example\">the marketplace</a></p>".into(),
        ),
        tags: BTreeMap::from([("event_id".to_owned(), "sub-9f2c".to_owned())]),
    }
}

fn teams(sb: &TestSandbox, kind: &str, per_second: u32) -> TeamsClient {
    let url = SecretString::from(sb.at(&format!("/teams/{kind}/{TEAMS_TOKEN}")));
    TeamsClient::new(sb.http.clone(), url, per_second).with_retry(
        4,
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
}

async fn get(sb: &TestSandbox, path: &str) -> Value {
    sb.http
        .get(sb.at(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn put_faults(sb: &TestSandbox, upstream: &str, faults: Value) {
    let status = sb
        .http
        .put(sb.at(&format!("/_sandbox/faults/{upstream}")))
        .json(&faults)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

#[tokio::test]
async fn a_card_reaches_the_teams_channel_as_an_adaptive_card() {
    let sb = default_sandbox().await;
    teams(&sb, "webhookb2", 4)
        .post(&card("Plan provisioned"))
        .await
        .unwrap();
    teams(&sb, "workflows", 4)
        .post(&card("Plan failed"))
        .await
        .unwrap();
    let cards = get(&sb, "/_sandbox/cards").await;
    let cards = cards.as_array().unwrap();
    assert_eq!(cards.len(), 2);
    assert!(
        cards
            .iter()
            .all(|c| c["kind"] == "adaptive_card" && c["rendered"] == true)
    );
    assert_eq!(
        cards[0]["body"]["attachments"][0]["content"]["body"][0]["text"],
        "Plan provisioned"
    );
}

#[tokio::test]
async fn cards_stay_under_the_teams_rate_so_none_is_throttled() {
    let sb = default_sandbox().await;
    let client = teams(&sb, "webhookb2", 4);
    for i in 0..9 {
        client.post(&card(&format!("card {i}"))).await.unwrap();
    }
    assert_eq!(
        get(&sb, "/_sandbox/cards").await.as_array().unwrap().len(),
        9
    );
    let requests = get(&sb, "/_sandbox/requests?upstream=teams").await;
    let requests = requests.as_array().unwrap();
    assert_eq!(
        requests.len(),
        9,
        "each card posted once, no throttled retries"
    );
}

#[tokio::test]
async fn a_throttled_channel_is_retried_and_the_card_arrives_once() {
    let sb = default_sandbox().await;
    put_faults(&sb, "teams", json!({"rate_limited_next": 2})).await;
    teams(&sb, "webhookb2", 4)
        .post(&card("after throttling"))
        .await
        .unwrap();
    assert_eq!(
        get(&sb, "/_sandbox/cards").await.as_array().unwrap().len(),
        1
    );
    assert_eq!(
        get(&sb, "/_sandbox/requests?upstream=teams")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_failing_channel_gives_a_transient_error_that_does_not_reveal_the_url() {
    let sb = default_sandbox().await;
    put_faults(
        &sb,
        "teams",
        json!({"error_rate": 1.0, "error_status": 503}),
    )
    .await;
    let err = teams(&sb, "webhookb2", 4)
        .post(&card("lost"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        get(&sb, "/_sandbox/requests?upstream=teams")
            .await
            .as_array()
            .unwrap()
            .len(),
        4,
        "retried up to the policy"
    );
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(TEAMS_TOKEN), "secret in error: {text}");
    }
    // A closed port fails to connect: the error still names no URL.
    let closed = TeamsClient::new(
        reqwest::Client::new(),
        SecretString::from(format!("http://127.0.0.1:1/teams/webhookb2/{TEAMS_TOKEN}")),
        4,
    )
    .with_retry(1, Duration::from_millis(1), Duration::from_millis(1));
    let err = closed.post(&card("nowhere")).await.unwrap_err();
    assert!(matches!(err, NotifyError::Unreachable { .. }));
    assert!(!format!("{err} {err:?}").contains(TEAMS_TOKEN));
}

#[tokio::test]
async fn a_card_teams_refuses_is_not_retried() {
    let sb = default_sandbox().await;
    // A MessageCard without summary or text is refused by legacy connectors (reference §8.1).
    let response = sb
        .http
        .post(sb.at(&format!("/teams/webhookb2/{TEAMS_TOKEN}")))
        .json(&json!({"@type": "MessageCard", "sections": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    put_faults(
        &sb,
        "teams",
        json!({"error_rate": 1.0, "error_status": 400}),
    )
    .await;
    let err = teams(&sb, "webhookb2", 4)
        .post(&card("refused"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotifyError::Rejected { status: 400, .. }),
        "{err}"
    );
    let teams_requests = get(&sb, "/_sandbox/requests?upstream=teams").await;
    assert_eq!(
        teams_requests.as_array().unwrap().len(),
        2,
        "the refused card was sent once"
    );
}

#[tokio::test]
async fn mail_reaches_sendgrid_with_its_message_id() {
    let sb = default_sandbox().await;
    let config = NotifyConfig {
        mail: MailConfig {
            backend: MailBackend::Sendgrid,
            from: "billing@market.example".into(),
            sendgrid: billing_bridge_notify::SendGridConfig {
                api_key: Some(SecretString::from("SG.test-key")),
                base_url: sb.at("/sendgrid"),
            },
            ..MailConfig::default()
        },
        ..NotifyConfig::default()
    };
    let (_provider, mailer) = channels(&config, &sb.http).unwrap();
    let delivery = mailer.send(&mail("dev@consumer.example")).await.unwrap();
    let mails = get(&sb, "/_sandbox/mails").await;
    let mails = mails.as_array().unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["recipients"], json!(["dev@consumer.example"]));
    assert_eq!(
        mails[0]["request"]["reply_to"]["email"],
        "support@market.example"
    );
    assert_eq!(
        mails[0]["request"]["personalizations"][0]["custom_args"]["event_id"],
        "sub-9f2c"
    );
    assert_eq!(
        delivery,
        Delivery::Sent {
            message_id: Some(mails[0]["message_id"].as_str().unwrap().to_owned())
        }
    );
}

#[tokio::test]
async fn sendgrid_refusals_are_final_and_outages_are_retried() {
    let sb = spawn_sandbox(SandboxConfig {
        sendgrid: SendgridSettings {
            api_key: Some("SG.right".into()),
        },
        ..SandboxConfig::default()
    })
    .await;
    let mailer = |key: &str| {
        SendGridMailer::new(
            sb.http.clone(),
            &sb.at("/sendgrid"),
            SecretString::from(key.to_owned()),
        )
        .with_retry(3, Duration::from_millis(10), Duration::from_millis(50))
    };
    let err = mailer("SG.wrong")
        .send(&mail("dev@consumer.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotifyError::Rejected { status: 401, .. }),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("SG.wrong"));
    assert_eq!(
        get(&sb, "/_sandbox/requests?upstream=sendgrid")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    put_faults(
        &sb,
        "sendgrid",
        json!({"error_rate": 1.0, "error_status": 503}),
    )
    .await;
    let err = mailer("SG.right")
        .send(&mail("dev@consumer.example"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotifyError::Unavailable { status: 503, .. }),
        "{err}"
    );
    assert_eq!(
        get(&sb, "/_sandbox/requests?upstream=sendgrid")
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert!(
        get(&sb, "/_sandbox/mails")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn mail_off_sends_nothing_and_bad_addresses_are_refused_before_sending() {
    assert_eq!(
        Mailer::Off
            .send(&mail("dev@consumer.example"))
            .await
            .unwrap(),
        Delivery::Skipped
    );
    let sb = default_sandbox().await;
    let mailer = Mailer::SendGrid(SendGridMailer::new(
        sb.http.clone(),
        &sb.at("/sendgrid"),
        SecretString::from("SG.k"),
    ));
    let err = mailer.send(&mail("not an address")).await.unwrap_err();
    assert!(matches!(err, NotifyError::InvalidMail(_)));
    assert!(
        get(&sb, "/_sandbox/requests?upstream=sendgrid")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// A minimal SMTP peer on loopback that accepts one message and hands back its DATA.
async fn one_message_smtp_server() -> (u16, tokio::task::JoinHandle<(Vec<String>, String)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 relay.test ESMTP\r\n").await.unwrap();
        let mut envelope = Vec::new();
        let mut data = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                write
                    .write_all(b"250-relay.test\r\n250 8BITMIME\r\n")
                    .await
                    .unwrap();
            } else if upper.starts_with("MAIL FROM") || upper.starts_with("RCPT TO") {
                envelope.push(line.clone());
                write.write_all(b"250 OK\r\n").await.unwrap();
            } else if upper == "DATA" {
                write.write_all(b"354 go ahead\r\n").await.unwrap();
                while let Some(body_line) = lines.next_line().await.unwrap() {
                    if body_line == "." {
                        break;
                    }
                    data.push_str(&body_line);
                    data.push('\n');
                }
                write.write_all(b"250 queued\r\n").await.unwrap();
            } else if upper == "QUIT" {
                write.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                write.write_all(b"250 OK\r\n").await.unwrap();
            }
        }
        (envelope, data)
    });
    (port, task)
}

#[tokio::test]
async fn mail_reaches_an_smtp_relay() {
    let (port, server) = one_message_smtp_server().await;
    let config = NotifyConfig {
        mail: MailConfig {
            backend: MailBackend::Smtp,
            smtp: SmtpConfig {
                host: "127.0.0.1".into(),
                port,
                security: SmtpSecurity::None,
                ..SmtpConfig::default()
            },
            ..MailConfig::default()
        },
        ..NotifyConfig::default()
    };
    let (_provider, mailer) = channels(&config, &reqwest::Client::new()).unwrap();
    let delivery = mailer.send(&mail("dev@consumer.example")).await.unwrap();
    assert_eq!(delivery, Delivery::Sent { message_id: None });
    let (envelope, data) = server.await.unwrap();
    assert!(
        envelope
            .iter()
            .any(|l| l.contains("<dev@consumer.example>")),
        "{envelope:?}"
    );
    assert!(
        data.contains("Subject: Your subscription is approved"),
        "{data}"
    );
    assert!(data.contains("Reply-To: support@market.example"), "{data}");
}
