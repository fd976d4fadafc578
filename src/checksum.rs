//! Order-independent content checksums of Arrow data.
//!
//! Each row is encoded with Arrow's row format (a canonical byte encoding of all columns) and hashed with
//! xxh3-128; the checksum is the wrapping sum of the row hashes plus the row count. A sum (not a XOR) so that a
//! duplicated row changes it; order-independent so that batch boundaries, file roll-over, parallel reads and
//! resumed runs do not.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use xxhash_rust::xxh3::xxh3_128;

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

/// Accumulates the checksum of batches that share one schema.
pub struct Hasher {
    converter: RowConverter,
    acc: Checksum,
}

impl Hasher {
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Hasher {
            converter: RowConverter::new(fields)?,
            acc: Checksum::default(),
        })
    }

    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = self.converter.convert_columns(batch.columns())?;
        let mut sum = 0u128;
        for row in rows.iter() {
            sum = sum.wrapping_add(xxh3_128(row.as_ref()));
        }
        self.acc.combine(Checksum {
            rows: batch.num_rows() as u64,
            sum,
        });
        Ok(())
    }

    pub fn finish(&self) -> Checksum {
        self.acc
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
}
