//! PostgreSQL's binary COPY format (`COPY (SELECT ...) TO STDOUT (FORMAT binary)`) decoded straight into Arrow
//! arrays of a table's staged types, one column decoder per staging rule ([`PgType`]).
//!
//! The stream: an 11-byte signature, a flags word and a header extension, then one tuple per row (a 16-bit field
//! count, then per field a 32-bit length, -1 for NULL, and the value in the type's binary send format, big-endian),
//! then a field count of -1. Each type's send format is PostgreSQL's (and pgvector's for `vector` and `halfvec`).
//! Types that travel as text (`numeric`, `json`, `interval`, the text fallbacks: `PgType::via_text`) arrive as
//! UTF-8 text and are cast to their staged type when a batch is finished.
//!
//! A value the staged type cannot hold (an infinite date or timestamp, a year beyond what chrono holds, `24:00:00`,
//! a multi-dimensional or non-1-based array, a numeric that is NaN or too wide) is not an error: the decoder says
//! which column to widen (`Misfit`), and the snapshot stages the table again with that column as text.

use std::io::Read;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder,
    FixedSizeListArray, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    ListArray, RecordBatch, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, SchemaRef};

use super::PgType;
use crate::error::{Error, Result};

/// Arrow's half float (the `half` crate's, reached through Arrow).
type F16 = <arrow::datatypes::Float16Type as arrow::datatypes::ArrowPrimitiveType>::Native;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days and microseconds between PostgreSQL's epoch (2000-01-01) and Unix's.
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_US: i64 = PG_EPOCH_DAYS * 86_400_000_000;
/// chrono's range (±262,143 years), which the rest of the tool converts dates and timestamps through.
const MAX_DAYS: i64 = 95_000_000;
const DAY_US: i64 = 86_400_000_000;

/// A value its column's staged type cannot hold: the column to widen to text, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Misfit {
    pub column: usize,
    pub reason: String,
}

/// One column's values of the batch being built.
enum Col {
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Uuid(StringBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    /// pgvector's `vector` / `halfvec`: a list of float32 (fixed size when the column has a dimension).
    Vector {
        half: bool,
        dim: Option<i32>,
        values: Float32Builder,
        offsets: Vec<i32>,
        valid: Vec<bool>,
    },
    /// A one-dimensional array: element values in a column of their own.
    Array {
        elem: Box<Col>,
        offsets: Vec<i32>,
        valid: Vec<bool>,
    },
}

/// Why a field could not be decoded: the stream is not what was asked for (an error), or the value does not fit.
enum Bad {
    Malformed(String),
    Misfit(String),
}

fn be<const N: usize>(b: &[u8]) -> std::result::Result<[u8; N], Bad> {
    b.try_into()
        .map_err(|_| Bad::Malformed(format!("a {N}-byte value arrived as {} bytes", b.len())))
}

fn days(d: i32) -> std::result::Result<i32, Bad> {
    let d = d as i64 + PG_EPOCH_DAYS;
    if d.abs() > MAX_DAYS {
        return Err(Bad::Misfit(
            "a date that is infinite or beyond year 262000, which Arrow dates here cannot hold"
                .into(),
        ));
    }
    Ok(d as i32)
}

fn micros(us: i64) -> std::result::Result<i64, Bad> {
    if us == i64::MAX || us == i64::MIN || (us / DAY_US).abs() > MAX_DAYS {
        return Err(Bad::Misfit(
            "a timestamp that is infinite or beyond year 262000, which Arrow timestamps here cannot hold"
                .into(),
        ));
    }
    Ok(us + PG_EPOCH_US)
}

fn utf8(b: &[u8]) -> std::result::Result<&str, Bad> {
    std::str::from_utf8(b).map_err(|e| Bad::Malformed(format!("text that is not UTF-8: {e}")))
}

impl Col {
    fn new(t: &PgType) -> Col {
        match t {
            PgType::Int16 => Col::I16(Int16Builder::new()),
            PgType::Int32 => Col::I32(Int32Builder::new()),
            PgType::Int64 => Col::I64(Int64Builder::new()),
            PgType::Float32 => Col::F32(Float32Builder::new()),
            PgType::Float64 => Col::F64(Float64Builder::new()),
            PgType::Bool => Col::Bool(BooleanBuilder::new()),
            PgType::Bytes => Col::Bytes(BinaryBuilder::new()),
            PgType::Uuid => Col::Uuid(StringBuilder::new()),
            PgType::Date => Col::Date(Date32Builder::new()),
            PgType::Time => Col::Time(Time64MicrosecondBuilder::new()),
            PgType::Timestamp | PgType::TimestampTz => {
                Col::Timestamp(TimestampMicrosecondBuilder::new())
            }
            PgType::Vector(dim) | PgType::HalfVec(dim) => Col::Vector {
                half: matches!(t, PgType::HalfVec(_)),
                dim: *dim,
                values: Float32Builder::new(),
                offsets: vec![0],
                valid: vec![],
            },
            PgType::Array(e) => Col::Array {
                elem: Box::new(Col::new(e)),
                offsets: vec![0],
                valid: vec![],
            },
            // Text, and every type selected as `::text` (decimal, json, interval, the fallbacks).
            PgType::Text
            | PgType::Decimal(..)
            | PgType::Json
            | PgType::Interval
            | PgType::AsText => Col::Text(StringBuilder::new()),
        }
    }

    fn push_null(&mut self) {
        match self {
            Col::I16(b) => b.append_null(),
            Col::I32(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::F32(b) => b.append_null(),
            Col::F64(b) => b.append_null(),
            Col::Bool(b) => b.append_null(),
            Col::Text(b) | Col::Uuid(b) => b.append_null(),
            Col::Bytes(b) => b.append_null(),
            Col::Date(b) => b.append_null(),
            Col::Time(b) => b.append_null(),
            Col::Timestamp(b) => b.append_null(),
            Col::Vector {
                dim,
                values,
                offsets,
                valid,
                ..
            } => {
                // A fixed-size list keeps `dim` child slots for a NULL row too.
                if let Some(n) = dim {
                    values.append_nulls(*n as usize);
                }
                offsets.push(values.len() as i32);
                valid.push(false);
            }
            Col::Array {
                elem,
                offsets,
                valid,
            } => {
                offsets.push(elem.len() as i32);
                valid.push(false);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::I16(b) => b.len(),
            Col::I32(b) => b.len(),
            Col::I64(b) => b.len(),
            Col::F32(b) => b.len(),
            Col::F64(b) => b.len(),
            Col::Bool(b) => b.len(),
            Col::Text(b) | Col::Uuid(b) => b.len(),
            Col::Bytes(b) => b.len(),
            Col::Date(b) => b.len(),
            Col::Time(b) => b.len(),
            Col::Timestamp(b) => b.len(),
            Col::Vector { valid, .. } | Col::Array { valid, .. } => valid.len(),
        }
    }

    /// Appends one non-NULL value in its binary send format.
    fn push(&mut self, v: &[u8]) -> std::result::Result<(), Bad> {
        match self {
            Col::I16(b) => b.append_value(i16::from_be_bytes(be(v)?)),
            Col::I32(b) => b.append_value(i32::from_be_bytes(be(v)?)),
            // int8, or an oid (unsigned 32 bits) staged as int64.
            Col::I64(b) => b.append_value(match v.len() {
                4 => u32::from_be_bytes(be(v)?) as i64,
                _ => i64::from_be_bytes(be(v)?),
            }),
            Col::F32(b) => b.append_value(f32::from_be_bytes(be(v)?)),
            Col::F64(b) => b.append_value(f64::from_be_bytes(be(v)?)),
            Col::Bool(b) => b.append_value(be::<1>(v)?[0] != 0),
            Col::Text(b) => b.append_value(utf8(v)?),
            Col::Bytes(b) => b.append_value(v),
            Col::Uuid(b) => {
                // The canonical text form (lowercase, hyphens after bytes 4, 6, 8 and 10), without allocating.
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let u: [u8; 16] = be(v)?;
                let mut out = [0u8; 36];
                let mut at = 0;
                for (i, x) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out[at] = b'-';
                        at += 1;
                    }
                    out[at] = HEX[(x >> 4) as usize];
                    out[at + 1] = HEX[(x & 15) as usize];
                    at += 2;
                }
                b.append_value(
                    std::str::from_utf8(&out).map_err(|e| Bad::Malformed(e.to_string()))?,
                );
            }
            Col::Date(b) => b.append_value(days(i32::from_be_bytes(be(v)?))?),
            Col::Time(b) => {
                let us = i64::from_be_bytes(be(v)?);
                if !(0..DAY_US).contains(&us) {
                    return Err(Bad::Misfit(
                        "a time of 24:00:00, which Arrow's time of day cannot hold".into(),
                    ));
                }
                b.append_value(us);
            }
            Col::Timestamp(b) => b.append_value(micros(i64::from_be_bytes(be(v)?))?),
            Col::Vector {
                half,
                dim,
                values,
                offsets,
                valid,
            } => {
                if v.len() < 4 {
                    return Err(Bad::Malformed("a vector shorter than its header".into()));
                }
                let n = i16::from_be_bytes(be(&v[0..2])?) as usize;
                let width = if *half { 2 } else { 4 };
                let body = &v[4..];
                if body.len() != n * width {
                    return Err(Bad::Malformed(format!(
                        "a vector of {n} dimensions in {} bytes",
                        body.len()
                    )));
                }
                if let Some(d) = dim {
                    if n != *d as usize {
                        return Err(Bad::Misfit(format!(
                            "a vector of {n} dimensions in a column of {d}"
                        )));
                    }
                }
                for c in body.chunks_exact(width) {
                    values.append_value(if *half {
                        F16::from_bits(u16::from_be_bytes([c[0], c[1]])).to_f32()
                    } else {
                        f32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    });
                }
                offsets.push(values.len() as i32);
                valid.push(true);
            }
            Col::Array {
                elem,
                offsets,
                valid,
            } => {
                let word = |at: usize| -> std::result::Result<i32, Bad> {
                    v.get(at..at + 4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| Bad::Malformed("an array shorter than its header".into()))
                };
                let ndim = word(0)?;
                let mut at = 12;
                let mut count = 0usize;
                match ndim {
                    0 => {}
                    1 => {
                        count = word(12)?.max(0) as usize;
                        if word(16)? != 1 {
                            return Err(Bad::Misfit(
                                "an array whose index does not start at 1".into(),
                            ));
                        }
                        at = 20;
                    }
                    _ => {
                        return Err(Bad::Misfit(format!(
                            "a {ndim}-dimensional array, which a list cannot hold as is"
                        )))
                    }
                }
                for _ in 0..count {
                    let len = word(at)?;
                    at += 4;
                    if len < 0 {
                        elem.push_null();
                        continue;
                    }
                    let end = at + len as usize;
                    let value = v.get(at..end).ok_or_else(|| {
                        Bad::Malformed("an array element beyond the value".into())
                    })?;
                    elem.push(value)?;
                    at = end;
                }
                offsets.push(elem.len() as i32);
                valid.push(true);
            }
        }
        Ok(())
    }

    /// The column's values so far as an array of `t` (the list field of `t` for lists), and a fresh builder.
    fn finish(&mut self, t: &DataType) -> ArrayRef {
        fn nulls(valid: &mut Vec<bool>) -> Option<NullBuffer> {
            let v = std::mem::take(valid);
            if v.iter().all(|x| *x) {
                None
            } else {
                Some(NullBuffer::from(v))
            }
        }
        let list_field = |t: &DataType| -> Arc<Field> {
            match t {
                DataType::List(f) | DataType::FixedSizeList(f, _) => f.clone(),
                _ => Arc::new(Field::new_list_field(DataType::Float32, true)),
            }
        };
        match self {
            Col::I16(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Bool(b) => Arc::new(b.finish()),
            Col::Text(b) | Col::Uuid(b) => Arc::new(b.finish()),
            Col::Bytes(b) => Arc::new(b.finish()),
            Col::Date(b) => Arc::new(b.finish()),
            Col::Time(b) => Arc::new(b.finish()),
            Col::Timestamp(b) => {
                let tz = match t {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                Arc::new(b.finish().with_timezone_opt(tz))
            }
            Col::Vector {
                dim,
                values,
                offsets,
                valid,
                ..
            } => {
                let child: ArrayRef = Arc::new(values.finish());
                let offs = std::mem::replace(offsets, vec![0]);
                let nulls = nulls(valid);
                match dim {
                    Some(n) => Arc::new(FixedSizeListArray::new(list_field(t), *n, child, nulls)),
                    None => Arc::new(ListArray::new(
                        list_field(t),
                        OffsetBuffer::new(offs.into()),
                        child,
                        nulls,
                    )),
                }
            }
            Col::Array {
                elem,
                offsets,
                valid,
            } => {
                let f = list_field(t);
                let child = elem.finish(f.data_type());
                let offs = std::mem::replace(offsets, vec![0]);
                let nulls = nulls(valid);
                Arc::new(ListArray::new(
                    f,
                    OffsetBuffer::new(offs.into()),
                    child,
                    nulls,
                ))
            }
        }
    }
}

/// Rows per batch, and the text bytes after which a batch is cut earlier (wide rows stay bounded in memory).
const BATCH_ROWS: usize = 8192;
const BATCH_BYTES: usize = 16 << 20;

/// Decodes one COPY stream into batches of `schema` (the table's staged schema, whose types `types` gives).
pub struct Decoder {
    schema: SchemaRef,
    types: Vec<PgType>,
    cols: Vec<Col>,
    rows: usize,
    bytes: usize,
}

impl Decoder {
    pub fn new(schema: SchemaRef, types: Vec<PgType>) -> Decoder {
        let cols = types.iter().map(Col::new).collect();
        Decoder {
            schema,
            types,
            cols,
            rows: 0,
            bytes: 0,
        }
    }

    /// Reads the whole stream, handing each finished batch to `emit`. Returns the rows read, or the column to
    /// widen (then the read stops at once).
    pub fn run(
        &mut self,
        input: &mut dyn Read,
        emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
    ) -> Result<std::result::Result<u64, Misfit>> {
        let mut input = std::io::BufReader::with_capacity(1 << 16, input);
        let malformed = |m: String| Error::Internal(format!("binary COPY stream: {m}"));
        let io = |e: std::io::Error| Error::Internal(format!("reading the COPY stream: {e}"));
        let mut head = [0u8; 19];
        input.read_exact(&mut head).map_err(io)?;
        if &head[..11] != SIGNATURE {
            return Err(malformed("no PGCOPY signature".into()));
        }
        let ext = u32::from_be_bytes([head[15], head[16], head[17], head[18]]) as u64;
        std::io::copy(&mut (&mut input).take(ext), &mut std::io::sink()).map_err(io)?;
        let mut total = 0u64;
        let mut value = Vec::new();
        loop {
            let mut w = [0u8; 2];
            input.read_exact(&mut w).map_err(io)?;
            let fields = i16::from_be_bytes(w);
            if fields == -1 {
                break;
            }
            if fields as usize != self.cols.len() {
                return Err(malformed(format!(
                    "a row of {fields} fields, {} expected",
                    self.cols.len()
                )));
            }
            for (i, col) in self.cols.iter_mut().enumerate() {
                let mut l = [0u8; 4];
                input.read_exact(&mut l).map_err(io)?;
                let len = i32::from_be_bytes(l);
                if len < 0 {
                    col.push_null();
                    continue;
                }
                value.resize(len as usize, 0);
                input.read_exact(&mut value).map_err(io)?;
                self.bytes += value.len();
                match col.push(&value) {
                    Ok(()) => {}
                    Err(Bad::Misfit(reason)) => return Ok(Err(Misfit { column: i, reason })),
                    Err(Bad::Malformed(m)) => {
                        return Err(malformed(format!(
                            "column {}: {m}",
                            self.schema.field(i).name()
                        )))
                    }
                }
            }
            self.rows += 1;
            total += 1;
            if self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
                match self.batch()? {
                    Ok(b) => emit(b)?,
                    Err(m) => return Ok(Err(m)),
                }
            }
        }
        if self.rows > 0 {
            match self.batch()? {
                Ok(b) => emit(b)?,
                Err(m) => return Ok(Err(m)),
            }
        }
        Ok(Ok(total))
    }

    /// The rows so far as a batch of the staged schema; text-carried values are cast to their staged type here
    /// (a value that does not parse, e.g. a NaN numeric, is a misfit of its column).
    fn batch(&mut self) -> Result<std::result::Result<RecordBatch, Misfit>> {
        let opts = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut arrays = Vec::with_capacity(self.cols.len());
        for (i, (col, f)) in self.cols.iter_mut().zip(self.schema.fields()).enumerate() {
            let a = col.finish(f.data_type());
            let a = if a.data_type() == f.data_type() {
                a
            } else {
                match cast_with_options(&a, f.data_type(), &opts) {
                    Ok(a) => a,
                    Err(e) => {
                        return Ok(Err(Misfit {
                            column: i,
                            reason: format!("a value does not fit {}: {e}", self.types[i].name()),
                        }))
                    }
                }
            };
            arrays.push(a);
        }
        self.rows = 0;
        self.bytes = 0;
        Ok(Ok(RecordBatch::try_new(self.schema.clone(), arrays)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Schema;

    /// A binary COPY stream of `rows`, each a list of fields (None: NULL).
    fn stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            s.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => s.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        s.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        s.extend_from_slice(v);
                    }
                }
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    fn decode(
        types: Vec<PgType>,
        rows: &[Vec<Option<Vec<u8>>>],
    ) -> std::result::Result<Vec<RecordBatch>, Misfit> {
        let schema = Arc::new(Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.data_type(), true))
                .collect::<Vec<_>>(),
        ));
        let mut out = vec![];
        let mut d = Decoder::new(schema, types);
        let bytes = stream(rows);
        d.run(&mut bytes.as_slice(), &mut |b| {
            out.push(b);
            Ok(())
        })
        .unwrap()
        .map(|_| out)
    }

    #[test]
    fn scalars_decode_with_their_epochs_and_nulls() {
        let b = decode(
            vec![
                PgType::Int16,
                PgType::Int64,
                PgType::Float64,
                PgType::Bool,
                PgType::Text,
                PgType::Uuid,
                PgType::Date,
                PgType::TimestampTz,
            ],
            &[
                vec![
                    Some((-7i16).to_be_bytes().to_vec()),
                    Some(4_000_000_000u32.to_be_bytes().to_vec()),
                    Some(0.1f64.to_be_bytes().to_vec()),
                    Some(vec![1]),
                    Some("ünï".as_bytes().to_vec()),
                    Some((0u8..16).collect()),
                    Some(0i32.to_be_bytes().to_vec()),
                    Some(1_000_000i64.to_be_bytes().to_vec()),
                ],
                vec![None, None, None, None, None, None, None, None],
            ],
        )
        .unwrap();
        let b = &b[0];
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.column(0)
                .as_primitive::<arrow::datatypes::Int16Type>()
                .value(0),
            -7
        );
        assert_eq!(
            b.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            4_000_000_000,
            "an oid is unsigned"
        );
        assert_eq!(
            b.column(2)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
            0.1
        );
        assert_eq!(b.column(4).as_string::<i32>().value(0), "ünï");
        assert_eq!(
            b.column(5).as_string::<i32>().value(0),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert_eq!(
            b.column(6)
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0),
            10_957,
            "2000-01-01"
        );
        assert_eq!(
            b.column(7)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            946_684_800_000_000 + 1_000_000
        );
        assert!((0..8).all(|c| b.column(c).is_null(1)));
        assert_eq!(
            b.schema().field(7).data_type(),
            &PgType::TimestampTz.data_type()
        );
    }

    #[test]
    fn arrays_vectors_and_text_carried_decimals() {
        let mut arr = vec![];
        for w in [1i32, 1, 23, 3, 1] {
            arr.extend_from_slice(&w.to_be_bytes());
        }
        arr.extend_from_slice(&4i32.to_be_bytes());
        arr.extend_from_slice(&5i32.to_be_bytes());
        arr.extend_from_slice(&(-1i32).to_be_bytes());
        arr.extend_from_slice(&4i32.to_be_bytes());
        arr.extend_from_slice(&(-9i32).to_be_bytes());
        let empty: Vec<u8> = [0i32, 0, 23].iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut vector = vec![0, 2, 0, 0];
        vector.extend_from_slice(&1.5f32.to_be_bytes());
        vector.extend_from_slice(&(-2.0f32).to_be_bytes());
        let b = decode(
            vec![
                PgType::Array(Box::new(PgType::Int32)),
                PgType::Vector(Some(2)),
                PgType::Decimal(12, 2),
            ],
            &[
                vec![Some(arr), Some(vector), Some(b"12345.67".to_vec())],
                vec![Some(empty), None, None],
            ],
        )
        .unwrap();
        let b = &b[0];
        let list = b.column(0).as_list::<i32>();
        let first = list.value(0);
        let ints = first.as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(ints.len(), 3);
        assert_eq!(
            (ints.value(0), ints.is_null(1), ints.value(2)),
            (5, true, -9)
        );
        assert_eq!(list.value(1).len(), 0, "an empty array is an empty list");
        let v = b.column(1).as_fixed_size_list();
        assert_eq!(
            v.value(0)
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values()
                .to_vec(),
            vec![1.5, -2.0]
        );
        assert!(v.is_null(1));
        let d = b
            .column(2)
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(d.value(0), 1_234_567);
    }

    #[test]
    fn values_an_arrow_type_cannot_hold_widen_their_column() {
        let two_dims: Vec<u8> = [2i32, 0, 23, 1, 1, 1, 1]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        for (t, v, what) in [
            (PgType::Date, i32::MAX.to_be_bytes().to_vec(), "infinite"),
            (
                PgType::Timestamp,
                i64::MIN.to_be_bytes().to_vec(),
                "infinite",
            ),
            (PgType::Time, DAY_US.to_be_bytes().to_vec(), "24:00:00"),
            (
                PgType::Array(Box::new(PgType::Int32)),
                two_dims,
                "2-dimensional",
            ),
            (PgType::Decimal(5, 2), b"NaN".to_vec(), "does not fit"),
        ] {
            let m = decode(vec![PgType::Int32, t.clone()], &[vec![None, Some(v)]]).unwrap_err();
            assert_eq!(m.column, 1, "{t:?}");
            assert!(m.reason.contains(what), "{t:?}: {}", m.reason);
        }
    }

    #[test]
    fn a_stream_that_is_not_binary_copy_is_an_error_not_a_panic() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        for bytes in [
            b"not a copy stream at all".to_vec(),
            stream(&[vec![Some(vec![1, 2])]]),
            stream(&[vec![None, None]]),
            SIGNATURE.to_vec(),
        ] {
            let mut d = Decoder::new(schema.clone(), vec![PgType::Int32]);
            assert!(d.run(&mut bytes.as_slice(), &mut |_| Ok(())).is_err());
        }
    }
}
