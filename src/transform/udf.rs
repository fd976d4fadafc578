//! SQL functions the mappings and validations use, registered in every DataFusion session of the tool.
//! - `to_json(struct [, 'field', ...])`: the struct as JSON object text (see `crate::json` for the type table).
//!   The fields named after it hold JSON text (a json/jsonb column, a Redis value) and are nested as JSON, not
//!   quoted as a string; a value that is not valid JSON stays a string, so nothing is lost either way.
//! - `vector_dim(list)`: the number of elements of an embedding (NULL for NULL).
//! - `vector_norm(list)`: its L2 norm as a double (NULL for NULL).
//! - `text_hash(text)`: XXH3-64 of the text's bytes (NULL for NULL), so counting distinct texts holds 8 bytes per
//!   text instead of the text (3.3M texts: tens of MB instead of over 600 MB, an aggregation that cannot spill).

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{exec_err, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Every SQL function of the tool: one list for a local session and for a cluster's scheduler and executors
/// (which must decode plans naming them).
pub fn all() -> Vec<ScalarUDF> {
    let mut out = vec![
        ScalarUDF::new_from_impl(ToJson::new()),
        ScalarUDF::new_from_impl(VectorFn::new("vector_dim")),
        ScalarUDF::new_from_impl(VectorFn::new("vector_norm")),
        ScalarUDF::new_from_impl(TextHash {
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(crate::embed::udf::EmbedText::new()),
    ];
    out.extend(super::json_fn::all());
    out
}

pub fn register_all(ctx: &SessionContext) {
    for f in all() {
        ctx.register_udf(f);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    signature: Signature,
}

impl ToJson {
    fn new() -> Self {
        ToJson {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// The field names after the struct argument: string literals.
fn json_field_names(args: &[ColumnarValue]) -> DfResult<Vec<String>> {
    use datafusion::common::ScalarValue;
    args.iter()
        .map(|a| match a {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => Ok(s.clone()),
            _ => exec_err!("to_json: the arguments after the struct name its JSON fields and must be string literals"),
        })
        .collect()
}

impl ScalarUDFImpl for ToJson {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        "to_json"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some(first) = args.args.first() else {
            return exec_err!(
                "to_json takes a struct (and optionally the names of its JSON fields)"
            );
        };
        let array = first.clone().into_array(args.number_rows)?;
        let nested = json_field_names(&args.args[1..])?;
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 64);
        for row in 0..array.len() {
            if array.is_null(row) {
                out.append_null();
                continue;
            }
            match crate::json::value_at(array.as_ref(), row) {
                Ok(mut v) => {
                    if let serde_json::Value::Object(m) = &mut v {
                        for name in &nested {
                            crate::json::nest_json_text(m, name);
                        }
                    }
                    out.append_value(v.to_string())
                }
                Err(e) => return exec_err!("to_json: {e}"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextHash {
    signature: Signature,
}

impl ScalarUDFImpl for TextHash {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        "text_hash"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let array = args.args[0].clone().into_array(args.number_rows)?;
        let s = array.as_string::<i32>();
        let out: arrow::array::UInt64Array = s
            .iter()
            .map(|v| v.map(|t| xxhash_rust::xxh3::xxh3_64(t.as_bytes())))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct VectorFn {
    name: &'static str,
    signature: Signature,
}

impl VectorFn {
    fn new(name: &'static str) -> Self {
        VectorFn {
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// (number of elements, sum of squares) of one list slot, whatever the list and float type, without copying.
pub(crate) fn slot_stats(list: &dyn Array, row: usize) -> DfResult<(usize, f64)> {
    let (values, start, len): (&ArrayRef, usize, usize) = match list.data_type() {
        DataType::FixedSizeList(_, n) => {
            let l = list.as_fixed_size_list();
            (l.values(), row * *n as usize, *n as usize)
        }
        DataType::List(_) => {
            let l = list.as_list::<i32>();
            let o = l.value_offsets();
            (l.values(), o[row] as usize, (o[row + 1] - o[row]) as usize)
        }
        DataType::LargeList(_) => {
            let l = list.as_list::<i64>();
            let o = l.value_offsets();
            (l.values(), o[row] as usize, (o[row + 1] - o[row]) as usize)
        }
        other => return exec_err!("expected a list of floats, got {other}"),
    };
    // A NULL element makes the norm NaN, which fails every comparison in a check, as it should.
    let has_nulls = values
        .nulls()
        .is_some_and(|n| (start..start + len).any(|i| n.is_null(i)));
    let sum = match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values()[start..start + len]
            .iter()
            .map(|x| (*x as f64) * (*x as f64))
            .sum(),
        DataType::Float64 => values.as_primitive::<Float64Type>().values()[start..start + len]
            .iter()
            .map(|x| x * x)
            .sum(),
        other => return exec_err!("expected a list of floats, got a list of {other}"),
    };
    Ok((len, if has_nulls { f64::NAN } else { sum }))
}

impl ScalarUDFImpl for VectorFn {
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
        Ok(if self.name == "vector_dim" {
            DataType::Int64
        } else {
            DataType::Float64
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let array = args.args[0].clone().into_array(args.number_rows)?;
        let out: ArrayRef = if self.name == "vector_dim" {
            let mut b = Int64Builder::with_capacity(array.len());
            for row in 0..array.len() {
                if array.is_null(row) {
                    b.append_null()
                } else {
                    b.append_value(slot_stats(array.as_ref(), row)?.0 as i64)
                }
            }
            Arc::new(b.finish())
        } else {
            let mut b = Float64Builder::with_capacity(array.len());
            for row in 0..array.len() {
                if array.is_null(row) {
                    b.append_null()
                } else {
                    b.append_value(slot_stats(array.as_ref(), row)?.1.sqrt())
                }
            }
            Arc::new(b.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{local_session as session, SqlMemory};
    use crate::transform::collect;

    #[tokio::test]
    async fn functions_work_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(
            1,
            1024,
            &SqlMemory {
                limit_bytes: 64 << 20,
                spill_dir: dir.path().into(),
            },
        )
        .unwrap();
        let b = collect(
            &ctx,
            "SELECT to_json(named_struct('a', 1, 'b', 'x', 'c', CAST(NULL AS INT))) AS j, \
                    vector_dim(make_array(CAST(3.0 AS FLOAT), CAST(4.0 AS FLOAT))) AS d, \
                    vector_norm(make_array(CAST(3.0 AS FLOAT), CAST(4.0 AS FLOAT))) AS n, \
                    to_json(named_struct('v', '[1,{\"a\":2.5}]', 'w', 'not json', 'x', '[1]'), 'v', 'w') AS nested",
            "test",
        )
        .await
        .unwrap();
        let row = crate::json::row_object(&b[0], 0).unwrap();
        assert_eq!(row["j"], serde_json::json!(r#"{"a":1,"b":"x","c":null}"#));
        assert_eq!(row["d"], serde_json::json!(2));
        assert_eq!(row["n"], serde_json::json!(5.0));
        // Named JSON fields nest; text that is not JSON stays text; fields not named stay strings.
        assert_eq!(
            row["nested"],
            serde_json::json!(r#"{"v":[1,{"a":2.5}],"w":"not json","x":"[1]"}"#)
        );
    }
}
