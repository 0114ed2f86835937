//! A small OTLP/HTTP trace receiver, so tests can see the spans the bridge exports:
//! `POST /otlp/v1/traces` takes an `ExportTraceServiceRequest` as protobuf
//! (`application/x-protobuf`, what exporters send by default) or as OTLP JSON
//! (`application/json`); `GET /_sandbox/otlp/spans` lists what arrived.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use parking_lot::Mutex;
use prost::Message;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::SandboxState;

/// One received span, ids in lowercase hex as W3C writes them.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service_name: String,
    pub attributes: Map<String, Value>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

#[derive(Default)]
pub(crate) struct OtlpState {
    spans: Mutex<Vec<ReceivedSpan>>,
}

impl OtlpState {
    pub(crate) fn reset(&self) {
        self.spans.lock().clear();
    }
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/traces", web::post().to(receive_traces));
}

pub(crate) fn control_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/otlp/spans", web::get().to(list_spans))
        .route("/otlp/spans", web::delete().to(clear_spans));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(any_value).collect())
        }
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

fn from_protobuf(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(any_value)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service_name: service_name.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = kv.value.as_ref().map(any_value).unwrap_or(Value::Null);
                            (kv.key.clone(), value)
                        })
                        .collect(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    spans
}

/// An OTLP JSON `AnyValue` (`{"stringValue": …}`; 64-bit integers arrive as strings).
fn json_any_value(value: &Value) -> Value {
    let field = |name: &str| value.get(name);
    if let Some(s) = field("stringValue") {
        s.clone()
    } else if let Some(b) = field("boolValue") {
        b.clone()
    } else if let Some(i) = field("intValue") {
        match i {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(i.clone()),
            other => other.clone(),
        }
    } else if let Some(d) = field("doubleValue") {
        d.clone()
    } else if let Some(values) = value
        .pointer("/arrayValue/values")
        .and_then(Value::as_array)
    {
        Value::Array(values.iter().map(json_any_value).collect())
    } else {
        Value::Null
    }
}

fn json_attributes(list: Option<&Value>) -> Map<String, Value> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?.to_owned();
            Some((
                key,
                kv.get("value").map(json_any_value).unwrap_or(Value::Null),
            ))
        })
        .collect()
}

fn number(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(v) => v.as_u64().unwrap_or(0),
        None => 0,
    }
}

fn from_json(request: &Value) -> Result<Vec<ReceivedSpan>, String> {
    let resource_spans = request
        .get("resourceSpans")
        .and_then(Value::as_array)
        .ok_or("expected an object with resourceSpans")?;
    let mut spans = Vec::new();
    for resource_spans in resource_spans {
        let resource = json_attributes(resource_spans.pointer("/resource/attributes"));
        let service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for scope_spans in resource_spans
            .get("scopeSpans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for span in scope_spans
                .get("spans")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = |name: &str| {
                    span.get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_ascii_lowercase()
                };
                spans.push(ReceivedSpan {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: span
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    service_name: service_name.clone(),
                    attributes: json_attributes(span.get("attributes")),
                    start_time_unix_nano: number(span.get("startTimeUnixNano")),
                    end_time_unix_nano: number(span.get("endTimeUnixNano")),
                });
            }
        }
    }
    Ok(spans)
}

async fn receive_traces(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SandboxState>,
) -> HttpResponse {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf");
    let json = content_type.starts_with("application/json");
    let received = if json {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| from_json(&v))
    } else {
        ExportTraceServiceRequest::decode(body.as_ref())
            .map(from_protobuf)
            .map_err(|e| e.to_string())
    };
    match received {
        Ok(spans) => {
            state.otlp.spans.lock().extend(spans);
            // An empty ExportTraceServiceResponse: full success.
            if json {
                HttpResponse::Ok().json(json!({}))
            } else {
                HttpResponse::Ok()
                    .content_type("application/x-protobuf")
                    .finish()
            }
        }
        Err(e) => HttpResponse::BadRequest().json(json!({
            "error": format!("not an OTLP ExportTraceServiceRequest: {e}")
        })),
    }
}

async fn list_spans(state: web::Data<SandboxState>) -> HttpResponse {
    HttpResponse::Ok().json(&*state.otlp.spans.lock())
}

async fn clear_spans(state: web::Data<SandboxState>) -> HttpResponse {
    state.otlp.reset();
    HttpResponse::NoContent().finish()
}
