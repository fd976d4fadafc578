//! Arrow values as JSON, one function for the whole tool: the content of a memory (`to_json` in SQL), the sampled
//! source rows of validation and the run report all go through `value_at`, so a value compares equal to itself
//! whichever path it took.
//!
//! Type table (Arrow -> JSON):
//! | Arrow                           | JSON                                              |
//! |---------------------------------|---------------------------------------------------|
//! | Null, any null slot             | null                                              |
//! | Boolean                         | true / false                                      |
//! | Int*, UInt*                     | number                                            |
//! | Float16/32/64 finite            | number (shortest round-trip form)                 |
//! | Float NaN / +-inf               | string "NaN", "inf", "-inf"                       |
//! | Decimal128/256                  | string (exact digits; JSON numbers lose them)     |
//! | Utf8, LargeUtf8, Utf8View       | string                                            |
//! | Binary, LargeBinary, FixedSize  | {"$base64": "..."} (an object, so never mistaken for text) |
//! | Date32/64                       | "YYYY-MM-DD"                                      |
//! | Time32/64                       | "HH:MM:SS[.ffffff]"                               |
//! | Timestamp (with tz)             | RFC 3339 in UTC, "...Z"; without tz: no suffix    |
//! | Duration, Interval              | string (Arrow's display form)                     |
//! | List, LargeList, FixedSizeList  | array                                             |
//! | Struct                          | object, fields in order                           |
//! | Map                             | object (keys rendered as strings)                 |
//! | Dictionary                      | the value it points to                            |
//!
//! Floats survive the trip through JSON bit for bit: they are written in their shortest round-trip form (ryu),
//! and every parse in the tool (validation's re-read of memory content, the JSON SQL functions, the embedding
//! providers, the Engram sink's read-back) goes through serde_json built with `float_roundtrip` (Cargo.toml).
//! Without that feature serde_json's parser can land one ulp off, and a correct migration of ordinary doubles
//! fails validation; `floats_survive_json_exactly` below fails if the feature is ever dropped.

use arrow::array::*;
use arrow::datatypes::*;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine;
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Replaces the string under `key` by the JSON it holds (a json/jsonb column, a Redis value), so content nests
/// it instead of quoting it; a string that is not valid JSON stays as it is. Used by `to_json(struct, 'key')`
/// and by validation, which must compare a source's JSON text with the nested value the same way.
pub fn nest_json_text(obj: &mut Map<String, Value>, key: &str) {
    if let Some(Value::String(s)) = obj.get(key) {
        if let Ok(v) = serde_json::from_str::<Value>(s) {
            obj.insert(key.to_string(), v);
        }
    }
}

/// A digest of a JSON value that two stores' spellings of the same data share: object keys in sorted order,
/// every number as the shortest text of its f64 value (so `1.0` and `1`, `-0` and `0`, `1e300` and its 301 digits
/// agree; integers beyond 2^53 are compared at f64 precision here). For read-backs too large to keep the values.
pub fn json_digest(v: &Value) -> u64 {
    fn feed(h: &mut xxhash_rust::xxh3::Xxh3, v: &Value) {
        match v {
            Value::Null => h.update(b"n"),
            Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let f = if f == 0.0 { 0.0 } else { f };
                h.update(b"#");
                h.update(ryu::Buffer::new().format(f).as_bytes());
            }
            Value::String(s) => {
                h.update(b"s");
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Array(a) => {
                h.update(b"[");
                h.update(&(a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| feed(h, x));
            }
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                h.update(b"{");
                h.update(&(keys.len() as u64).to_le_bytes());
                for k in keys {
                    h.update(&(k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    feed(h, &m[k]);
                }
            }
        }
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    feed(&mut h, v);
    h.digest()
}

/// The JSON value of `array[row]`.
pub fn value_at(array: &dyn Array, row: usize) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    macro_rules! int {
        ($t:ty) => {
            Value::from(array.as_primitive::<$t>().value(row))
        };
    }
    let v = match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(f32_decimal(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_owned()),
        DataType::Binary => bytes(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => bytes(array.as_binary::<i64>().value(row)),
        DataType::BinaryView => bytes(array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => bytes(array.as_fixed_size_binary().value(row)),
        DataType::Timestamp(unit, tz) => Value::String(timestamp(array, row, *unit, tz.is_some())?),
        // The two temporal types SQLite (and most sources) stage, rendered without building a formatter per value.
        DataType::Date32 => Value::String(
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                + chrono::Duration::days(array.as_primitive::<Date32Type>().value(row) as i64))
            .format("%Y-%m-%d")
            .to_string(),
        ),
        DataType::Time64(TimeUnit::Microsecond) => {
            let us = array.as_primitive::<Time64MicrosecondType>().value(row);
            let t = chrono::NaiveTime::from_num_seconds_from_midnight_opt((us / 1_000_000) as u32, (us % 1_000_000) as u32 * 1000)
                .ok_or_else(|| Error::Internal(format!("time {us} us out of range")))?;
            Value::String(t.format("%H:%M:%S%.f").to_string())
        }
        DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => Value::String(display(array, row)?),
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Value::String(display(array, row)?),
        DataType::Duration(_) | DataType::Interval(_) => Value::String(display(array, row)?),
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::FixedSizeList(_, _) => list(array.as_fixed_size_list().value(row).as_ref())?,
        DataType::Struct(_) => {
            let s = array.as_struct();
            let mut m = Map::with_capacity(s.num_columns());
            for (field, col) in s.fields().iter().zip(s.columns()) {
                m.insert(field.name().clone(), value_at(col.as_ref(), row)?);
            }
            Value::Object(m)
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().value(row);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut m = Map::with_capacity(entries.len());
            for i in 0..entries.len() {
                let k = match value_at(keys.as_ref(), i)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(k, value_at(values.as_ref(), i)?);
            }
            Value::Object(m)
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let key = dict.normalized_keys()[row];
            value_at(dict.values().as_ref(), key)?
        }
        other => {
            return Err(Error::Internal(format!(
                "no JSON rendering for Arrow type {other}; cast the column to a supported type in the mapping SQL"
            )))
        }
    };
    Ok(v)
}

/// A whole row of a record batch as a JSON object, columns in schema order.
pub fn row_object(batch: &RecordBatch, row: usize) -> Result<Map<String, Value>> {
    let mut m = Map::with_capacity(batch.num_columns());
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        m.insert(field.name().clone(), value_at(col.as_ref(), row)?);
    }
    Ok(m)
}

/// An f32 as the f64 nearest to its shortest decimal form (`1.1f32` -> `1.1`, not `1.100000023841858`): the
/// value a user wrote, short in the JSON content, and stable when that JSON is parsed and printed again.
fn f32_decimal(v: f32) -> f64 {
    if !v.is_finite() {
        return v as f64;
    }
    ryu::Buffer::new()
        .format_finite(v)
        .parse()
        .unwrap_or(v as f64)
}

fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

fn bytes(b: &[u8]) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(
        "$base64".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    );
    Value::Object(m)
}

fn list(values: &dyn Array) -> Result<Value> {
    (0..values.len())
        .map(|i| value_at(values, i))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

fn display(array: &dyn Array, row: usize) -> Result<String> {
    let f = ArrayFormatter::try_new(array, &FormatOptions::default())?;
    Ok(f.value(row).to_string())
}

fn timestamp(array: &dyn Array, row: usize, unit: TimeUnit, has_tz: bool) -> Result<String> {
    let v = match unit {
        TimeUnit::Second => {
            array.as_primitive::<TimestampSecondType>().value(row) as i128 * 1_000_000_000
        }
        TimeUnit::Millisecond => {
            array.as_primitive::<TimestampMillisecondType>().value(row) as i128 * 1_000_000
        }
        TimeUnit::Microsecond => {
            array.as_primitive::<TimestampMicrosecondType>().value(row) as i128 * 1_000
        }
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row) as i128,
    };
    let secs = v.div_euclid(1_000_000_000) as i64;
    let nanos = v.rem_euclid(1_000_000_000) as u32;
    let dt = chrono::DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| Error::Internal(format!("timestamp {v} ns out of range")))?;
    // Instants with a zone are rendered in UTC with a Z; naive ones without a suffix, as they were.
    let s = if has_tz {
        dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    } else {
        dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string()
    };
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_data_spelt_two_ways_is_the_same() {
        use super::json_digest;
        let pairs = [
            (
                r#"{"a":1.0,"b":[1,-0.0,1e300],"c":"x"}"#,
                r#"{"c": "x", "b": [1, 0, 1000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000], "a": 1}"#,
            ),
            (
                r#"{"x":{"y":null,"z":true}}"#,
                r#"{"x": {"z": true, "y": null}}"#,
            ),
        ];
        for (a, b) in pairs {
            let (a, b): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(a).unwrap(),
                serde_json::from_str(b).unwrap(),
            );
            assert_eq!(json_digest(&a), json_digest(&b), "{a} vs {b}");
        }
        for (a, b) in [
            (r#"{"a":1}"#, r#"{"a":2}"#),
            (r#"{"a":"1"}"#, r#"{"a":1}"#),
            (r#"[1,2]"#, r#"[2,1]"#),
            (r#"{"a":0.1}"#, r#"{"a":0.10000000000000002}"#),
            (r#"{"a":[]}"#, r#"{"a":{}}"#),
        ] {
            let (a, b): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(a).unwrap(),
                serde_json::from_str(b).unwrap(),
            );
            assert_ne!(json_digest(&a), json_digest(&b), "{a} vs {b}");
        }
    }

    use super::*;
    use std::sync::Arc;

    #[test]
    fn scalars_render_per_type_table() {
        let cases: Vec<(ArrayRef, Value)> = vec![
            (Arc::new(Int64Array::from(vec![-5])), Value::from(-5)),
            (Arc::new(Float64Array::from(vec![1.5])), Value::from(1.5)),
            (
                Arc::new(Float64Array::from(vec![f64::NAN])),
                Value::from("NaN"),
            ),
            (
                Arc::new(Float64Array::from(vec![f64::NEG_INFINITY])),
                Value::from("-inf"),
            ),
            (Arc::new(BooleanArray::from(vec![true])), Value::Bool(true)),
            (
                Arc::new(StringArray::from(vec!["Größe 日本"])),
                Value::from("Größe 日本"),
            ),
            (
                Arc::new(BinaryArray::from(vec![&b"\x00\xff"[..]])),
                serde_json::json!({"$base64": "AP8="}),
            ),
            (
                Arc::new(Date32Array::from(vec![19723])),
                Value::from("2024-01-01"),
            ),
            (
                Arc::new(Time64MicrosecondArray::from(vec![3_723_000_001])),
                Value::from("01:02:03.000001"),
            ),
            (
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_704_067_200_123_456])
                        .with_timezone("UTC"),
                ),
                Value::from("2024-01-01T00:00:00.123456Z"),
            ),
            (
                Arc::new(TimestampMicrosecondArray::from(vec![1_704_067_200_000_000])),
                Value::from("2024-01-01T00:00:00"),
            ),
            (
                Arc::new(
                    Decimal128Array::from(vec![12345])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Value::from("123.45"),
            ),
            (Arc::new(Int64Array::from(vec![None])), Value::Null),
        ];
        for (array, want) in cases {
            assert_eq!(
                value_at(array.as_ref(), 0).unwrap(),
                want,
                "type {}",
                array.data_type()
            );
        }
    }

    #[test]
    fn nested_render_as_arrays_and_objects() {
        let list =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None])]);
        assert_eq!(value_at(&list, 0).unwrap(), serde_json::json!([1, null]));
        let s = StructArray::from(vec![
            (
                Arc::new(Field::new("b", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("a", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![None])) as ArrayRef,
            ),
        ]);
        // Field order is kept (not sorted): content JSON reads like the source row.
        assert_eq!(
            value_at(&s, 0).unwrap().to_string(),
            r#"{"b":"x","a":null}"#
        );
    }

    /// splitmix64: a reproducible stream of random bit patterns for the float property tests.
    fn bits(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    /// The path of a value through a migration and its validation: Arrow -> JSON text in the memory content ->
    /// parsed again (as validation re-reads content) -> JSON text compared with the source's.
    fn through_json(array: &dyn Array) -> (String, Value) {
        let written = value_at(array, 0).unwrap().to_string();
        let parsed: Value = serde_json::from_str(&written).unwrap();
        (written, parsed)
    }

    #[test]
    fn floats_survive_json_exactly() {
        let mut doubles: Vec<f64> = vec![
            // The values of the bug reports: 17 significant digits, parsed one ulp off without float_roundtrip.
            99.17157569580637,
            -209497.86536355934,
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE / 3.0, // subnormal
            5e-324,                  // the smallest subnormal
            -5e-324,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            9_007_199_254_740_993.0, // above 2^53: rounds to an even neighbour, which must survive
            2f64.powi(60) + 4096.0,
            1e23,
            0.1 + 0.2,
            1.0 / 3.0,
        ];
        // Random bit patterns (every exponent, sign and mantissa) and random values in the shape of real data.
        doubles.extend(
            bits(7)
                .take(200_000)
                .map(f64::from_bits)
                .filter(|f| f.is_finite()),
        );
        doubles.extend(
            bits(11)
                .take(200_000)
                .map(|b| (b >> 11) as f64 / (1u64 << 53) as f64 * 100.0),
        );
        for f in doubles {
            let (written, parsed) = through_json(&Float64Array::from(vec![f]));
            let back = parsed
                .as_f64()
                .unwrap_or_else(|| panic!("{written} is not a number"));
            assert_eq!(
                back.to_bits(),
                f.to_bits(),
                "{f:e} written as {written}, read back as {back:e}"
            );
            assert_eq!(
                parsed.to_string(),
                written,
                "{f:e}: the re-read text differs"
            );
        }
        let mut floats: Vec<f32> = vec![
            0.1,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MIN_POSITIVE / 3.0,
            1e-45,
            f32::MAX,
            f32::MIN,
            16_777_217.0,
            3.4028235e38,
        ];
        floats.extend(
            bits(13)
                .take(200_000)
                .map(|b| f32::from_bits(b as u32))
                .filter(|f| f.is_finite()),
        );
        for f in floats {
            let (written, parsed) = through_json(&Float32Array::from(vec![f]));
            let back = parsed
                .as_f64()
                .unwrap_or_else(|| panic!("{written} is not a number"));
            // Written as the f32's shortest decimal, so the text reads like the source and parses to the same f32.
            assert_eq!(
                (back as f32).to_bits(),
                f.to_bits(),
                "{f:e} written as {written}"
            );
            assert_eq!(parsed.to_string(), written);
        }
    }
}
