//! The embedding stage over staged memories: fills each batch's embedding column from its text, keeping the
//! vectors a mapping brought where they can be used. The bundle writer runs it batch by batch through
//! [`MemoryStage`].

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray,
};
use arrow::compute::kernels::zip::zip;
use arrow::datatypes::DataType;

use super::{EmbedStats, Embedder};
use crate::bundle::writer::MemoryStage;
use crate::bundle::EmbeddingInfo;
use crate::error::{Error, Result};
use crate::schema::{memory, memory_schema};

/// The embedding stage of a run: the embedder and whether existing vectors are ignored (`--reembed`).
pub struct EmbedStage<'a> {
    pub embedder: &'a mut Embedder,
    pub reembed: bool,
}

impl MemoryStage for EmbedStage<'_> {
    fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        embed_memories(self.embedder, batch, self.reembed)
    }

    fn flush(&mut self) -> Result<()> {
        self.embedder.flush()
    }

    fn batch_rows(&self) -> Option<usize> {
        self.embedder.preferred_batch_rows()
    }

    fn embedding_info(&self) -> EmbeddingInfo {
        let e = &self.embedder;
        EmbeddingInfo {
            provider: e.provider_name(),
            dimension: e.native_dimension(),
            native_dimension: e.native_dimension(),
            // The bundle keeps the provider's vectors as they are; a target that needs another size pads (Engram).
            zero_padding: 0,
            model: e.provider_model(),
            existing_vectors: e.stats().existing_vectors,
        }
    }
}

impl EmbedStage<'_> {
    pub fn stats(&self) -> EmbedStats {
        self.embedder.stats()
    }
}

/// The text to embed for each row: `text` where present and non-empty, else the JSON content (never empty).
fn texts_to_embed(batch: &RecordBatch) -> Result<StringArray> {
    let text = batch
        .column_by_name(memory::TEXT)
        .map(|c| c.as_string::<i32>().clone());
    let content = batch
        .column_by_name(memory::CONTENT)
        .ok_or_else(|| Error::Internal("memories without content".into()))?
        .as_string::<i32>();
    Ok((0..batch.num_rows())
        .map(|i| match &text {
            Some(t) if !t.is_null(i) && !t.value(i).is_empty() => Some(t.value(i)),
            _ => Some(content.value(i)),
        })
        .collect())
}

/// Fills the embedding column where it is NULL (a mapping may bring vectors of its own, e.g. pgvector columns of
/// 768 floats): only those rows are embedded. An existing vector that is zero or not finite cannot be used and is
/// replaced by an embedding of the text; a unit vector is kept bit for bit; one that is not of unit norm is scaled
/// to unit norm (same cosine).
/// With `reembed`, existing vectors are ignored and every row is embedded.
pub fn embed_memories(
    embedder: &mut Embedder,
    batch: &RecordBatch,
    reembed: bool,
) -> Result<RecordBatch> {
    let schema = memory_schema(embedder.native_dimension());
    let idx = schema.index_of(memory::EMBEDDING)?;
    if batch.schema().field(idx).data_type() != schema.field(idx).data_type() {
        return Err(Error::Internal(format!(
            "staged memories have embeddings of type {}, the provider makes {}; transform again (--fresh)",
            batch.schema().field(idx).data_type(),
            schema.field(idx).data_type()
        )));
    }
    let n = batch.num_rows();
    let existing = if reembed {
        arrow::array::new_null_array(batch.column(idx).data_type(), n)
    } else {
        usable_vectors(batch.column(idx))?
    };
    let keep_rows: Vec<usize> = (0..n).filter(|&i| existing.is_valid(i)).collect();
    embedder.count_existing(keep_rows.len() as u64);
    if keep_rows.len() == n && n > 0 {
        let mut cols = batch.columns().to_vec();
        cols[idx] = existing;
        return Ok(RecordBatch::try_new(schema, cols)?);
    }
    let texts = texts_to_embed(batch)?;
    let merged = if keep_rows.is_empty() {
        Arc::new(embedder.embed_column(&texts)?) as ArrayRef
    } else {
        // Embed only the rows without a vector; `take` scatters the fresh vectors back to their rows and `zip`
        // picks, row by row, the existing vector or the fresh one.
        let todo = arrow::array::UInt32Array::from_iter_values(
            (0..n as u32).filter(|&i| existing.is_null(i as usize)),
        );
        let todo_texts = arrow::compute::take(&texts, &todo, None)?;
        let fresh = embedder.embed_column(todo_texts.as_string::<i32>())?;
        // Row i of the output takes fresh row `pos[i]` where it had no vector.
        let mut next = 0u32;
        let pos: arrow::array::UInt32Array = (0..n)
            .map(|i| {
                if existing.is_null(i) {
                    next += 1;
                    Some(next - 1)
                } else {
                    Some(0)
                }
            })
            .collect();
        let scattered = arrow::compute::take(&fresh, &pos, None)?;
        let keep: BooleanArray = (0..n).map(|i| Some(existing.is_valid(i))).collect();
        zip(&keep, &existing, &scattered)?
    };
    let mut cols = batch.columns().to_vec();
    cols[idx] = merged;
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// How far from 1 the norm of an existing vector may be and still be kept bit for bit (f32 rounding of a vector
/// normalised elsewhere is ~1e-7; validation's own tolerance is 1e-3).
const UNIT_NORM_KEPT: f32 = 1e-4;

/// The mapping's vectors that can be used: NULL where missing, zero or not finite; kept as they are when of unit
/// norm, scaled to unit norm otherwise.
fn usable_vectors(col: &ArrayRef) -> Result<ArrayRef> {
    if col.null_count() == col.len() {
        return Ok(col.clone());
    }
    let list = col.as_fixed_size_list();
    let dim = list.value_length() as usize;
    let values = list
        .values()
        .as_primitive::<arrow::datatypes::Float32Type>();
    let mut out: Vec<f32> = Vec::with_capacity(list.len() * dim);
    let mut valid: Vec<bool> = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        // A sliced FixedSizeListArray has its values sliced too (its offset() is always 0).
        let start = i * dim;
        let v = &values.values()[start..start + dim];
        let sq: f32 = v.iter().map(|x| x * x).sum();
        let ok = list.is_valid(i) && sq > 0.0 && sq.is_finite();
        valid.push(ok);
        let norm = sq.sqrt();
        if ok && (norm - 1.0).abs() <= UNIT_NORM_KEPT {
            // Already of unit norm: kept bit for bit (the source's vector as is, checkable against the source).
            out.extend_from_slice(v);
        } else if ok {
            let inv = 1.0 / norm;
            out.extend(v.iter().map(|x| x * inv));
        } else {
            out.resize(out.len() + dim, 0.0);
        }
    }
    let DataType::FixedSizeList(field, size) = list.data_type().clone() else {
        return Err(Error::Internal(
            "embedding column is not a FixedSizeList".into(),
        ));
    };
    Ok(Arc::new(FixedSizeListArray::try_new(
        field,
        size,
        Arc::new(Float32Array::from(out)),
        Some(valid.into()),
    )?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Float32Type;

    use super::*;
    use crate::embed::{Embedder, HashingProvider};
    use crate::schema::{embedding_type, timestamp_type};

    const EMBEDDING_DIM: usize = 768;

    /// Memories with texts "t0".."t3"; row 0 brings a non-unit vector, row 1 none, row 2 the zero vector, row 3 a
    /// unit vector.
    fn batch() -> RecordBatch {
        let n = 4;
        let s = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let mut values = vec![0.0f32; n * EMBEDDING_DIM];
        values[0] = 3.0;
        values[1] = 4.0;
        values[3 * EMBEDDING_DIM + 5] = 1.0;
        let DataType::FixedSizeList(field, size) = embedding_type(EMBEDDING_DIM) else {
            unreachable!()
        };
        let emb = FixedSizeListArray::try_new(
            field,
            size,
            Arc::new(Float32Array::from(values)),
            Some(vec![true, false, true, true].into()),
        )
        .unwrap();
        let f = |v: f32| Arc::new(Float32Array::from(vec![v; n])) as ArrayRef;
        RecordBatch::try_new(
            memory_schema(EMBEDDING_DIM),
            vec![
                s("space"),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                s("{}"),
                Arc::new(StringArray::from(vec!["t0", "t1", "t2", "t3"])),
                Arc::new(emb),
                f(0.7),
                f(1.0),
                f(0.01),
                arrow::array::new_null_array(&timestamp_type(), n),
                s("semantic"),
                s("sqlite"),
                s("t"),
                s("{}"),
            ],
        )
        .unwrap()
    }

    fn vectors(b: &RecordBatch) -> Vec<Vec<f32>> {
        let c = b
            .column_by_name(memory::EMBEDDING)
            .unwrap()
            .as_fixed_size_list();
        assert_eq!(c.null_count(), 0);
        c.values()
            .as_primitive::<Float32Type>()
            .values()
            .chunks_exact(EMBEDDING_DIM)
            .map(|r| r.to_vec())
            .collect()
    }

    fn hashed(text: &str) -> Vec<f32> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        HashingProvider::new().embed(&[text], &mut v).unwrap();
        v
    }

    use crate::embed::EmbeddingProvider;

    #[test]
    fn existing_vectors_are_kept_and_only_the_others_embedded() {
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_memories(&mut e, &batch(), false).unwrap();
        let v = vectors(&out);
        // Row 0: its own vector, scaled to unit norm (3,4)/5; row 3: its own; rows 1 and 2 (none, zero): embedded.
        assert!(
            (v[0][0] - 0.6).abs() < 1e-6 && (v[0][1] - 0.8).abs() < 1e-6,
            "{:?}",
            &v[0][..2]
        );
        assert!(v[0][2..].iter().all(|&x| x == 0.0));
        assert_eq!(v[3][5], 1.0);
        assert_eq!(v[1], hashed("t1"));
        assert_eq!(v[2], hashed("t2"));
        let s = e.stats();
        assert_eq!((s.texts, s.embedded, s.existing_vectors), (2, 2, 2));

        // --reembed: every row from its text.
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_memories(&mut e, &batch(), true).unwrap();
        let v = vectors(&out);
        for (i, row) in v.iter().enumerate() {
            assert_eq!(row, &hashed(&format!("t{i}")));
        }
        assert_eq!((e.stats().embedded, e.stats().existing_vectors), (4, 0));

        // All rows with usable vectors: no provider call at all.
        let all = batch().slice(3, 1);
        let mut e = Embedder::new(Arc::new(HashingProvider::new()), 10).unwrap();
        let out = embed_memories(&mut e, &all, false).unwrap();
        assert_eq!(vectors(&out)[0][5], 1.0);
        assert_eq!((e.stats().texts, e.stats().existing_vectors), (0, 1));
    }
}
