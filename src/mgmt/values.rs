//! AMQP field values to JSON and back, the way RabbitMQ's management API
//! shows arguments, headers and client properties.

use crate::protocol::{AMQPValue, FieldTable};
use base64::Engine;
use serde_json::{Map, Number, Value};

/// An AMQP value as JSON: strings as strings (lossy for non-UTF-8 bytes),
/// numbers as numbers, tables as objects, arrays as arrays.
pub fn to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
            .collect(),
    )
}

/// JSON to an AMQP table, as RabbitMQ converts management input: integers
/// become signed 64-bit (`l`), other numbers doubles, strings long strings.
/// The limits of AMQP field tables hold: keys are short strings (at most
/// 255 bytes) and nesting stops at `MAX_DEPTH`, as for a table that
/// arrives over AMQP.
pub fn table_from_json(map: &Map<String, Value>) -> Result<FieldTable, String> {
    table_at(map, 0)
}

fn value_at(value: &Value, depth: usize) -> Result<AMQPValue, String> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => {
            check_depth(depth)?;
            AMQPValue::FieldArray(
                items
                    .iter()
                    .map(|v| value_at(v, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?
                    .into(),
            )
        }
        Value::Object(map) => AMQPValue::FieldTable(table_at(map, depth)?),
    })
}

fn table_at(map: &Map<String, Value>, depth: usize) -> Result<FieldTable, String> {
    check_depth(depth)?;
    let mut table = FieldTable::default();
    for (k, v) in map {
        if k.len() > 255 {
            return Err(format!(
                "table key of {} bytes: keys are short strings (at most 255 bytes)",
                k.len()
            ));
        }
        table.insert(k.as_str().into(), value_at(v, depth + 1)?);
    }
    Ok(table)
}

fn check_depth(depth: usize) -> Result<(), String> {
    if depth >= crate::protocol::decode_guard::MAX_DEPTH {
        return Err(format!(
            "tables and arrays nested more than {} deep",
            crate::protocol::decode_guard::MAX_DEPTH
        ));
    }
    Ok(())
}
