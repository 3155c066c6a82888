//! Notification templates (minijinja): checked when saved, so that sending never meets a
//! broken one.
//!
//! A template sees `event` (`type`, `event_id`, `timestamp`) and `data` (the order or
//! shipment). Undefined values are chainable and render empty, so a template that names a
//! field one event lacks still renders; what is refused at save is what can never render:
//! bad syntax, unknown filters or tests, errors while rendering a sample event.

use minijinja::{Environment, UndefinedBehavior, Value};

/// The longest template source.
pub const MAX_SOURCE: usize = 64 * 1024;

/// What a template renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub body: String,
}

/// A template problem, by field (`subject` or `body`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub field: &'static str,
    pub message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // Plain text: notifications are email and SMS bodies, not HTML pages.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_recursion_limit(32);
    env
}

fn render_one(
    env: &Environment<'_>,
    field: &'static str,
    source: &str,
    context: &Value,
) -> Result<String, TemplateError> {
    if source.len() > MAX_SOURCE {
        return Err(TemplateError {
            field,
            message: format!("must be at most {MAX_SOURCE} bytes"),
        });
    }
    let describe = |e: minijinja::Error| TemplateError {
        field,
        message: match e.line() {
            Some(line) => format!("line {line}: {}", e.kind()),
            None => e.kind().to_string(),
        } + &e.detail().map(|d| format!(": {d}")).unwrap_or_default(),
    };
    let template = env.template_from_str(source).map_err(describe)?;
    template.render(context).map_err(describe)
}

/// The context a template sees for an event.
pub fn context(
    event_type: &str,
    event_id: &str,
    timestamp: &str,
    data: &serde_json::Value,
) -> Value {
    minijinja::context! {
        event => minijinja::context! { type => event_type, event_id => event_id, timestamp => timestamp },
        data => Value::from_serialize(data),
    }
}

/// Renders `subject` and `body` for `context`; every problem, by field.
pub fn render(
    subject: Option<&str>,
    body: &str,
    context: &Value,
) -> Result<Rendered, Vec<TemplateError>> {
    let env = environment();
    let subject = subject.map(|s| render_one(&env, "subject", s, context));
    let body = render_one(&env, "body", body, context);
    match (subject.transpose(), body) {
        (Ok(subject), Ok(body)) => Ok(Rendered { subject, body }),
        (s, b) => Err(s.err().into_iter().chain(b.err()).collect()),
    }
}

/// A sample event's data of each kind, for checking a template when it is saved.
pub fn sample_data(event_type: &str) -> serde_json::Value {
    if event_type.starts_with("shipment.") {
        serde_json::json!({
            "id": "0193a0a0-0000-7000-8000-000000000002",
            "order_id": "0193a0a0-0000-7000-8000-000000000001",
            "status": "shipped",
            "carrier": "manual",
            "tracking_number": "TRACK123",
            "warehouse": "W1",
        })
    } else {
        serde_json::json!({
            "id": "0193a0a0-0000-7000-8000-000000000001",
            "status": "confirmed",
            "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price": {"amount": 1999, "currency": "USD"}}],
            "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "total": {"amount": 3998, "currency": "USD"},
        })
    }
}

/// Checks a template for `event_type` by rendering a sample event with it.
pub fn check(
    event_type: &str,
    subject: Option<&str>,
    body: &str,
) -> Result<Rendered, Vec<TemplateError>> {
    let data = sample_data(event_type);
    let ctx = context(
        event_type,
        "0193a0a0-0000-7000-8000-00000000000e",
        "2026-01-01T00:00:00.000Z",
        &data,
    );
    render(subject, body, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_event_and_data_and_tolerates_missing_fields() {
        let r = check(
            "order.created",
            Some("Order {{ data.id }} {{ event.type }}"),
            "Hi {{ data.customer.name }}, {{ data.lines | length }} line(s). {{ data.nothing.deeper }}!",
        )
        .unwrap();
        assert_eq!(
            r.subject.as_deref(),
            Some("Order 0193a0a0-0000-7000-8000-000000000001 order.created")
        );
        assert_eq!(r.body, "Hi Ada Lovelace, 1 line(s). !");
    }

    #[test]
    fn broken_templates_are_refused_by_field() {
        let errors = check(
            "order.created",
            Some("{{ data.id "),
            "{{ data | no_such_filter }}",
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["subject", "body"]);
        assert!(errors[1].message.contains("filter"), "{errors:?}");
        assert!(check("order.created", None, "{% for %}").is_err());
        assert!(check("order.created", None, &"x".repeat(MAX_SOURCE + 1)).is_err());
        assert!(check("order.created", None, "no markup at all").is_ok());
    }
}
