//! The provider's Teams card: a title, a short text, facts and an optional link, rendered as an
//! Adaptive Card envelope, which both legacy incoming webhooks and Workflows accept
//! (reference §8.2), and kept under Teams' 28 KB message limit.

use serde_json::{Value, json};

/// Teams refuses messages over 28 KB (reference §8.1); stay well below to leave room for the
/// envelope Teams adds.
pub const MAX_CARD_BYTES: usize = 24 * 1024;
/// Longest fact value kept whole; longer ones are cut when the card would be too large.
const SHORT_FACT_CHARS: usize = 300;

/// The colour of the title: good news, a problem, or plain information.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tone {
    Good,
    Attention,
    Info,
}

impl Tone {
    fn color(self) -> &'static str {
        match self {
            Tone::Good => "Good",
            Tone::Attention => "Attention",
            Tone::Info => "Accent",
        }
    }
}

/// Serializable, so the pipeline's outbox can keep it until Teams takes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProviderCard {
    pub title: String,
    pub tone: Tone,
    pub text: String,
    pub facts: Vec<(String, String)>,
    /// A button: (label, URL).
    pub link: Option<(String, String)>,
}

fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

impl ProviderCard {
    fn render(&self, text_chars: usize, fact_chars: usize) -> Value {
        let facts: Vec<Value> = self
            .facts
            .iter()
            .map(
                |(title, value)| json!({"title": cut(title, 100), "value": cut(value, fact_chars)}),
            )
            .collect();
        let mut body = vec![
            json!({"type": "TextBlock", "text": cut(&self.title, 200), "weight": "Bolder", "size": "Medium", "color": self.tone.color(), "wrap": true}),
        ];
        if !self.text.is_empty() {
            body.push(
                json!({"type": "TextBlock", "text": cut(&self.text, text_chars), "wrap": true}),
            );
        }
        if !facts.is_empty() {
            body.push(json!({"type": "FactSet", "facts": facts}));
        }
        let mut content = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        });
        if let Some((label, url)) = &self.link {
            content["actions"] =
                json!([{"type": "Action.OpenUrl", "title": cut(label, 50), "url": url}]);
        }
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": content,
            }]
        })
    }

    /// The Adaptive Card envelope, shortened (text first, then long fact values) until it fits.
    pub fn to_envelope(&self) -> Value {
        let mut text_chars = 4_000;
        let mut fact_chars = usize::MAX;
        loop {
            let envelope = self.render(text_chars, fact_chars);
            let size = serde_json::to_vec(&envelope)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if size <= MAX_CARD_BYTES || (text_chars <= 200 && fact_chars <= 40) {
                return envelope;
            }
            if text_chars > 200 {
                text_chars /= 2;
            } else {
                fact_chars = if fact_chars == usize::MAX {
                    SHORT_FACT_CHARS
                } else {
                    (fact_chars / 2).max(40)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(facts: usize, value_len: usize) -> ProviderCard {
        ProviderCard {
            title: "Plan provisioned".into(),
            tone: Tone::Good,
            text: "Silver is billed in Recurly.".into(),
            facts: (0..facts)
                .map(|i| (format!("fact {i}"), "x".repeat(value_len)))
                .collect(),
            link: Some((
                "Open in Recurly".into(),
                "https://example.recurly.com/plans/x".into(),
            )),
        }
    }

    #[test]
    fn renders_the_envelope_teams_expects() {
        let envelope = card(2, 10).to_envelope();
        assert_eq!(envelope["type"], "message");
        let attachment = &envelope["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(attachment["content"]["type"], "AdaptiveCard");
        assert_eq!(attachment["content"]["body"][0]["text"], "Plan provisioned");
        assert_eq!(
            attachment["content"]["body"][2]["facts"][1]["title"],
            "fact 1"
        );
        assert_eq!(
            attachment["content"]["actions"][0]["type"],
            "Action.OpenUrl"
        );
    }

    #[test]
    fn a_huge_card_is_shortened_below_the_teams_limit() {
        let envelope = card(200, 2_000).to_envelope();
        let size = serde_json::to_vec(&envelope).unwrap().len();
        assert!(size <= MAX_CARD_BYTES, "{size} bytes");
        let first = envelope["attachments"][0]["content"]["body"][2]["facts"][0]["value"]
            .as_str()
            .unwrap();
        assert!(first.ends_with('…'));
    }
}
