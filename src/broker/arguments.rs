//! Comparing and describing `x-` arguments as RabbitMQ does in its
//! "inequivalent arg" errors.

use crate::protocol::{AMQPValue, FieldTable};

/// RabbitMQ's name for an AMQP field type.
pub fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// The value as an integer, for any integer type.
pub fn as_int(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => *v as i128,
        AMQPValue::ShortShortUInt(v) => *v as i128,
        AMQPValue::ShortInt(v) => *v as i128,
        AMQPValue::ShortUInt(v) => *v as i128,
        AMQPValue::LongInt(v) => *v as i128,
        AMQPValue::LongUInt(v) => *v as i128,
        AMQPValue::LongLongInt(v) => *v as i128,
        AMQPValue::Timestamp(v) => *v as i128,
        _ => return None,
    })
}

pub fn as_f64(value: &AMQPValue) -> Option<f64> {
    match value {
        AMQPValue::Float(v) => Some(*v as f64),
        AMQPValue::Double(v) => Some(*v),
        other => as_int(other).map(|v| v as f64),
    }
}

pub fn as_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub fn as_string(value: &AMQPValue) -> Option<String> {
    as_bytes(value).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Equality across integer widths and string kinds (RabbitMQ compares
/// arguments by type class, not exact type).
pub fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    a == b
}

/// The value as RabbitMQ prints it inside quotes.
pub fn display(value: &AMQPValue) -> String {
    if let Some(i) = as_int(value) {
        return i.to_string();
    }
    if let Some(s) = as_string(value) {
        return s;
    }
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn get<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    args.inner().get(key)
}

/// Compares the listed keys (or all keys when `keys` is `None`) and returns
/// the first difference in RabbitMQ's wording:
/// `inequivalent arg 'K' for <resource>: received ... but current is ...`.
pub fn first_difference(
    current: &FieldTable,
    requested: &FieldTable,
    keys: Option<&[&str]>,
    resource: &str,
) -> Option<String> {
    let mut names: Vec<&str> = match keys {
        Some(keys) => keys.to_vec(),
        None => current
            .inner()
            .keys()
            .chain(requested.inner().keys())
            .map(|k| k.as_str())
            .collect(),
    };
    names.sort_unstable();
    names.dedup();
    for key in names {
        let (cur, req) = (get(current, key), get(requested, key));
        let detail = match (req, cur) {
            (Some(r), Some(c)) if same_value(r, c) => continue,
            (None, None) => continue,
            (Some(r), Some(c)) => {
                format!("received '{}' but current is '{}'", display(r), display(c))
            }
            (None, Some(c)) => format!(
                "received none but current is the value '{}' of type '{}'",
                display(c),
                type_name(c)
            ),
            (Some(r), None) => format!(
                "received the value '{}' of type '{}' but current is none",
                display(r),
                type_name(r)
            ),
        };
        return Some(format!("inequivalent arg '{key}' for {resource}: {detail}"));
    }
    None
}
