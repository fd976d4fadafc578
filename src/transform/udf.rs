//! SQL functions the mappings and validations use, registered in every DataFusion session of the tool.
//! - `to_json(struct)`: the struct as JSON object text (see `crate::json` for the type table).
//! - `vector_dim(list)`: the number of elements of an embedding (NULL for NULL).
//! - `vector_norm(list)`: its L2 norm as a double (NULL for NULL).

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{exec_err, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

pub fn register_all(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(ToJson::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(VectorFn::new("vector_dim")));
    ctx.register_udf(ScalarUDF::new_from_impl(VectorFn::new("vector_norm")));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    signature: Signature,
}

impl ToJson {
    fn new() -> Self {
        ToJson { signature: Signature::any(1, Volatility::Immutable) }
    }
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
        let array = args.args[0].clone().into_array(args.number_rows)?;
        let mut out = StringBuilder::with_capacity(array.len(), array.len() * 64);
        for row in 0..array.len() {
            if array.is_null(row) {
                out.append_null();
                continue;
            }
            match crate::json::value_at(array.as_ref(), row) {
                Ok(v) => out.append_value(v.to_string()),
                Err(e) => return exec_err!("to_json: {e}"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct VectorFn {
    name: &'static str,
    signature: Signature,
}

impl VectorFn {
    fn new(name: &'static str) -> Self {
        VectorFn { name, signature: Signature::any(1, Volatility::Immutable) }
    }
}

/// Values of one list slot as f64s, whatever the list and float type.
fn slot_values(list: &dyn Array, row: usize) -> DfResult<Vec<f64>> {
    let values: ArrayRef = match list.data_type() {
        DataType::FixedSizeList(_, _) => list.as_fixed_size_list().value(row),
        DataType::List(_) => list.as_list::<i32>().value(row),
        DataType::LargeList(_) => list.as_list::<i64>().value(row),
        other => return exec_err!("expected a list of floats, got {other}"),
    };
    Ok(match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().iter().map(|v| v.map_or(f64::NAN, |x| x as f64)).collect(),
        DataType::Float64 => values.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        other => return exec_err!("expected a list of floats, got a list of {other}"),
    })
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
        Ok(if self.name == "vector_dim" { DataType::Int64 } else { DataType::Float64 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let array = args.args[0].clone().into_array(args.number_rows)?;
        let out: ArrayRef = if self.name == "vector_dim" {
            let mut b = Int64Builder::with_capacity(array.len());
            for row in 0..array.len() {
                if array.is_null(row) {
                    b.append_null()
                } else {
                    b.append_value(slot_values(array.as_ref(), row)?.len() as i64)
                }
            }
            Arc::new(b.finish())
        } else {
            let mut b = Float64Builder::with_capacity(array.len());
            for row in 0..array.len() {
                if array.is_null(row) {
                    b.append_null()
                } else {
                    b.append_value(slot_values(array.as_ref(), row)?.iter().map(|x| x * x).sum::<f64>().sqrt())
                }
            }
            Arc::new(b.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}
