//! Turns OpenAPI 3.0 schema objects into strict JSON Schema 2020-12: `allOf` flattened into one
//! closed object, `readOnly` fields dropped from requests, nulls admitted in responses.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// Which side of an exchange a schema describes; the two differ in `readOnly` and null handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

/// Prefix of every schema reference in the description.
pub const SCHEMA_REF_PREFIX: &str = "#/components/schemas/";

/// The spec's `allOf` chains are a few levels deep; this bounds a malformed cycle.
const MAX_ALLOF_DEPTH: usize = 16;

/// Converts one OpenAPI schema object. `components` holds the raw `components.schemas`, needed to
/// inline the parts of an `allOf`.
pub fn convert(schema: &Value, components: &Map<String, Value>, dir: Direction) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    // OpenAPI 3.0 ignores the siblings of `$ref` (`default`, `title`, `type: object`).
    if let Some(Value::String(target)) = obj.get("$ref") {
        return json!({ "$ref": target });
    }
    if obj.contains_key("allOf") {
        let flat = flatten_all_of(schema, components, 0);
        return convert(&flat, components, dir);
    }

    let mut out = Map::new();
    let mut types: Vec<Value> = match obj.get("type") {
        Some(Value::String(t)) => vec![Value::String(t.clone())],
        _ => Vec::new(),
    };
    let is_object = types.first().and_then(Value::as_str) == Some("object")
        || (types.is_empty() && obj.contains_key("properties"));

    if let Some(Value::Object(props)) = obj.get("properties") {
        let mut converted = Map::new();
        for (name, prop) in props {
            if dir == Direction::Request && is_read_only(prop) {
                continue;
            }
            converted.insert(name.clone(), convert(prop, components, dir));
        }
        let required: Vec<Value> = obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.as_str().is_some_and(|r| converted.contains_key(r)))
            .cloned()
            .collect();
        out.insert("properties".into(), Value::Object(converted));
        if !required.is_empty() {
            out.insert("required".into(), Value::Array(required));
        }
        // Strict mode: a field the spec does not name is an invention, unless the schema says
        // otherwise. An object without `properties` is a free-form map and stays open.
        let additional = match obj.get("additionalProperties") {
            Some(Value::Object(a)) => convert(&Value::Object(a.clone()), components, dir),
            Some(other) => other.clone(),
            None => Value::Bool(false),
        };
        out.insert("additionalProperties".into(), additional);
    } else if is_object && let Some(add) = obj.get("additionalProperties") {
        out.insert("additionalProperties".into(), convert(add, components, dir));
    }

    if let Some(items) = obj.get("items") {
        out.insert("items".into(), convert(items, components, dir));
    }
    for keyword in [
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    ] {
        if let Some(v) = obj.get(keyword) {
            out.insert(keyword.into(), v.clone());
        }
    }
    // OpenAPI 3.0 spells exclusive bounds as booleans beside minimum/maximum.
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if obj.get(flag) == Some(&Value::Bool(true))
            && let Some(limit) = out.remove(bound)
        {
            out.insert(flag.into(), limit);
        }
    }
    if let Some(Value::String(pattern)) = obj.get("pattern") {
        out.insert("pattern".into(), Value::String(regex_literal(pattern)));
    }
    if let Some(Value::String(format)) = obj.get("format") {
        match format.as_str() {
            "date-time" | "date" => {
                out.insert("format".into(), Value::String(format.clone()));
            }
            // A decimal travels as a string of digits (`"0.002"`), at most 9 places in Recurly.
            "decimal" if types.first().and_then(Value::as_str) == Some("string") => {
                out.insert(
                    "pattern".into(),
                    Value::String(r"^-?[0-9]+(\.[0-9]+)?$".into()),
                );
            }
            // `float`, `email`, `binary`: no check beyond the type (Recurly's own email check is
            // looser than RFC 5322, so checking it here would invent a rule).
            _ => {}
        }
    }

    let nullable = obj.get("nullable") == Some(&Value::Bool(true));
    // The spec never says `nullable`, yet Recurly answers `null` for unset fields (reference §6:
    // `"billed_at": null`), so in responses every typed value may be null.
    let admit_null = nullable || dir == Direction::Response;
    if let Some(Value::Array(values)) = obj.get("enum") {
        let mut values = values.clone();
        if admit_null && !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
        out.insert("enum".into(), Value::Array(values));
    }
    if !types.is_empty() {
        if admit_null {
            types.push(Value::String("null".into()));
        }
        let ty = if types.len() == 1 {
            types.remove(0)
        } else {
            Value::Array(types)
        };
        out.insert("type".into(), ty);
    }
    Value::Object(out)
}

fn is_read_only(schema: &Value) -> bool {
    schema.get("readOnly") == Some(&Value::Bool(true))
}

/// `/^[a-z0-9_+-]+$/i` (a Ruby/JS regex literal, as the spec writes patterns) → `(?i)^[a-z0-9_+-]+$`.
fn regex_literal(pattern: &str) -> String {
    let literal = pattern
        .strip_prefix('/')
        .and_then(|rest| rest.rfind('/').map(|end| (&rest[..end], &rest[end + 1..])));
    if let Some((body, flags)) = literal
        && flags.chars().all(|c| c.is_ascii_alphabetic())
    {
        let inline: String = flags
            .chars()
            .filter(|c| matches!(c, 'i' | 'm' | 's'))
            .collect();
        return if inline.is_empty() {
            body.to_owned()
        } else {
            format!("(?{inline}){body}")
        };
    }
    pattern.to_owned()
}

/// Merges an `allOf` (and its siblings) into one object schema with the union of the parts'
/// properties and required lists, so that `additionalProperties: false` sees every field the
/// composition allows. Recurly composes only object schemas this way (`Account`, `AccountCreate`,
/// `InvoiceAddress`, `ErrorMayHaveTransaction`, ...).
fn flatten_all_of(schema: &Value, components: &Map<String, Value>, depth: usize) -> Value {
    let mut properties = Map::new();
    let mut required = BTreeSet::new();
    let mut read_only = false;
    collect_parts(
        schema,
        components,
        depth,
        &mut properties,
        &mut required,
        &mut read_only,
    );
    let mut out = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        out["required"] = Value::Array(required.into_iter().map(Value::String).collect());
    }
    if read_only {
        out["readOnly"] = Value::Bool(true);
    }
    out
}

fn collect_parts(
    schema: &Value,
    components: &Map<String, Value>,
    depth: usize,
    properties: &mut Map<String, Value>,
    required: &mut BTreeSet<String>,
    read_only: &mut bool,
) {
    if depth > MAX_ALLOF_DEPTH {
        return;
    }
    let Some(obj) = schema.as_object() else {
        return;
    };
    if let Some(Value::String(target)) = obj.get("$ref") {
        if let Some(resolved) = target
            .strip_prefix(SCHEMA_REF_PREFIX)
            .and_then(|name| components.get(name))
        {
            collect_parts(
                resolved,
                components,
                depth + 1,
                properties,
                required,
                read_only,
            );
        }
        return;
    }
    *read_only |= is_read_only(schema);
    for part in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        collect_parts(part, components, depth + 1, properties, required, read_only);
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, prop) in props {
            properties.insert(name.clone(), prop.clone());
        }
    }
    for name in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = name.as_str() {
            required.insert(name.to_owned());
        }
    }
}

/// Names of every component a converted schema refers to, directly or through other components.
pub fn reachable_components(start: &Value, converted: &Map<String, Value>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                let target = map.get("$ref").and_then(Value::as_str);
                if let Some(name) = target.and_then(|t| t.strip_prefix(SCHEMA_REF_PREFIX))
                    && seen.insert(name.to_owned())
                {
                    stack.extend(converted.get(name));
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_literals_become_rust_patterns_with_inline_flags() {
        assert_eq!(regex_literal("/^[a-z0-9_+-]+$/i"), "(?i)^[a-z0-9_+-]+$");
        assert_eq!(regex_literal("/^[a-z0-9_+-]+$/"), "^[a-z0-9_+-]+$");
        assert_eq!(regex_literal("^plain$"), "^plain$");
    }

    #[test]
    fn nullable_admits_null_in_requests_too() {
        let schema = json!({"type": "string", "nullable": true, "enum": ["a", "b"]});
        let request = convert(&schema, &Map::new(), Direction::Request);
        assert_eq!(request["type"], json!(["string", "null"]));
        assert_eq!(request["enum"], json!(["a", "b", null]));
        let plain = convert(&json!({"type": "string"}), &Map::new(), Direction::Request);
        assert_eq!(plain["type"], json!("string"));
    }

    #[test]
    fn read_only_fields_are_dropped_from_requests_and_kept_in_responses() {
        let schema = json!({"type": "object", "properties": {
            "id": {"type": "string", "readOnly": true}, "name": {"type": "string"}}});
        let request = convert(&schema, &Map::new(), Direction::Request);
        let response = convert(&schema, &Map::new(), Direction::Response);
        assert!(request["properties"].get("id").is_none());
        assert!(response["properties"].get("id").is_some());
        assert_eq!(request["additionalProperties"], json!(false));
    }
}
