//! Policies: per-vhost rules that set optional arguments on the queues and
//! exchanges whose names match a pattern, changeable at run time (RabbitMQ's
//! `set_policy`, `/api/policies`). One policy applies to an object: the
//! matching one with the highest priority (then the first by name).
//!
//! With both a policy and a declared argument, numeric limits take the
//! lower value (`message-ttl`, `expires`, `max-length`, `max-length-bytes`,
//! `delivery-limit`) and for the other keys the declared argument wins, as
//! in RabbitMQ.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTo {
    Queues,
    Exchanges,
    #[default]
    All,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<ApplyTo> {
        match s {
            "queues" => Some(ApplyTo::Queues),
            "exchanges" => Some(ApplyTo::Exchanges),
            "all" => Some(ApplyTo::All),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// A policy as stored and as the management API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: ApplyTo,
    pub definition: Map<String, Value>,
    #[serde(default)]
    pub priority: i64,
}

#[derive(Debug)]
pub struct Policy {
    pub record: PolicyRecord,
    pattern: Regex,
}

impl Policy {
    /// Validates a policy; the error is RabbitMQ's text.
    pub fn new(record: PolicyRecord) -> Result<Policy, String> {
        let pattern = Regex::new(&record.pattern).map_err(|_| {
            format!(
                "Validation failed\n\n{} is not a valid regular expression\n",
                erlang(&Value::String(record.pattern.clone()))
            )
        })?;
        if record.definition.is_empty() {
            return Err("Validation failed\n\nno policy settings given\n".into());
        }
        validate(&record.definition)?;
        Ok(Policy { record, pattern })
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn applies_to_queue(&self, name: &str) -> bool {
        self.record.apply_to != ApplyTo::Exchanges && self.pattern.is_match(name)
    }

    pub fn applies_to_exchange(&self, name: &str) -> bool {
        self.record.apply_to != ApplyTo::Queues && self.pattern.is_match(name)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.record.definition.get(key)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(Value::as_str).map(str::to_string)
    }
}

/// The policy for an object among `policies`: highest priority, then the
/// first by name.
pub fn select(
    policies: &[std::sync::Arc<Policy>],
    applies: impl Fn(&Policy) -> bool,
) -> Option<&std::sync::Arc<Policy>> {
    policies.iter().filter(|p| applies(p)).min_by(|a, b| {
        b.record
            .priority
            .cmp(&a.record.priority)
            .then_with(|| a.record.name.cmp(&b.record.name))
    })
}

/// `value` as Erlang's `~p` prints it, for RabbitMQ-shaped error texts.
fn erlang(value: &Value) -> String {
    match value {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

fn validate(definition: &Map<String, Value>) -> Result<(), String> {
    let mut unknown = Vec::new();
    for (key, value) in definition {
        let non_negative = value.as_u64().is_some();
        let ok = match key.as_str() {
            "alternate-exchange" | "dead-letter-exchange" | "dead-letter-routing-key" => {
                value.is_string()
            }
            "message-ttl" | "max-length" | "max-length-bytes" | "delivery-limit" => non_negative,
            "expires" => value.as_u64().is_some_and(|v| v >= 1),
            "overflow" => matches!(
                value.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ),
            "queue-mode" => matches!(value.as_str(), Some("default" | "lazy")),
            _ => {
                unknown.push(erlang(&Value::String(key.clone())));
                continue;
            }
        };
        if !ok {
            let what = match key.as_str() {
                "alternate-exchange" => "alternate exchange name",
                "dead-letter-exchange" => "dead letter exchange name",
                "dead-letter-routing-key" => "dead letter routing key",
                "message-ttl" => "message TTL",
                "expires" => "queue expiry",
                "max-length" => "maximum length",
                "max-length-bytes" => "maximum length in bytes",
                "delivery-limit" => "delivery limit",
                "overflow" => "overflow value",
                _ => "queue-mode value",
            };
            return Err(format!(
                "Validation failed\n\n{} is not a valid {what}\n",
                erlang(value)
            ));
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "Validation failed\n\n[{}] are not recognised policy settings\n",
            unknown.join(",")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn policy(
        name: &str,
        pattern: &str,
        priority: i64,
        definition: Value,
    ) -> Result<Policy, String> {
        Policy::new(PolicyRecord {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: ApplyTo::Queues,
            definition: definition.as_object().cloned().unwrap_or_default(),
            priority,
        })
    }

    #[test]
    fn validation_uses_rabbitmq_texts() {
        assert_eq!(
            policy("p", ".*", 0, json!({"max-length": "abc"})).unwrap_err(),
            "Validation failed\n\n<<\"abc\">> is not a valid maximum length\n"
        );
        assert_eq!(
            policy("p", ".*", 0, json!({"expires": 0})).unwrap_err(),
            "Validation failed\n\n0 is not a valid queue expiry\n"
        );
        assert_eq!(
            policy("p", ".*", 0, json!({"foo": 1})).unwrap_err(),
            "Validation failed\n\n[<<\"foo\">>] are not recognised policy settings\n"
        );
        assert!(policy("p", "(", 0, json!({"max-length": 1})).is_err());
        assert!(policy(
            "p",
            "^a",
            0,
            json!({"max-length": 1, "overflow": "reject-publish"})
        )
        .is_ok());
    }

    #[test]
    fn highest_priority_then_name_wins() {
        let all = vec![
            Arc::new(policy("b", "^q", 1, json!({"max-length": 1})).unwrap()),
            Arc::new(policy("a", "^q", 1, json!({"max-length": 2})).unwrap()),
            Arc::new(policy("low", "^q", 0, json!({"max-length": 3})).unwrap()),
            Arc::new(policy("other", "^x", 9, json!({"max-length": 4})).unwrap()),
        ];
        let chosen = select(&all, |p| p.applies_to_queue("q1")).unwrap();
        assert_eq!(chosen.name(), "a");
        assert!(select(&all, |p| p.applies_to_queue("z")).is_none());
    }
}
