//! A plugin's config schema: a small, checked subset of JSON Schema, enough to catch a
//! mistyped or missing setting before a plugin starts. A schema using a keyword outside the
//! subset is refused when the manifest is read, so nothing in it is silently ignored.

use serde_json::Value;

/// Keywords understood (`title`, `description`, `default` and `$schema` are accepted and
/// carry no rule).
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "title",
    "description",
    "default",
    "$schema",
];

const TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null",
];

/// How deep a schema may nest; deeper ones are refused rather than walked.
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSchema(Value);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("schema at {path}: {message}")]
    Schema { path: String, message: String },
    #[error("config at {path}: {message}")]
    Config { path: String, message: String },
}

impl ConfigSchema {
    /// Checks that `schema` uses only the supported subset, correctly.
    pub fn new(schema: Value) -> Result<ConfigSchema, SchemaError> {
        check_schema(&schema, "$", 0)?;
        Ok(ConfigSchema(schema))
    }

    pub fn as_json(&self) -> &Value {
        &self.0
    }

    /// Checks a config against the schema; the first problem found is returned.
    pub fn validate(&self, config: &Value) -> Result<(), SchemaError> {
        validate(&self.0, config, "$")
    }
}

fn bad_schema(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError::Schema {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn check_schema(s: &Value, path: &str, depth: usize) -> Result<(), SchemaError> {
    if depth > MAX_DEPTH {
        return Err(bad_schema(
            path,
            format!("nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Value::Object(map) = s else {
        return Err(bad_schema(path, "a schema is a table (JSON object)"));
    };
    for (k, v) in map {
        match k.as_str() {
            "type" => match v.as_str() {
                Some(t) if TYPES.contains(&t) => {}
                _ => return Err(bad_schema(path, format!("type must be one of {TYPES:?}"))),
            },
            "properties" => {
                let Value::Object(props) = v else {
                    return Err(bad_schema(path, "properties must be a table"));
                };
                for (name, sub) in props {
                    check_schema(sub, &format!("{path}.{name}"), depth + 1)?;
                }
            }
            "items" => check_schema(v, &format!("{path}[]"), depth + 1)?,
            "required" => {
                if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                    return Err(bad_schema(path, "required must be a list of names"));
                }
            }
            "additionalProperties" => {
                if !v.is_boolean() {
                    return Err(bad_schema(
                        path,
                        "additionalProperties must be true or false",
                    ));
                }
            }
            "enum" => {
                if v.as_array().is_none_or(Vec::is_empty) {
                    return Err(bad_schema(path, "enum must be a non-empty list"));
                }
            }
            "minimum" | "maximum" => {
                if !v.is_number() {
                    return Err(bad_schema(path, format!("{k} must be a number")));
                }
            }
            "minLength" | "maxLength" => {
                if !v.is_u64() {
                    return Err(bad_schema(path, format!("{k} must be a whole number")));
                }
            }
            other if KEYWORDS.contains(&other) => {}
            other => {
                return Err(bad_schema(
                    path,
                    format!("keyword {other:?} is not supported (supported: {KEYWORDS:?})"),
                ));
            }
        }
    }
    Ok(())
}

fn validate(s: &Value, v: &Value, path: &str) -> Result<(), SchemaError> {
    let fail = |message: String| {
        Err(SchemaError::Config {
            path: path.to_owned(),
            message,
        })
    };
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => v.is_null(),
        };
        if !ok {
            return fail(format!("expected {t}"));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        return fail(format!("must be one of {}", Value::Array(options.clone())));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return fail(format!("must be at least {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return fail(format!("must be at most {max}"));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            return fail(format!("must be at least {min} characters"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            return fail(format!("must be at most {max} characters"));
        }
    }
    if let Value::Object(obj) = v {
        let props = s.get("properties").and_then(Value::as_object);
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(name) {
                return fail(format!("{name:?} is required"));
            }
        }
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(sub, child, &format!("{path}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return fail(format!("unknown setting {k:?}"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (v, s.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(sub, item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> ConfigSchema {
        ConfigSchema::new(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["feed"],
            "properties": {
                "feed": {"type": "string", "minLength": 1},
                "interval_s": {"type": "integer", "minimum": 1, "maximum": 3600},
                "mode": {"enum": ["csv", "http"]},
                "warehouses": {"type": "array", "items": {"type": "string"}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn configs_are_checked() {
        let s = schema();
        let cases = [
            (json!({"feed": "a.csv"}), None),
            (
                json!({"feed": "a.csv", "interval_s": 60, "mode": "csv", "warehouses": ["w1"]}),
                None,
            ),
            (json!({}), Some("\"feed\" is required")),
            (json!({"feed": ""}), Some("at least 1 characters")),
            (json!({"feed": 1}), Some("expected string")),
            (json!({"feed": "a", "interval_s": 0}), Some("at least 1")),
            (
                json!({"feed": "a", "interval_s": 1.5}),
                Some("expected integer"),
            ),
            (json!({"feed": "a", "mode": "ftp"}), Some("must be one of")),
            (
                json!({"feed": "a", "warehouses": [1]}),
                Some("$.warehouses[0]"),
            ),
            (json!({"feed": "a", "other": 1}), Some("unknown setting")),
            (json!([]), Some("expected object")),
        ];
        for (config, want) in cases {
            let got = s.validate(&config);
            match want {
                None => assert_eq!(got, Ok(()), "{config}"),
                Some(w) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(w), "{config}: {e}");
                }
            }
        }
    }

    #[test]
    fn schemas_outside_the_subset_are_refused() {
        for bad in [
            json!("object"),
            json!({"type": "map"}),
            json!({"pattern": "^a"}),
            json!({"properties": {"a": {"oneOf": []}}}),
            json!({"required": "a"}),
            json!({"enum": []}),
            json!({"maxLength": -1}),
        ] {
            assert!(ConfigSchema::new(bad.clone()).is_err(), "{bad}");
        }
    }
}
