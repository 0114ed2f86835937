//! Checks JSON bodies against the upstreams' own API descriptions, so that neither the sandbox
//! nor the bridge's clients can drift from the real contract unnoticed.
//!
//! The Recurly description is `openapi/recurly-v2021-02-25.yaml`, vendored unchanged from
//! `recurly/recurly-client-go` `openapi/api.yaml` (MIT licence, © Recurly, Inc.; the same file
//! ships in every official v4 client). It is read once per process. Schemas are checked in
//! *strict* mode: an object may carry only the fields the spec names, so an emulator or client
//! that invents a field is caught.
//!
//! ```no_run
//! use billing_bridge_contract::RecurlyContract;
//! let contract = RecurlyContract::get();
//! let body = serde_json::json!({"code": "gold", "name": "Gold",
//!                               "currencies": [{"currency": "USD", "unit_amount": 10}]});
//! contract.validate_request("POST", "/plans", &body).unwrap();
//! ```

mod exchanges;
mod schema;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

pub use exchanges::{ExchangePolicy, check_recorded_answers_complete, check_recorded_exchanges};
use schema::{Direction, SCHEMA_REF_PREFIX};

const RECURLY_OPENAPI_YAML: &str = include_str!("../openapi/recurly-v2021-02-25.yaml");

/// Schemas Recurly uses for error answers; on the wire they are wrapped as `{"error": {...}}`
/// (reference §1.3, from the Go client's `errorResponse`).
const ERROR_SCHEMAS: [&str; 2] = ["Error", "ErrorMayHaveTransaction"];

/// One way in which a body (or the exchange itself) departs from the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What was being checked, e.g. `create_plan (POST /plans) request`.
    pub operation: String,
    /// JSON pointer into the checked body (`""` for the whole body).
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(body)"
        } else {
            &self.pointer
        };
        write!(f, "{}: {pointer}: {}", self.operation, self.message)
    }
}

/// Every violation found in one check; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} contract violation(s):", self.0.len())?;
        for v in &self.0 {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

impl Violations {
    fn single(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Violations(vec![Violation {
            operation: operation.into(),
            pointer: String::new(),
            message: message.into(),
        }])
    }

    fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// What the response of a status carries.
#[derive(Clone, Debug)]
enum ResponseBody {
    /// A JSON body described by this component.
    Schema(String),
    /// The spec describes no body (e.g. `204`) or a non-JSON one (a PDF).
    None,
}

#[derive(Clone, Debug)]
struct Operation {
    id: String,
    method: String,
    template: String,
    segments: Vec<Option<String>>,
    request: Option<(String, bool)>,
    responses: HashMap<String, ResponseBody>,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} ({} {})", self.id, self.method, self.template)
    }
}

/// The Recurly v3 API description (`v2021-02-25`), ready to validate bodies.
pub struct RecurlyContract {
    operations: Vec<Operation>,
    request_schemas: Map<String, Value>,
    response_schemas: Map<String, Value>,
    validators: Mutex<HashMap<(String, Direction), Arc<jsonschema::Validator>>>,
}

impl fmt::Debug for RecurlyContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecurlyContract")
            .field("operations", &self.operations.len())
            .field("schemas", &self.response_schemas.len())
            .finish()
    }
}

impl RecurlyContract {
    /// The contract, parsed on first use and shared by the whole process.
    pub fn get() -> &'static RecurlyContract {
        static CONTRACT: OnceLock<RecurlyContract> = OnceLock::new();
        CONTRACT.get_or_init(|| {
            let spec: Value = serde_yaml::from_str(RECURLY_OPENAPI_YAML)
                .expect("the vendored Recurly OpenAPI description parses as YAML");
            RecurlyContract::from_spec(&spec)
        })
    }

    fn from_spec(spec: &Value) -> RecurlyContract {
        let mut components = spec
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        complete_error_schema(&mut components);
        let convert_all = |dir| {
            components
                .iter()
                .map(|(name, s)| (name.clone(), schema::convert(s, &components, dir)))
                .collect::<Map<_, _>>()
        };
        RecurlyContract {
            operations: read_operations(spec),
            request_schemas: convert_all(Direction::Request),
            response_schemas: convert_all(Direction::Response),
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a request body sent to `method path` (Recurly path without the base, query allowed).
    /// `Value::Null` stands for "no body".
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<(), Violations> {
        let op = self.operation(method, path)?;
        let label = format!("{} request", op.label());
        match (&op.request, body) {
            (None, Value::Null) => Ok(()),
            (None, _) => Err(Violations::single(
                label,
                "the spec describes no request body",
            )),
            (Some((_, true)), Value::Null) => Err(Violations::single(
                label,
                "the spec requires a request body",
            )),
            (Some((_, false)), Value::Null) => Ok(()),
            (Some((schema, _)), body) => {
                self.validate_schema(schema, Direction::Request, body, &label, "")
            }
        }
    }

    /// Checks the body Recurly (or the sandbox) answered to `method path` with `status`.
    /// Error bodies are expected in their wire form `{"error": {...}}`. A status the operation
    /// does not describe is a violation; `default` covers only error statuses (≥ 400), since the
    /// spec describes it as "Unexpected error." with the `Error` schema, and an error status is
    /// always allowed with an `Error` body.
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), Violations> {
        let op = self.operation(method, path)?;
        let label = format!("{} response {status}", op.label());
        // Errors that can hit any call (406 version, 401/403 key, 429 limit, 5xx) are described
        // once in the spec's introduction, not per operation; `delete_plan`, for one, lists only
        // 200 and 404. So an undescribed error status falls back to `default`, then to `Error`.
        let generic_error = ResponseBody::Schema("Error".to_owned());
        let described = op.responses.get(&status.to_string()).or_else(|| {
            (status >= 400).then(|| op.responses.get("default").unwrap_or(&generic_error))
        });
        let Some(described) = described else {
            let mut known: Vec<&str> = op.responses.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(Violations::single(
                label,
                format!(
                    "status {status} is not described (described: {})",
                    known.join(", ")
                ),
            ));
        };
        match described {
            _ if method.eq_ignore_ascii_case("HEAD") && is_empty_body(body) => Ok(()),
            // 502/503/504 come from Recurly's edge, "no type; status only" (reference §1.3):
            // no body, or a text one, is fine; a JSON one must still be a Recurly error.
            _ if (502..=504).contains(&status) && (is_empty_body(body) || body.is_string()) => {
                Ok(())
            }
            _ if method.eq_ignore_ascii_case("HEAD") => {
                Err(Violations::single(label, "a HEAD answer has no body"))
            }
            ResponseBody::None if is_empty_body(body) => Ok(()),
            ResponseBody::None => Err(Violations::single(label, "the spec describes no body")),
            ResponseBody::Schema(name) if ERROR_SCHEMAS.contains(&name.as_str()) => {
                let inner = match body.as_object() {
                    Some(map) if map.len() == 1 && map.contains_key("error") => &map["error"],
                    _ => {
                        return Err(Violations::single(
                            label,
                            format!(
                                "an error body must be {{\"error\": {{...}}}} alone, got {body}"
                            ),
                        ));
                    }
                };
                if !inner.is_object() {
                    return Err(Violations::single(label, "`error` must be an object"));
                }
                self.validate_schema(name, Direction::Response, inner, &label, "/error")
            }
            ResponseBody::Schema(name) => {
                if !body.is_object() {
                    return Err(Violations::single(
                        label,
                        format!("expected a `{name}` object, got {body}"),
                    ));
                }
                self.validate_schema(name, Direction::Response, body, &label, "")
            }
        }
    }

    /// Checks that a success answer to `method path` carries every property the spec documents
    /// for its schema, in every object it holds (`null` counts as present; the contents of a
    /// `null` are not looked into). Recurly answers with each documented field, `null` or `[]`
    /// when unset, so an emulator leaving fields out teaches clients to expect absences the real
    /// service never sends. Error answers and undescribed statuses are `validate_response`'s.
    pub fn missing_response_fields(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), Violations> {
        let op = self.operation(method, path)?;
        if method.eq_ignore_ascii_case("HEAD") || !(200..300).contains(&status) {
            return Ok(());
        }
        let Some(ResponseBody::Schema(name)) = op.responses.get(&status.to_string()) else {
            return Ok(());
        };
        let label = format!("{} response {status}", op.label());
        let mut found = Vec::new();
        let root = json!({ "$ref": format!("{SCHEMA_REF_PREFIX}{name}") });
        self.collect_missing(&root, body, "", &label, &mut found, 0);
        Violations(found).into_result()
    }

    fn collect_missing(
        &self,
        schema: &Value,
        body: &Value,
        pointer: &str,
        label: &str,
        found: &mut Vec<Violation>,
        depth: usize,
    ) {
        // The spec's nesting is shallow; the bound only stops a malformed self-reference.
        if depth > 32 {
            return;
        }
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target.strip_prefix(SCHEMA_REF_PREFIX).unwrap_or(target);
            if let Some(resolved) = self.response_schemas.get(name) {
                self.collect_missing(resolved, body, pointer, label, found, depth + 1);
            }
            return;
        }
        match body {
            Value::Object(fields) => {
                let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                    return;
                };
                for (key, prop) in props {
                    match fields.get(key) {
                        None => found.push(Violation {
                            operation: label.to_owned(),
                            pointer: format!("{pointer}/{key}"),
                            message: format!(
                                "the documented field `{key}` is missing (Recurly sends it, `null` or `[]` when unset)"
                            ),
                        }),
                        Some(Value::Null) => {}
                        Some(value) => self.collect_missing(
                            prop,
                            value,
                            &format!("{pointer}/{key}"),
                            label,
                            found,
                            depth + 1,
                        ),
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.collect_missing(
                            item_schema,
                            item,
                            &format!("{pointer}/{i}"),
                            label,
                            found,
                            depth + 1,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// The operation the spec describes for `method path`, or why there is none.
    fn operation(&self, method: &str, path: &str) -> Result<&Operation, Violations> {
        let bare = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = bare.trim_end_matches('/').split('/').skip(1).collect();
        let matches_path = |op: &&Operation| {
            op.segments.len() == segments.len()
                && op
                    .segments
                    .iter()
                    .zip(&segments)
                    .all(|(want, got)| match want {
                        Some(literal) => literal == got,
                        None => !got.is_empty(),
                    })
        };
        let candidates: Vec<&Operation> = self.operations.iter().filter(matches_path).collect();
        let specificity = |op: &&Operation| {
            // Literal segments beat templated ones, earlier ones first:
            // `/plans/{plan_id}/add_ons` over `/plans/{plan_id}/{x}`.
            op.segments
                .iter()
                .map(|s| if s.is_some() { '1' } else { '0' })
                .collect::<String>()
        };
        let best = candidates.iter().map(specificity).max();
        let Some(best) = best else {
            return Err(Violations::single(
                format!("{method} {bare}"),
                "the spec describes no such path",
            ));
        };
        // "Every GET listing endpoint also supports the HEAD HTTP method" (the spec's
        // introduction, "Counting with HEAD"); a HEAD is checked as its GET, without a body.
        let method = if method.eq_ignore_ascii_case("HEAD") {
            "GET"
        } else {
            method
        };
        candidates
            .into_iter()
            .filter(|op| specificity(op) == best)
            .find(|op| op.method.eq_ignore_ascii_case(method))
            .ok_or_else(|| {
                Violations::single(
                    format!("{method} {bare}"),
                    "the spec describes this path but not this method",
                )
            })
    }

    fn validate_schema(
        &self,
        name: &str,
        dir: Direction,
        body: &Value,
        label: &str,
        pointer_prefix: &str,
    ) -> Result<(), Violations> {
        let validator = self.validator(name, dir);
        let violations = validator
            .iter_errors(body)
            .map(|e| Violation {
                operation: label.to_owned(),
                pointer: format!("{pointer_prefix}{}", e.instance_path().as_str()),
                message: e.to_string(),
            })
            .collect();
        Violations(violations).into_result()
    }

    fn validator(&self, name: &str, dir: Direction) -> Arc<jsonschema::Validator> {
        let key = (name.to_owned(), dir);
        if let Some(v) = self.lock_validators().get(&key) {
            return v.clone();
        }
        let converted = match dir {
            Direction::Request => &self.request_schemas,
            Direction::Response => &self.response_schemas,
        };
        let entry = json!({ "$ref": format!("{SCHEMA_REF_PREFIX}{name}") });
        let reachable = schema::reachable_components(&entry, converted);
        let schemas: Map<String, Value> = reachable
            .into_iter()
            .filter_map(|n| converted.get(&n).map(|s| (n, s.clone())))
            .collect();
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("{SCHEMA_REF_PREFIX}{name}"),
            "components": { "schemas": schemas },
        });
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .should_ignore_unknown_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema `{name}` of the Recurly spec compiles: {e}"));
        let validator = Arc::new(validator);
        self.lock_validators().insert(key, validator.clone());
        validator
    }

    fn lock_validators(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, Direction), Arc<jsonschema::Validator>>> {
        // A panic while compiling leaves the cache itself intact.
        self.validators.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn is_empty_body(body: &Value) -> bool {
    match body {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Adds to `Error` the two fields Recurly sends that its schema leaves out:
/// `params[].message` (reference §1.3, from the Go client's fixtures:
/// `{"param":"string","message":"is bad"}`) and `acceptable_accept_headers` (the spec's own
/// description, "Unsupported Versions", shows it on the 406 answer).
fn complete_error_schema(components: &mut Map<String, Value>) {
    let Some(error) = components.get_mut("Error") else {
        return;
    };
    if let Some(props) = error.pointer_mut("/properties/params/items/properties")
        && let Some(props) = props.as_object_mut()
    {
        props
            .entry("message")
            .or_insert_with(|| json!({"type": "string"}));
    }
    if let Some(props) = error
        .pointer_mut("/properties")
        .and_then(Value::as_object_mut)
    {
        props
            .entry("acceptable_accept_headers")
            .or_insert_with(|| json!({"type": "array", "items": {"type": "string"}}));
    }
}

fn read_operations(spec: &Value) -> Vec<Operation> {
    let mut operations = Vec::new();
    let Some(paths) = spec.get("paths").and_then(Value::as_object) else {
        return operations;
    };
    for (template, item) in paths {
        let segments = template
            .split('/')
            .skip(1)
            .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
            .collect();
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            if !matches!(
                method.as_str(),
                "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
            ) {
                continue;
            }
            let request = op.get("requestBody").and_then(|rb| {
                let name = json_schema_ref(rb)?;
                let required = rb.get("required") == Some(&Value::Bool(true));
                Some((name, required))
            });
            let responses = op
                .get("responses")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(status, r)| {
                    let body = json_schema_ref(r).map_or(ResponseBody::None, ResponseBody::Schema);
                    (status.clone(), body)
                })
                .collect();
            operations.push(Operation {
                id: op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .unwrap_or("unnamed")
                    .to_owned(),
                method: method.to_ascii_uppercase(),
                template: template.clone(),
                segments: Vec::clone(&segments),
                request,
                responses,
            });
        }
    }
    operations
}

/// The component named by `content."application/json".schema.$ref` of a request or response.
fn json_schema_ref(container: &Value) -> Option<String> {
    container
        .pointer("/content/application~1json/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(SCHEMA_REF_PREFIX))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
