//! Order-independent content checksums of Arrow data.
//!
//! Each row is encoded canonically and hashed with xxh3-128; the checksum is the wrapping sum of the row hashes
//! plus the row count. A sum (not a XOR) so that a duplicated row changes it; order-independent so that batch
//! boundaries, file roll-over, parallel reads and resumed runs do not.
//!
//! The encoding: Arrow's row format of every column, except vectors (`FixedSizeList<Float32>`: embeddings and
//! pgvector columns), which follow as a validity byte and their floats' bytes. The row format would first encode
//! each of a million times 768 floats on its own (a flag and an order-preserving transform per float): hashing
//! their bytes is the same information at a fraction of the work. A table without vectors hashes exactly the
//! row-format bytes, as before vectors were special.

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, SchemaRef};
use arrow::row::{RowConverter, SortField};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::Result;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u128,
}

impl Checksum {
    pub fn combine(&mut self, other: Checksum) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// Takes one row out again, by its hash (from `Hasher::row_hashes`): a checksum of a set that lost a row.
    pub fn remove_row(&mut self, hash: u128) {
        self.rows -= 1;
        self.sum = self.sum.wrapping_sub(hash);
    }

    /// `rows:sum` in hex, the form stored in manifests.
    pub fn to_hex(&self) -> String {
        format!("{:032x}", self.sum)
    }

    pub fn from_hex(rows: u64, hex: &str) -> Option<Checksum> {
        u128::from_str_radix(hex, 16)
            .ok()
            .map(|sum| Checksum { rows, sum })
    }
}

/// The checksum scheme this binary writes, recorded as `checksum_scheme` in snapshot manifests and
/// `bundle.json`. 2: vectors by their floats' bytes (above). 1: every column, vectors too, through the row
/// format; the same checksums for tables without vectors. Files written before the scheme was recorded (0 in a
/// manifest) may be under either: validation tries 2, then 1 for a table with vectors (see [`legacy_scheme`]).
pub const SCHEME: u32 = 2;

/// The older scheme a checksum recorded without a scheme may be under, if any differs from [`SCHEME`] for this
/// schema: 1 for a table with vectors, none otherwise.
pub fn legacy_scheme(recorded_scheme: u32, schema: &SchemaRef) -> Option<u32> {
    (recorded_scheme == 0 && schema.fields().iter().any(|f| is_vector(f.data_type()))).then_some(1)
}

/// Whether a column is hashed by its floats' bytes rather than through the row format.
fn is_vector(t: &DataType) -> bool {
    matches!(t, DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float32)
}

/// Accumulates the checksum of batches that share one schema.
pub struct Hasher {
    /// The row format of the columns in `rest` (None when every column is a vector).
    converter: Option<RowConverter>,
    rest: Vec<usize>,
    vectors: Vec<usize>,
    acc: Checksum,
}

impl Hasher {
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        Self::with_scheme(schema, SCHEME)
    }

    /// A hasher of an earlier scheme (1: no column is a vector), to verify files written under it.
    pub fn with_scheme(schema: &SchemaRef, scheme: u32) -> Result<Self> {
        let (vectors, rest): (Vec<usize>, Vec<usize>) = (0..schema.fields().len())
            .partition(|&i| scheme >= 2 && is_vector(schema.field(i).data_type()));
        let converter = if rest.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                rest.iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Hasher {
            converter,
            rest,
            vectors,
            acc: Checksum::default(),
        })
    }

    /// The hash of each row of `batch`, in order: what the checksum sums.
    pub fn row_hashes(&self, batch: &RecordBatch) -> Result<Vec<u128>> {
        let rows = match &self.converter {
            Some(c) => {
                let cols: Vec<ArrayRef> =
                    self.rest.iter().map(|&i| batch.column(i).clone()).collect();
                Some(c.convert_columns(&cols)?)
            }
            None => None,
        };
        if self.vectors.is_empty() {
            let rows = rows.expect("a schema without vectors has row-format columns");
            return Ok(rows.iter().map(|r| xxh3_128(r.as_ref())).collect());
        }
        let vectors: Vec<&FixedSizeListArray> = self
            .vectors
            .iter()
            .map(|&i| batch.column(i).as_fixed_size_list())
            .collect();
        let mut out = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let mut h = Xxh3::new();
            if let Some(rows) = &rows {
                h.update(rows.row(r).as_ref());
            }
            for v in &vectors {
                hash_vector(&mut h, v, r);
            }
            out.push(h.digest128());
        }
        Ok(out)
    }

    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let hashes = self.row_hashes(batch)?;
        self.add_row_hashes(&hashes);
        Ok(())
    }

    /// Adds rows by their hashes (from `row_hashes`), for a caller that keeps the hashes too.
    pub fn add_row_hashes(&mut self, hashes: &[u128]) {
        let mut sum = 0u128;
        for h in hashes {
            sum = sum.wrapping_add(*h);
        }
        self.acc.combine(Checksum {
            rows: hashes.len() as u64,
            sum,
        });
    }

    pub fn finish(&self) -> Checksum {
        self.acc
    }
}

/// Row `r` of a vector column: 0 for NULL; 1 and the floats' little-endian bytes when every float is present;
/// 2 and, per float, a 0 byte (NULL) or a 1 byte and its bytes otherwise. Decided per row, so the same row hashes
/// the same whatever else its batch holds.
fn hash_vector(h: &mut Xxh3, v: &FixedSizeListArray, r: usize) {
    if v.is_null(r) {
        h.update(&[0]);
        return;
    }
    let dim = v.value_length() as usize;
    let floats = v.values().as_primitive::<Float32Type>();
    let (start, end) = (r * dim, (r + 1) * dim);
    let complete = floats
        .nulls()
        .is_none_or(|n| n.slice(start, dim).null_count() == 0);
    if complete {
        h.update(&[1]);
        if cfg!(target_endian = "little") {
            h.update(&floats.values().inner().as_slice()[start * 4..end * 4]);
        } else {
            for i in start..end {
                h.update(&floats.value(i).to_le_bytes());
            }
        }
        return;
    }
    h.update(&[2]);
    for i in start..end {
        if floats.is_null(i) {
            h.update(&[0]);
        } else {
            h.update(&[1]);
            h.update(&floats.value(i).to_le_bytes());
        }
    }
}

pub fn of_batches<'a>(
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Result<Checksum> {
    let mut h = Hasher::new(schema)?;
    for b in batches {
        h.update(b)?;
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(ids: &[i64], names: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn order_and_batching_do_not_matter_but_content_does() {
        let a = batch(&[1, 2, 3], &["a", "b", "c"]);
        let s = a.schema();
        let whole = of_batches(&s, [&a]).unwrap();
        let split = of_batches(&s, [&batch(&[3], &["c"]), &batch(&[2, 1], &["b", "a"])]).unwrap();
        assert_eq!(whole, split);
        let changed = of_batches(&s, [&batch(&[1, 2, 3], &["a", "b", "x"])]).unwrap();
        assert_ne!(whole, changed);
        let dup = of_batches(&s, [&batch(&[1, 1, 2, 3], &["a", "a", "b", "c"])]).unwrap();
        assert_ne!(whole.sum, dup.sum);
        let swapped = of_batches(&s, [&batch(&[1, 2, 3], &["b", "a", "c"])]).unwrap();
        assert_ne!(
            whole, swapped,
            "values moved between rows must change the checksum"
        );
        assert_eq!(Checksum::from_hex(3, &whole.to_hex()), Some(whole));
    }

    fn vectors(rows: &[Option<Vec<Option<f32>>>]) -> RecordBatch {
        use arrow::array::{FixedSizeListArray, Float32Array};
        let item = Arc::new(Field::new_list_field(DataType::Float32, true));
        let values: Float32Array = rows
            .iter()
            .flat_map(|r| r.clone().unwrap_or(vec![None, None]))
            .collect();
        let nulls =
            arrow::buffer::NullBuffer::from(rows.iter().map(|r| r.is_some()).collect::<Vec<_>>());
        let v = FixedSizeListArray::new(item.clone(), 2, Arc::new(values), Some(nulls));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::FixedSizeList(item, 2),
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(v)]).unwrap()
    }

    #[test]
    fn a_vector_row_hashes_the_same_whatever_its_batch_holds() {
        let a = vectors(&[Some(vec![Some(1.0), Some(2.0)])]);
        let b = vectors(&[
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![None, Some(3.0)]),
        ]);
        let c = vectors(&[None, Some(vec![Some(1.0), Some(2.0)])]);
        let h = |x: &RecordBatch| Hasher::new(&x.schema()).unwrap().row_hashes(x).unwrap();
        assert_eq!(h(&a)[0], h(&b)[0], "a NULL float elsewhere in the batch");
        assert_eq!(h(&a)[0], h(&c)[1], "a NULL vector before it");
        assert_eq!(h(&a.slice(0, 1))[0], h(&b.slice(0, 1))[0]);
        assert_eq!(h(&b.slice(1, 1))[0], h(&b)[1], "a sliced batch");
        let all: Vec<u128> = [h(&a)[0], h(&b)[1], h(&c)[0]].to_vec();
        assert!(
            all[0] != all[1] && all[1] != all[2] && all[0] != all[2],
            "{all:?}"
        );
        // -0.0 and 0.0 are different bits, as in the row format.
        let z = h(&vectors(&[Some(vec![Some(0.0), Some(1.0)])]))[0];
        let nz = h(&vectors(&[Some(vec![Some(-0.0), Some(1.0)])]))[0];
        assert_ne!(z, nz);
    }

    #[test]
    fn the_older_scheme_differs_only_for_tables_with_vectors() {
        let plain = batch(&[1, 2], &["a", "b"]);
        let v = vectors(&[Some(vec![Some(1.0), Some(2.0)]), None]);
        let sum = |b: &RecordBatch, scheme| {
            let mut h = Hasher::with_scheme(&b.schema(), scheme).unwrap();
            h.update(b).unwrap();
            h.finish()
        };
        assert_eq!(sum(&plain, 1), sum(&plain, SCHEME));
        assert_ne!(sum(&v, 1), sum(&v, SCHEME));
        assert_eq!(sum(&v, SCHEME), of_batches(&v.schema(), [&v]).unwrap());
        assert_eq!(legacy_scheme(0, &v.schema()), Some(1));
        assert_eq!(
            legacy_scheme(SCHEME, &v.schema()),
            None,
            "recorded: no fallback"
        );
        assert_eq!(
            legacy_scheme(0, &plain.schema()),
            None,
            "no vectors: one scheme"
        );
    }
}
