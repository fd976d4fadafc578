//! SQL functions over JSON object text, for mappings whose source keeps a record as JSON (a graph's property
//! maps, in the typed JSON of `source::neo4j`):
//! - `json_get(obj, key)` -> Utf8: a string as is; a tagged value (`{"$type": ..., "value": "..."}`) as its
//!   `value`; other values as JSON text; NULL when the key is missing or null or `obj` is not an object.
//! - `json_get_float(obj, key)` -> Float64: a JSON number, else NULL.
//! - `json_get_timestamp(obj, key)` -> Timestamp(µs, UTC): a tagged datetime (offset or zone), local datetime
//!   (read as UTC) or date (midnight UTC), an RFC 3339 string, or an integer of epoch milliseconds; else NULL.
//! - `json_insert(obj, key, value_json)` -> Utf8: `obj` with `key` set to the parsed `value_json`, so a JSON
//!   column can be nested as an object inside `to_json(...)` output (not as a quoted string).

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde_json::Value;

pub fn all() -> Vec<ScalarUDF> {
    [
        ("json_get", 2),
        ("json_get_float", 2),
        ("json_get_timestamp", 2),
        ("json_insert", 3),
    ]
    .into_iter()
    .map(|(name, arity)| {
        ScalarUDF::new_from_impl(JsonFn {
            name,
            signature: Signature::uniform(arity, vec![DataType::Utf8], Volatility::Immutable),
        })
    })
    .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    name: &'static str,
    signature: Signature,
}

/// The value under `key` of a JSON object text.
fn lookup(obj: &str, key: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(obj) {
        Ok(Value::Object(mut m)) => m.remove(key).filter(|v| !v.is_null()),
        _ => None,
    }
}

pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) if m.contains_key("$type") => match m.get("value") {
            Some(Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Microseconds since the epoch (UTC) of a value, per the rules in the module doc.
pub fn as_timestamp_micros(v: &Value) -> Option<i64> {
    let parse_rfc3339 = |s: &str| {
        // A zone id in brackets after the offset ("...+02:00[Europe/Paris]") adds nothing to the instant.
        let s = s.split('[').next().unwrap_or(s);
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_micros())
    };
    match v {
        Value::Number(n) => n.as_i64().and_then(|ms| ms.checked_mul(1000)),
        Value::String(s) => parse_rfc3339(s),
        Value::Object(m) => {
            let value = m.get("value").and_then(Value::as_str)?;
            match m.get("$type").and_then(Value::as_str)? {
                "datetime" => parse_rfc3339(value).or_else(|| {
                    // A zoned wall time whose offset could not be known: taken as UTC.
                    let local = value.split('[').next().unwrap_or(value);
                    chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S%.f")
                        .ok()
                        .map(|d| d.and_utc().timestamp_micros())
                }),
                "local_datetime" => {
                    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
                        .ok()
                        .map(|d| d.and_utc().timestamp_micros())
                }
                "date" => chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc().timestamp_micros()),
                _ => None,
            }
        }
        _ => None,
    }
}

impl ScalarUDFImpl for JsonFn {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.name {
            "json_get_float" => DataType::Float64,
            "json_get_timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            _ => DataType::Utf8,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.clone().into_array(n))
            .collect::<DfResult<_>>()?;
        let strs: Vec<_> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
        let get = |row: usize| -> Option<Value> {
            if strs[0].is_null(row) || strs[1].is_null(row) {
                return None;
            }
            lookup(strs[0].value(row), strs[1].value(row))
        };
        let out: ArrayRef = match self.name {
            "json_get" => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for row in 0..n {
                    b.append_option(get(row).map(|v| as_text(&v)));
                }
                Arc::new(b.finish())
            }
            "json_get_float" => {
                let mut b = Float64Builder::with_capacity(n);
                for row in 0..n {
                    b.append_option(get(row).and_then(|v| v.as_f64()));
                }
                Arc::new(b.finish())
            }
            "json_get_timestamp" => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                for row in 0..n {
                    b.append_option(get(row).and_then(|v| as_timestamp_micros(&v)));
                }
                Arc::new(b.finish())
            }
            "json_insert" => {
                let mut b = StringBuilder::with_capacity(n, n * 64);
                for row in 0..n {
                    if strs[0].is_null(row) || strs[1].is_null(row) {
                        b.append_null();
                        continue;
                    }
                    let mut obj = match serde_json::from_str::<Value>(strs[0].value(row)) {
                        Ok(Value::Object(m)) => m,
                        _ => {
                            return exec_err!(
                                "json_insert: the first argument is not a JSON object: {}",
                                strs[0].value(row)
                            )
                        }
                    };
                    let value = if strs[2].is_null(row) {
                        Value::Null
                    } else {
                        match serde_json::from_str::<Value>(strs[2].value(row)) {
                            Ok(v) => v,
                            Err(e) => {
                                return exec_err!(
                                    "json_insert: the value is not JSON ({e}): {}",
                                    strs[2].value(row)
                                )
                            }
                        }
                    };
                    obj.insert(strs[1].value(row).to_string(), value);
                    b.append_value(Value::Object(obj).to_string());
                }
                Arc::new(b.finish())
            }
            other => return exec_err!("unknown JSON function {other}"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{local_session as session, SqlMemory};
    use crate::transform::collect;

    #[test]
    fn text_and_timestamps_of_typed_values() {
        assert_eq!(as_text(&serde_json::json!("x")), "x");
        assert_eq!(as_text(&serde_json::json!(1.5)), "1.5");
        assert_eq!(
            as_text(&serde_json::json!({"$type":"date","value":"2024-01-02"})),
            "2024-01-02"
        );
        let us = |v: Value| as_timestamp_micros(&v);
        assert_eq!(
            us(
                serde_json::json!({"$type":"datetime","value":"2024-07-01T12:00:00+02:00[Europe/Paris]"})
            ),
            Some(1_719_828_000_000_000)
        );
        assert_eq!(
            us(serde_json::json!({"$type":"local_datetime","value":"1970-01-01T00:00:01.5"})),
            Some(1_500_000)
        );
        assert_eq!(
            us(serde_json::json!({"$type":"date","value":"1970-01-02"})),
            Some(86_400_000_000)
        );
        assert_eq!(us(serde_json::json!(1000)), Some(1_000_000));
        assert_eq!(us(serde_json::json!("1970-01-01T00:00:00Z")), Some(0));
        assert_eq!(us(serde_json::json!("yesterday")), None);
    }

    #[tokio::test]
    async fn functions_work_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let mem = SqlMemory {
            limit_bytes: 64 << 20,
            spill_dir: dir.path().into(),
        };
        let ctx = session(1, 1024, &mem).unwrap();
        let b = collect(
            &ctx,
            r#"SELECT json_get('{"name":"a","n":2}', 'name') AS s, json_get('{"n":2}', 'missing') AS m,
                      json_get_float('{"w":0.25}', 'w') AS w, json_get_float('{"w":"x"}', 'w') AS w2,
                      CAST(json_get_timestamp('{"t":{"$type":"date","value":"1970-01-02"}}', 't') AS BIGINT) AS t,
                      json_insert('{"id":1}', 'properties', '{"a":[1,2.0]}') AS j"#,
            "test",
        )
        .await
        .unwrap();
        let row = crate::json::row_object(&b[0], 0).unwrap();
        assert_eq!(row["s"], "a");
        assert!(row["m"].is_null());
        assert_eq!(row["w"], 0.25);
        assert!(row["w2"].is_null());
        assert_eq!(row["j"], r#"{"id":1,"properties":{"a":[1,2.0]}}"#);
        // 1970-01-02 as microseconds since the epoch.
        assert_eq!(row["t"], serde_json::json!(86_400_000_000i64), "{row:?}");
    }
}
