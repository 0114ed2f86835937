//! The envelope Amplify posts to a webhook (reference §4.3).

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum EventType {
    ResourceCreated,
    ResourceUpdated,
    ResourceDeleted,
    SubResourceUpdated,
}

impl EventType {
    /// The four change types of reference §4.3, as Amplify spells them.
    pub const NAMES: [&'static str; 4] = [
        "ResourceCreated",
        "ResourceUpdated",
        "ResourceDeleted",
        "SubResourceUpdated",
    ];

    /// Whether `name` is one of them; any other type (`TriggerAction`, `Ping`, one added later)
    /// is not a resource change.
    pub fn is_change(name: &str) -> bool {
        Self::NAMES.contains(&name)
    }
}

/// The least of an envelope, read when the whole does not parse: an event of a type that is no
/// resource change carries its own shape, and is acknowledged rather than refused.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EnvelopeHead {
    #[serde(rename = "type")]
    pub event_type: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EventMetadata {
    #[serde(default)]
    pub subresource: Option<String>,
    /// The event's place in its WatchTopic (reference §4.5); absent on webhook deliveries.
    #[serde(rename = "sequenceID", default)]
    pub sequence_id: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Organization {
    pub id: String,
}

/// `P` is what the payload is read as: the whole resource as a `Value` by default, or a typed view
/// of the few fields a receiver needs (intake), so the rest of the resource is skipped unparsed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct WebhookEnvelope<P = Value> {
    /// The event's unique id: the dedupe key.
    pub id: String,
    pub time: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(rename = "correlationId", default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub organization: Option<Organization>,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The resource after the change, as a GET would return it.
    pub payload: P,
    #[serde(default)]
    pub metadata: Option<EventMetadata>,
}

impl WebhookEnvelope {
    pub fn kind(&self) -> Option<&str> {
        self.payload.get("kind").and_then(Value::as_str)
    }

    pub fn resource_name(&self) -> Option<&str> {
        self.payload.get("name").and_then(Value::as_str)
    }
}

impl<P> WebhookEnvelope<P> {
    /// The sequence id of an event read from a WatchTopic.
    pub fn sequence_id(&self) -> Option<i64> {
        self.metadata.as_ref().and_then(|m| m.sequence_id)
    }

    pub fn subresource(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.subresource.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_captured_subscription_event() {
        let body = r#"{"id":"faf98c75-5cf9-451e-baf1-e0ff3f04dd3f","time":"2023-11-14T16:26:41.703+0000","version":"v1",
            "product":"AmplifyCentral","correlationId":"e5316ff5","organization":{"id":"100000142"},"type":"SubResourceUpdated",
            "payload":{"group":"catalog","apiVersion":"v1alpha1","kind":"Subscription","name":"finance-starter-free",
                       "approval":{"state":"pending"}},
            "metadata":{"subresource":"approval"}}"#;
        let envelope: WebhookEnvelope = serde_json::from_str(body).unwrap();
        assert_eq!(envelope.event_type, EventType::SubResourceUpdated);
        assert_eq!(envelope.kind(), Some("Subscription"));
        assert_eq!(envelope.subresource(), Some("approval"));
        let created: WebhookEnvelope = serde_json::from_str(
            r#"{"id":"x","time":"t","type":"ResourceCreated","payload":{"kind":"ProductPlan","name":"p"},"metadata":null}"#,
        )
        .unwrap();
        assert_eq!(created.subresource(), None);
        let bogus = r#"{"id":"x","time":"t","type":"Bogus","payload":{}}"#;
        assert!(serde_json::from_str::<WebhookEnvelope>(bogus).is_err());
        let head: EnvelopeHead = serde_json::from_str(bogus).unwrap();
        assert!(!EventType::is_change(&head.event_type));
        assert!(EventType::NAMES.iter().all(|n| EventType::is_change(n)));
    }
}
