//! WatchTopics (reference §4.5): every change to a resource a topic's `spec.filters` match is
//! retained with an increasing sequence id, as a thin event, and read back with
//! `GET /amplify/events/management/{v}/watchtopics/{name}?sort=sequenceID&query=sequenceID>N`.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use super::resources::{API_VERSIONS, ApiError, central_error, kind_named, self_link};
use super::rsql;
use super::store::{Catalog, Change};
use super::webhooks::any_fires;
use crate::SandboxState;

/// How long events are kept: "7-day retention" [V reference §4.5].
pub(crate) const RETENTION_DAYS: i64 = 7;
/// Events per page when the request names no `pageSize`: Central's list default (§2.5) [I].
const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page served, as for lists [I].
const MAX_PAGE_SIZE: usize = 1000;
/// The header a 410 answer names the topic's newest sequence id in [V SDK harvester].
pub(crate) const MAX_SEQUENCE_HEADER: &str = "X-Axway-Max-Sequence-Id";

/// The REST event time, `2024-10-28 15:43:02.689148`: no `T`, micros, no offset [V reference
/// §2.4 note, DOCS integrate-with-watchtopics.md].
pub(crate) fn watch_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// The thin payload of a REST watch event: "group/kind/name/attributes/tags/metadata only — no
/// spec" [V reference §4.5]; subresources are left out as well.
pub(crate) fn thin_payload(rendered: &Value) -> Value {
    let mut thin = Map::new();
    for key in ["group", "kind", "name", "attributes", "tags", "metadata"] {
        if let Some(value) = rendered.get(key) {
            thin.insert(key.to_owned(), value.clone());
        }
    }
    Value::Object(thin)
}

struct Retained {
    sequence: i64,
    at: DateTime<Utc>,
    event: Value,
}

/// The events each topic retains, and the sequence ids handed out.
#[derive(Default)]
pub(crate) struct Topics {
    /// One counter for the organization, so ids increase across topics too [I: the reference
    /// says ids increase; whether they are per topic is not documented].
    last_sequence: i64,
    events: HashMap<String, Vec<Retained>>,
    /// Per topic, the highest sequence id dropped by retention (or by the control route).
    purged_through: HashMap<String, i64>,
}

impl Topics {
    /// Drops the events of `topic` up to `through`, as retention would; answers how many.
    pub fn purge(&mut self, topic: &str, through: i64) -> usize {
        let Some(events) = self.events.get_mut(topic) else {
            return 0;
        };
        let before = events.len();
        events.retain(|e| e.sequence > through);
        let purged = self.purged_through.entry(topic.to_owned()).or_default();
        *purged = (*purged).max(through);
        before - events.len()
    }

    fn expire(&mut self, now: DateTime<Utc>) {
        let oldest = now - Duration::days(RETENTION_DAYS);
        for (topic, events) in &mut self.events {
            if let Some(last_old) = events.iter().take_while(|e| e.at < oldest).last() {
                let through = last_old.sequence;
                events.retain(|e| e.sequence > through);
                let purged = self.purged_through.entry(topic.clone()).or_default();
                *purged = (*purged).max(through);
            }
        }
    }
}

/// Retains `change` (its webhook envelope `event`, same id) in every topic whose filters match.
/// Called with the catalog locked, so sequence ids follow the order of the changes.
pub(crate) fn retain(state: &SandboxState, catalog: &Catalog, change: &Change, event: &Value) {
    let mut topics = state.amplify.watch.lock();
    if change.spec.kind == "WatchTopic" && event["type"] == "ResourceDeleted" {
        let name = change.document["name"].as_str().unwrap_or_default();
        topics.events.remove(name);
        topics.purged_through.remove(name);
    }
    let version = event["payload"]["apiVersion"].as_str().unwrap_or("v1");
    for topic in catalog.all_of("WatchTopic") {
        if !any_fires(&topic.document["spec"]["filters"], change) {
            continue;
        }
        topics.last_sequence += 1;
        let sequence = topics.last_sequence;
        let topic_spec = kind_named("WatchTopic").expect("WatchTopic is a kind");
        let mut thin = event.clone();
        thin["time"] = json!(watch_timestamp(Utc::now()));
        thin["payload"] = thin_payload(&event["payload"]);
        thin["metadata"] = json!({
            "watchTopicID": topic.document["metadata"]["id"],
            "watchTopicSelfLink": self_link(topic_spec, version, None, &topic.name),
            "sequenceID": sequence,
            "subresource": change.subresource,
        });
        topics
            .events
            .entry(topic.name.clone())
            .or_default()
            .push(Retained {
                sequence,
                at: Utc::now(),
                event: thin,
            });
    }
}

/// `GET /amplify/events/management/{version}/watchtopics/{name}`: the retained events, filtered
/// by `query` (RSQL on `sequenceID`, e.g. `sequenceID>42`), sorted by `sort` (`sequenceID`,
/// `,ASC` or `,DESC`), paged with `page`/`pageSize`. A query asking from a sequence id whose
/// successors are past retention is answered 410 with the newest id in
/// `X-Axway-Max-Sequence-Id`, as the SDK's harvester expects.
pub(crate) async fn events(req: HttpRequest, state: web::Data<SandboxState>) -> HttpResponse {
    if let Err(resp) = super::auth::authorize(&req, &state) {
        return resp;
    }
    read(&req, &state).unwrap_or_else(|e| e.response())
}

fn read(req: &HttpRequest, state: &SandboxState) -> Result<HttpResponse, ApiError> {
    let info = req.match_info();
    let (version, name) = (
        info.get("version").unwrap_or_default(),
        info.get("name").unwrap_or_default(),
    );
    if !API_VERSIONS.contains(&version) {
        return Err(ApiError::not_found(format!(
            "no such API version '{version}'"
        )));
    }
    let spec = kind_named("WatchTopic").expect("WatchTopic is a kind");
    if state.amplify.catalog.lock().get(spec, None, name).is_none() {
        return Err(ApiError::not_found(format!(
            "WatchTopic '{name}' not found"
        )));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim());
    let number = |key: &str, default: usize| -> Result<usize, ApiError> {
        match get(key) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::bad_request(format!("{key} must be a positive integer, not '{v}'"))
            }),
        }
    };
    let page = number("page", 1)?;
    let page_size = number("pageSize", DEFAULT_PAGE_SIZE)?.min(MAX_PAGE_SIZE);
    let ascending = match get("sort").filter(|s| !s.is_empty()) {
        None => true,
        Some(sort) => {
            let (field, direction) = sort.split_once(',').unwrap_or((sort, "ASC"));
            if field.trim() != "sequenceID" {
                return Err(ApiError::bad_request(format!(
                    "events sort by sequenceID only, not '{}'",
                    field.trim()
                )));
            }
            match direction.trim().to_ascii_uppercase().as_str() {
                "ASC" => true,
                "DESC" => false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "sort direction must be ASC or DESC, not '{other}'"
                    )));
                }
            }
        }
    };
    let filter = match get("query").filter(|q| !q.is_empty()) {
        Some(q) => {
            Some(rsql::parse(q).map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?)
        }
        None => None,
    };
    // The lowest sequence id the query can accept, when it is a plain `sequenceID>N`.
    let after = get("query").and_then(|q| {
        q.strip_prefix("sequenceID>")
            .filter(|rest| !rest.starts_with('='))
            .and_then(|n| n.trim().parse::<i64>().ok())
    });
    let mut topics = state.amplify.watch.lock();
    topics.expire(Utc::now());
    let newest = topics.last_sequence;
    let purged = topics.purged_through.get(name).copied().unwrap_or(0);
    if let Some(after) = after
        && after < purged
    {
        return Ok(HttpResponse::Gone()
            .insert_header((MAX_SEQUENCE_HEADER, newest.to_string()))
            .json(super::resources::central_error_body(
                410,
                &format!("events after sequence id {after} are past retention"),
            )));
    }
    let mut selected: Vec<&Value> = topics
        .events
        .get(name)
        .map(|events| {
            events
                .iter()
                .filter(|e| {
                    filter.as_ref().is_none_or(|f| {
                        let mut doc = e.event.clone();
                        doc["sequenceID"] = json!(e.sequence);
                        rsql::matches(f, &doc)
                    })
                })
                .map(|e| &e.event)
                .collect()
        })
        .unwrap_or_default();
    if !ascending {
        selected.reverse();
    }
    let start = (page - 1).saturating_mul(page_size);
    let body: Vec<Value> = selected
        .into_iter()
        .skip(start)
        .take(page_size)
        .cloned()
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /_sandbox/watchtopics/{name}/purge?through=N`: drops the topic's events up to `N`, as
/// the 7-day retention would, so a test can reach the 410 answer.
pub(crate) async fn purge_route(req: HttpRequest, state: web::Data<SandboxState>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default().to_owned();
    let through = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "through")
        .and_then(|(_, v)| v.parse::<i64>().ok());
    let Some(through) = through else {
        return central_error(400, "through=N (a sequence id) is required");
    };
    let purged = state.amplify.watch.lock().purge(&name, through);
    HttpResponse::Ok().json(json!({"purged": purged}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thin_payload_keeps_identity_attributes_tags_and_metadata_only() {
        let full = json!({"group": "catalog", "apiVersion": "v1", "kind": "Subscription", "name": "s1",
                          "title": "S", "metadata": {"id": "i"}, "attributes": {"a": "b"}, "tags": ["t"],
                          "spec": {"plan": {"name": "p"}}, "approval": {"state": "pending"},
                          "state": {"name": "active"}});
        assert_eq!(
            thin_payload(&full),
            json!({"group": "catalog", "kind": "Subscription", "name": "s1", "metadata": {"id": "i"},
                   "attributes": {"a": "b"}, "tags": ["t"]})
        );
    }

    #[test]
    fn the_rest_time_has_micros_and_no_offset() {
        let at = DateTime::parse_from_rfc3339("2024-10-28T15:43:02.689148Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(watch_timestamp(at), "2024-10-28 15:43:02.689148");
    }
}
