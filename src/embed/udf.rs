//! `embed_text(text, provider, dim [, name])`: the embedding as a SQL function, so that a cluster's executors embed
//! (`--engine ballista://`): each executor loads the provider named by `provider` (`hashing`, or `model2vec:DIR`
//! with DIR on that executor) once and embeds the rows of its tasks. `dim` is the provider's dimension, given
//! by the caller so that planning on the client and the scheduler never loads a model; an executor whose
//! provider has another dimension fails the query with a message saying so (the model differs between machines).
//! `name` is the provider's name as the caller loaded it (for model2vec it carries a hash of the model's files):
//! an executor whose model files differ, or that still holds an older model under the same path, fails the query
//! instead of embedding with another model than the one the bundle records.
//!
//! The result is `FixedSizeList<Float32, dim>`, NULL for a NULL text; the vectors are the provider's own, checked
//! again by the client's embedding stage like any provider's.

use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use super::EmbeddingProvider;
use crate::schema::embedding_type;

pub const NAME: &str = "embed_text";

/// Whether `embed_text` can run this provider spec: local ones only (an HTTP endpoint is called from the client,
/// which holds its key). Decided from the spec alone, without loading a model.
pub fn runs_in_sql(spec: &str) -> bool {
    spec == "hashing" || spec.starts_with("model2vec:")
}

/// Loads a provider `embed_text` can run (see [`runs_in_sql`]).
pub fn load_provider(spec: &str) -> crate::Result<Arc<dyn EmbeddingProvider>> {
    if spec == "hashing" {
        return Ok(Arc::new(super::HashingProvider::new()));
    }
    if let Some(dir) = spec.strip_prefix("model2vec:") {
        return Ok(Arc::new(super::Model2VecProvider::load(Path::new(dir))?));
    }
    Err(crate::Error::usage(format!(
        "{NAME}: provider {spec:?} cannot run in SQL; use hashing or model2vec:DIR"
    )))
}

/// Loaded once per process and provider: a model is read from disk by the first task that needs it.
fn provider(spec: &str) -> DfResult<Arc<dyn EmbeddingProvider>> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<dyn EmbeddingProvider>>>> = OnceLock::new();
    let mut map = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(spec) {
        return Ok(p.clone());
    }
    let p = load_provider(spec)
        .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
    map.insert(spec.to_string(), p.clone());
    Ok(p)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedText {
    signature: Signature,
}

impl EmbedText {
    pub fn new() -> Self {
        EmbedText {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8, DataType::Int64]),
                    TypeSignature::Exact(vec![DataType::Utf8View, DataType::Utf8, DataType::Int64]),
                    TypeSignature::Exact(vec![
                        DataType::Utf8,
                        DataType::Utf8,
                        DataType::Int64,
                        DataType::Utf8,
                    ]),
                    TypeSignature::Exact(vec![
                        DataType::Utf8View,
                        DataType::Utf8,
                        DataType::Int64,
                        DataType::Utf8,
                    ]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl Default for EmbedText {
    fn default() -> Self {
        Self::new()
    }
}

fn literal_dim(v: Option<&ScalarValue>) -> Option<usize> {
    match v {
        Some(ScalarValue::Int64(Some(d))) if *d > 0 && *d <= 65_536 => Some(*d as usize),
        _ => None,
    }
}

impl ScalarUDFImpl for EmbedText {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        // The type depends on the literal `dim`: see return_field_from_args.
        plan_err!("{NAME}: its type comes from its arguments")
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let Some(dim) = args.scalar_arguments.get(2).copied().and_then(literal_dim) else {
            return plan_err!(
                "{NAME}(text, provider, dim): dim must be a positive integer literal"
            );
        };
        Ok(Arc::new(Field::new(NAME, embedding_type(dim), true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let spec = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s.clone(),
            _ => return exec_err!("{NAME}: the provider must be a text literal"),
        };
        let dim = match &args.args[2] {
            ColumnarValue::Scalar(v) => literal_dim(Some(v)),
            _ => None,
        };
        let Some(dim) = dim else {
            return exec_err!("{NAME}: dim must be a positive integer literal");
        };
        let p = provider(&spec)?;
        if let Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(want)))) = args.args.get(3) {
            if p.name() != *want {
                return exec_err!(
                    "{NAME}: provider {spec} is {} on this machine, the run's is {want} (the model's files \
                     differ, or this executor loaded an older model: every executor needs the same model; restart \
                     the executor after changing it)",
                    p.name()
                );
            }
        }
        if p.dimension() != dim {
            return exec_err!(
                "{NAME}: provider {spec} has dimension {} on this machine, the run expects {dim} \
                 (every executor needs the same model)",
                p.dimension()
            );
        }
        let texts = args.args[0].clone().into_array(args.number_rows)?;
        let texts = arrow::compute::cast(&texts, &DataType::Utf8)?;
        let texts = texts.as_string::<i32>();
        let n = texts.len();
        let refs: Vec<&str> = (0..n)
            .map(|i| if texts.is_null(i) { "" } else { texts.value(i) })
            .collect();
        let mut values = vec![0f32; n * dim];
        p.embed(&refs, &mut values)
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let DataType::FixedSizeList(field, size) = embedding_type(dim) else {
            return exec_err!("{NAME}: the embedding type is not a FixedSizeList");
        };
        let nulls: Option<NullBuffer> = texts.nulls().cloned();
        let out = FixedSizeListArray::try_new(
            field,
            size,
            Arc::new(Float32Array::new(ScalarBuffer::from(values), None)),
            nulls,
        )?;
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{local_session, SqlMemory};
    use crate::transform::collect;
    use arrow::array::{Array, AsArray};

    #[tokio::test]
    async fn embeds_as_the_provider_does_and_refuses_a_wrong_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let mem = SqlMemory {
            limit_bytes: 64 << 20,
            spill_dir: dir.path().to_path_buf(),
        };
        let ctx = local_session(1, 1024, &mem).unwrap();
        use crate::embed::EmbeddingProvider;
        let dim = crate::embed::HashingProvider::new().dimension();
        let b = collect(
            &ctx,
            &format!(
                "SELECT embed_text(t, 'hashing', {dim}) AS v FROM (VALUES ('a cat'), (NULL), ('ünïcode')) AS x(t)"
            ),
            "test",
        )
        .await
        .unwrap();
        let v = b[0].column(0).as_fixed_size_list();
        assert_eq!(v.len(), 3);
        assert!(v.is_null(1));
        let mut want = vec![0f32; dim];
        crate::embed::HashingProvider::new()
            .embed(&["ünïcode"], &mut want)
            .unwrap();
        let got = v.value(2);
        let got = got.as_primitive::<arrow::datatypes::Float32Type>();
        assert_eq!(got.values().to_vec(), want);

        // Another dimension, another provider name: refused.
        for sql in [
            format!("SELECT embed_text('x', 'hashing', {}) AS v", dim + 1),
            format!("SELECT embed_text('x', 'hashing', {dim}, 'hashing-v0') AS v"),
        ] {
            let e = collect(&ctx, &sql, "test").await.unwrap_err();
            assert!(
                e.to_string()
                    .contains("every executor needs the same model"),
                "{sql}: {e}"
            );
        }
        let b = collect(
            &ctx,
            &format!("SELECT embed_text('x', 'hashing', {dim}, 'hashing-v1') AS v"),
            "test",
        )
        .await
        .unwrap();
        assert_eq!(b[0].num_rows(), 1);
        let e = collect(
            &ctx,
            "SELECT embed_text('x', 'openai:http://h', 8) AS v",
            "test",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("cannot run in SQL"), "{e}");
    }
}
