//! PostgreSQL's binary COPY format, written by hand for the memory and edge rows: a header, then per row a field
//! count and per field its length and bytes in the type's binary ("send") form, then a trailer. Explicit and
//! cheap: no per-row statements, no text formatting of floats (a vector is 2 + 2 + 4 x dim bytes, exact).
//!
//! Types used: `text` (UTF-8 bytes), `jsonb` (version byte 1 + JSON text), `real` (big-endian IEEE 754 single),
//! `timestamptz` (big-endian microseconds since 2000-01-01 UTC) and pgvector's `vector` (int16 dimension, int16
//! unused = 0, then the floats big-endian, as its `vector_recv` reads them).

/// `PGCOPY\n\377\r\n\0`, flags (no OIDs), header extension length 0.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One COPY stream's bytes, row by row.
pub struct CopyBuf {
    pub bytes: Vec<u8>,
    rows: usize,
}

impl Default for CopyBuf {
    fn default() -> Self {
        CopyBuf {
            bytes: HEADER.to_vec(),
            rows: 0,
        }
    }
}

impl CopyBuf {
    pub fn row(&mut self, fields: i16) {
        self.bytes.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn null(&mut self) {
        self.bytes.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn len(&mut self, n: usize) {
        self.bytes.extend_from_slice(&(n as i32).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.len(s.len());
        self.bytes.extend_from_slice(s.as_bytes());
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    /// `jsonb`: format version 1, then the JSON text (the server parses it; see `json_fits_jsonb`).
    pub fn jsonb(&mut self, json: &str) {
        self.len(json.len() + 1);
        self.bytes.push(1);
        self.bytes.extend_from_slice(json.as_bytes());
    }

    pub fn opt_jsonb(&mut self, json: Option<&str>) {
        match json {
            Some(j) => self.jsonb(j),
            None => self.null(),
        }
    }

    pub fn real(&mut self, v: f32) {
        self.len(4);
        self.bytes.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    /// `timestamptz` from Unix microseconds.
    pub fn timestamptz(&mut self, unix_us: Option<i64>) {
        match unix_us {
            Some(us) => {
                self.len(8);
                self.bytes
                    .extend_from_slice(&(us - PG_EPOCH_OFFSET_US).to_be_bytes());
            }
            None => self.null(),
        }
    }

    /// pgvector's `vector`.
    pub fn vector(&mut self, v: Option<&[f32]>) {
        let Some(v) = v else {
            self.null();
            return;
        };
        self.len(4 + 4 * v.len());
        self.bytes
            .extend_from_slice(&(v.len() as i16).to_be_bytes());
        self.bytes.extend_from_slice(&0i16.to_be_bytes());
        for f in v {
            self.bytes.extend_from_slice(&f.to_bits().to_be_bytes());
        }
    }

    /// The stream with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        self.bytes
    }
}

/// Why a JSON text cannot be stored as `jsonb`, if it cannot: not JSON at all, or a `\u0000` escape (jsonb keeps
/// no NUL character). Checked before sending so one bad row is refused by name instead of failing its whole COPY.
pub fn json_fits_jsonb(json: &str) -> Option<&'static str> {
    if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
        return Some("not valid JSON");
    }
    if json.contains("\\u0000") {
        return Some("holds the character U+0000, which jsonb cannot store");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_laid_out_as_postgres_reads_them() {
        let mut b = CopyBuf::default();
        b.row(4);
        b.text("é");
        b.jsonb("{}");
        b.vector(Some(&[1.0, -2.5]));
        b.timestamptz(Some(PG_EPOCH_OFFSET_US + 1));
        let bytes = b.finish();
        let mut want = HEADER.to_vec();
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        want.extend_from_slice(&[0, 0, 0, 3, 1, b'{', b'}']);
        want.extend_from_slice(&[0, 0, 0, 12, 0, 2, 0, 0]);
        want.extend_from_slice(&1.0f32.to_bits().to_be_bytes());
        want.extend_from_slice(&(-2.5f32).to_bits().to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn json_that_jsonb_cannot_hold_is_named() {
        assert_eq!(json_fits_jsonb(r#"{"a":[1,2.5e300,"x"]}"#), None);
        assert_eq!(json_fits_jsonb("not json"), Some("not valid JSON"));
        assert!(json_fits_jsonb(r#"{"a":"x\u0000y"}"#).is_some());
    }
}
