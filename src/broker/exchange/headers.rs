//! Headers exchange: matches message headers against binding arguments.
//! `x-match` selects all/any, and whether `x-` keys take part.

use super::{Binding, Destination, Routed};
use crate::broker::arguments::{as_bytes, as_f64, as_int, as_string};
use crate::protocol::{AMQPValue, AmqpError, FieldTable};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn mode_of(args: &FieldTable) -> Result<MatchMode, String> {
    match args.inner().get("x-match") {
        None => Ok(MatchMode::All),
        Some(value) => match as_string(value).as_deref() {
            Some("all") => Ok(MatchMode::All),
            Some("any") => Ok(MatchMode::Any),
            Some("all-with-x") => Ok(MatchMode::AllWithX),
            Some("any-with-x") => Ok(MatchMode::AnyWithX),
            Some(other) => Err(format!(
                "Invalid x-match field value <<\"{other}\">>; expected all, any, all-with-x, or any-with-x"
            )),
            None => Err(format!(
                "Invalid x-match field type {}; expected longstr",
                crate::broker::arguments::type_name(value)
            )),
        },
    }
}

/// Checks a headers binding's arguments (406 on a bad `x-match`).
pub fn validate_binding_arguments(args: &FieldTable) -> Result<(), AmqpError> {
    mode_of(args)
        .map(|_| ())
        .map_err(AmqpError::precondition_failed)
}

struct HeadersBinding {
    mode: MatchMode,
    /// The keys that take part in matching, with their values.
    conditions: Vec<(String, AMQPValue)>,
    arguments: FieldTable,
    destination: Destination,
}

#[derive(Default)]
pub struct HeadersRouter {
    bindings: Vec<HeadersBinding>,
}

impl HeadersRouter {
    pub fn add(&mut self, binding: &Binding) {
        let mode = mode_of(&binding.arguments).unwrap_or(MatchMode::All);
        let with_x = matches!(mode, MatchMode::AllWithX | MatchMode::AnyWithX);
        let conditions = binding
            .arguments
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        self.bindings.push(HeadersBinding {
            mode,
            conditions,
            arguments: binding.arguments.clone(),
            destination: binding.destination.clone(),
        });
    }

    pub fn remove(&mut self, binding: &Binding) {
        if let Some(pos) = self
            .bindings
            .iter()
            .position(|b| b.destination == binding.destination && b.arguments == binding.arguments)
        {
            self.bindings.remove(pos);
        }
    }

    pub fn route(&self, headers: Option<&FieldTable>, out: &mut Routed) {
        for binding in &self.bindings {
            if matches(binding, headers) {
                out.add(&binding.destination);
            }
        }
    }
}

fn matches(binding: &HeadersBinding, headers: Option<&FieldTable>) -> bool {
    let condition_holds = |(key, expected): &(String, AMQPValue)| {
        headers
            .and_then(|h| h.inner().get(key.as_str()))
            .is_some_and(|actual| {
                matches!(expected, AMQPValue::Void) || values_equal(expected, actual)
            })
    };
    match binding.mode {
        MatchMode::All | MatchMode::AllWithX => binding.conditions.iter().all(condition_holds),
        MatchMode::Any | MatchMode::AnyWithX => binding.conditions.iter().any(condition_holds),
    }
}

/// RabbitMQ 3.x compares header values with Erlang's numeric equality:
/// integers of any width equal each other and an equal float; strings
/// compare by bytes; a string never equals a number.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    let numeric = |v: &AMQPValue| {
        matches!(v, AMQPValue::Float(_) | AMQPValue::Double(_)) || as_int(v).is_some()
    };
    if numeric(a) && numeric(b) {
        return as_f64(a) == as_f64(b);
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{names, queue};
    use super::*;
    use crate::protocol::LongString;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn routes(binding_args: FieldTable, headers: Option<FieldTable>) -> bool {
        let mut r = HeadersRouter::default();
        r.add(&Binding {
            routing_key: String::new(),
            arguments: binding_args,
            destination: Destination::Queue(queue("q")),
        });
        let mut out = Routed::default();
        r.route(headers.as_ref(), &mut out);
        !names(&out).is_empty()
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn all_and_any() {
        let all = table(&[("a", s("1")), ("b", s("2"))]);
        assert!(routes(
            all.clone(),
            Some(table(&[("a", s("1")), ("b", s("2")), ("c", s("3"))]))
        ));
        assert!(!routes(all, Some(table(&[("a", s("1"))]))));
        let any = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        assert!(routes(any.clone(), Some(table(&[("b", s("2"))]))));
        assert!(!routes(any, Some(table(&[("b", s("3"))]))));
    }

    #[test]
    fn x_keys_are_ignored_unless_with_x() {
        let plain = table(&[("x-match", s("all")), ("x-foo", AMQPValue::LongInt(1))]);
        assert!(routes(plain, None));
        let with_x = table(&[
            ("x-match", s("all-with-x")),
            ("x-foo", AMQPValue::LongInt(1)),
        ]);
        assert!(!routes(with_x.clone(), None));
        assert!(routes(
            with_x,
            Some(table(&[("x-foo", AMQPValue::LongLongInt(1))]))
        ));
        let any_empty = table(&[("x-match", s("any"))]);
        assert!(!routes(any_empty, Some(table(&[("a", s("1"))]))));
    }

    #[test]
    fn value_comparison_follows_erlang_equality() {
        let int = table(&[("n", AMQPValue::LongInt(1))]);
        assert!(routes(
            int.clone(),
            Some(table(&[("n", AMQPValue::LongLongInt(1))]))
        ));
        assert!(routes(
            int.clone(),
            Some(table(&[("n", AMQPValue::Double(1.0))]))
        ));
        assert!(!routes(int.clone(), Some(table(&[("n", s("1"))]))));
        assert!(!routes(
            int,
            Some(table(&[("n", AMQPValue::Boolean(true))]))
        ));
        let void = table(&[("p", AMQPValue::Void)]);
        assert!(routes(void, Some(table(&[("p", s("anything"))]))));
    }

    #[test]
    fn bad_x_match_is_refused() {
        let err = validate_binding_arguments(&table(&[("x-match", s("bogus"))])).unwrap_err();
        assert_eq!(err.code, 406);
        assert_eq!(
            err.text,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x"
        );
    }
}
