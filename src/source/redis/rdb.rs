//! A streaming reader of Redis RDB dump files, RDB 9 to 12 (Redis 6.2 to 8.x; older versions back to RDB 1 share
//! the same encodings and are accepted too).
//!
//! The file is read front to back through a `Read`, one key at a time: memory is bounded by the largest single
//! key, never by the file. Every byte read goes through the CRC64 that Redis writes after the EOF opcode, so the
//! checksum is verified without a second pass.
//!
//! This module depends on `std` only (its own LZF and CRC64 code), so the fuzz target in `fuzz/` compiles it on
//! its own. Why not the `rdb` crate: see docs/sources/redis.md (no streams, no Redis 7.4+/8 hash field expiry,
//! and a formatter-callback API that writes output files instead of handing values back).
//!
//! Corrupt input never panics and never allocates by a length it has not yet read: lengths only bound loops
//! and reads, and a short file ends them with an error that names the byte offset.

use std::io::Read;

/// Highest RDB version understood (Redis 7.4 to 8.x write 12).
pub const MAX_VERSION: u32 = 12;

/// An error with the byte offset in the file where it was found, and the key being read if any.
#[derive(Debug, Clone, PartialEq)]
pub struct RdbError {
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub message: String,
}

impl std::fmt::Display for RdbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte offset {}", self.offset)?;
        if let Some(k) = &self.key {
            write!(f, " (key {:?})", String::from_utf8_lossy(k))?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RdbError {}

pub type Result<T> = std::result::Result<T, RdbError>;

/// RDB value type byte -> (Redis type, encoding as written in the file). The list of types this reader knows;
/// any other type byte is an error naming it.
pub const VALUE_TYPES: &[(u8, &str, &str)] = &[
    (0, "string", "string"),
    (1, "list", "linkedlist"),
    (2, "set", "hashtable"),
    (3, "zset", "skiplist-text-scores"),
    (4, "hash", "hashtable"),
    (5, "zset", "skiplist"),
    (7, "module", "module"),
    (9, "hash", "zipmap"),
    (10, "list", "ziplist"),
    (11, "set", "intset"),
    (12, "zset", "ziplist"),
    (13, "hash", "ziplist"),
    (14, "list", "quicklist-ziplist"),
    (15, "stream", "listpacks"),
    (16, "hash", "listpack"),
    (17, "zset", "listpack"),
    (18, "list", "quicklist"),
    (19, "stream", "listpacks-2"),
    (20, "set", "listpack"),
    (21, "stream", "listpacks-3"),
    (22, "hash", "hashtable-field-expiry-rc"),
    (23, "hash", "listpack-field-expiry-rc"),
    (24, "hash", "hashtable-field-expiry"),
    (25, "hash", "listpack-field-expiry"),
];

/// The (type, encoding) of a value type byte.
pub fn value_type(t: u8) -> Option<(&'static str, &'static str)> {
    VALUE_TYPES.iter().find(|r| r.0 == t).map(|r| (r.1, r.2))
}

/// Opcodes that are not value types.
pub mod opcode {
    pub const KEY_META: u8 = 243;
    pub const SLOT_INFO: u8 = 244;
    pub const FUNCTION2: u8 = 245;
    pub const FUNCTION_PRE_GA: u8 = 246;
    pub const MODULE_AUX: u8 = 247;
    pub const IDLE: u8 = 248;
    pub const FREQ: u8 = 249;
    pub const AUX: u8 = 250;
    pub const RESIZEDB: u8 = 251;
    pub const EXPIRETIME_MS: u8 = 252;
    pub const EXPIRETIME: u8 = 253;
    pub const SELECTDB: u8 = 254;
    pub const EOF: u8 = 255;
}

/// One hash field: name, value, and its own expiry (Redis 7.4+ HEXPIRE/HSETEX), Unix ms.
#[derive(Debug, Clone, PartialEq)]
pub struct HashField {
    pub field: Vec<u8>,
    pub value: Vec<u8>,
    pub expire_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(Vec<u8>),
    /// Elements in list order.
    List(Vec<Vec<u8>>),
    /// Members in file order (hash-table order or insertion order).
    Set(Vec<Vec<u8>>),
    /// (member, score) in file order.
    ZSet(Vec<(Vec<u8>, f64)>),
    Hash(Vec<HashField>),
    Stream(Stream),
    /// A module value, kept as the module wrote it: it cannot be decoded without the module.
    Module(ModuleValue),
}

/// A stream id `ms-seq`.
pub type StreamId = (u64, u64);

pub fn stream_id_text(id: StreamId) -> String {
    format!("{}-{}", id.0, id.1)
}

/// A stream: its live entries in id order, its last generated id and its consumer groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    pub entries: Vec<StreamEntry>,
    pub last_id: StreamId,
    pub groups: Vec<StreamGroup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    pub id: StreamId,
    /// (field, value) in the entry's order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamGroup {
    pub name: Vec<u8>,
    pub last_delivered_id: StreamId,
    /// Entries delivered and not yet acknowledged (the group's pending entries list).
    pub pending: u64,
    /// (consumer name, its pending entries).
    pub consumers: Vec<(Vec<u8>, u64)>,
}

/// A module value: the module type's 9-character name, its encoding version (the low 10 bits of the type id)
/// and the value's bytes as the module serialised them (RDB module opcodes up to and including the EOF
/// opcode): exactly what `DUMP` returns after the module id, so a dump and a live read agree.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleValue {
    pub name: String,
    pub version: u64,
    pub raw: Vec<u8>,
}

/// A key and its value, with where it starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub db: u64,
    pub key: Vec<u8>,
    pub expire_at_ms: Option<i64>,
    /// The RDB type byte.
    pub rdb_type: u8,
    /// Encoding of the value in the file (`VALUE_TYPES`); for strings `int`, `lzf` or `raw`.
    pub encoding: &'static str,
    pub value: Value,
    /// Byte offset of the entry's first byte (its expiry or type opcode).
    pub offset: u64,
}

/// How the end-of-file checksum turned out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Checksum {
    /// Not reached yet.
    Pending,
    /// The stored CRC64 matched.
    Verified(u64),
    /// The file was written with `rdbchecksum no` (stored checksum 0).
    Disabled,
    /// RDB versions before 5 have no checksum.
    Absent,
}

/// What was skipped that is not a key (reported, not migrated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped {
    pub function_libraries: u64,
    pub module_aux: u64,
    pub slot_info: u64,
}

/// Reads entries one by one. `next_entry` returns `Ok(None)` after the EOF opcode and a verified checksum.
pub struct RdbReader<R: Read> {
    inner: R,
    offset: u64,
    crc: u64,
    pub version: u32,
    /// AUX fields (redis-ver, ctime, used-mem, ...) seen so far; they come before the keys.
    pub aux: Vec<(Vec<u8>, Vec<u8>)>,
    pub checksum: Checksum,
    pub skipped: Skipped,
    db: u64,
    done: bool,
    /// Encoding of the last string read (`raw`, `int`, `lzf`).
    last_string_encoding: &'static str,
    /// While Some, every byte read is appended (a module value's raw bytes).
    recording: Option<Vec<u8>>,
}

/// Redis refuses strings over 512 MB by default; a length beyond this bound in a dump is corruption.
const MAX_STRING: u64 = 1 << 32;

impl<R: Read> RdbReader<R> {
    /// Reads and checks the header (`REDIS` and a 4-digit version).
    pub fn new(inner: R) -> Result<Self> {
        let mut r = Self::at_start(inner, 0);
        let mut magic = [0u8; 9];
        r.read_exact(&mut magic).map_err(|e| RdbError {
            message: format!(
                "{} (a dump file starts with REDIS and a 4-digit version)",
                e.message
            ),
            ..e
        })?;
        if &magic[..5] != b"REDIS" {
            return Err(r.err_at(0, "not an RDB file: it does not start with REDIS".into()));
        }
        let v = std::str::from_utf8(&magic[5..])
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| r.err_at(5, "RDB version is not 4 digits".into()))?;
        if v == 0 || v > MAX_VERSION {
            return Err(r.err_at(
                5,
                format!("RDB version {v} is not supported (this reader knows 1 to {MAX_VERSION}: Redis up to 8.x)"),
            ));
        }
        r.version = v;
        Ok(r)
    }

    /// A reader before its first byte, of an RDB `version` (0 until the header says).
    fn at_start(inner: R, version: u32) -> Self {
        RdbReader {
            inner,
            offset: 0,
            crc: 0,
            version,
            aux: vec![],
            checksum: Checksum::Pending,
            skipped: Skipped::default(),
            db: 0,
            done: false,
            last_string_encoding: "raw",
            recording: None,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The AUX field `name` (e.g. `ctime`, `redis-ver`) as text.
    pub fn aux_field(&self, name: &str) -> Option<String> {
        self.aux
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn err_at(&self, offset: u64, message: String) -> RdbError {
        RdbError {
            offset,
            key: None,
            message,
        }
    }

    fn err(&self, message: impl Into<String>) -> RdbError {
        self.err_at(self.offset, message.into())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(self.err_at(
                        self.offset + filled as u64,
                        format!(
                        "unexpected end of file ({} more bytes expected): the dump is truncated",
                        buf.len() - filled
                    ),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.err_at(self.offset + filled as u64, format!("read error: {e}")))
                }
            }
        }
        self.crc = crc64(self.crc, buf);
        self.offset += buf.len() as u64;
        if let Some(r) = &mut self.recording {
            r.extend_from_slice(buf);
        }
        Ok(())
    }

    /// Reads `n` bytes, growing the buffer as bytes arrive so a corrupt huge length fails at end of file
    /// instead of allocating first.
    fn read_bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > MAX_STRING {
            return Err(self.err(format!(
                "string length {n} is beyond any Redis value: the dump is corrupt"
            )));
        }
        let n = n as usize;
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let mut chunk = [0u8; 8192];
        while out.len() < n {
            let want = (n - out.len()).min(chunk.len());
            self.read_exact(&mut chunk[..want])?;
            out.extend_from_slice(&chunk[..want]);
        }
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn u32_le(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64_le(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn f64_le(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64_le()?))
    }

    /// A length, or the special-encoding tag of a string (`Err(tag)` in the inner result).
    fn len_or_enc(&mut self) -> Result<std::result::Result<u64, u8>> {
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => Ok((b & 0x3f) as u64),
            1 => Ok((((b & 0x3f) as u64) << 8) | self.u8()? as u64),
            2 => match b {
                0x80 => {
                    let mut x = [0u8; 4];
                    self.read_exact(&mut x)?;
                    Ok(u32::from_be_bytes(x) as u64)
                }
                0x81 => {
                    let mut x = [0u8; 8];
                    self.read_exact(&mut x)?;
                    Ok(u64::from_be_bytes(x))
                }
                _ => {
                    return Err(self.err_at(
                        self.offset - 1,
                        format!("unknown length encoding 0x{b:02x}"),
                    ))
                }
            },
            _ => Err(b & 0x3f),
        })
    }

    fn len(&mut self) -> Result<u64> {
        match self.len_or_enc()? {
            Ok(n) => Ok(n),
            Err(tag) => Err(self.err_at(
                self.offset - 1,
                format!("expected a length, found string encoding {tag}"),
            )),
        }
    }

    /// A string: raw, an integer (kept as its decimal text, as Redis returns it), or LZF-compressed.
    fn string(&mut self) -> Result<Vec<u8>> {
        match self.len_or_enc()? {
            Ok(n) => {
                self.last_string_encoding = "raw";
                self.read_bytes(n)
            }
            Err(tag) => {
                let start = self.offset - 1;
                let v = match tag {
                    0 => (self.u8()? as i8 as i64).to_string().into_bytes(),
                    1 => {
                        let mut b = [0u8; 2];
                        self.read_exact(&mut b)?;
                        (i16::from_le_bytes(b) as i64).to_string().into_bytes()
                    }
                    2 => (self.u32_le()? as i32 as i64).to_string().into_bytes(),
                    3 => {
                        let clen = self.len()?;
                        let ulen = self.len()?;
                        if ulen > MAX_STRING {
                            return Err(self.err_at(
                                start,
                                format!("LZF string of {ulen} bytes is beyond any Redis value"),
                            ));
                        }
                        let data = self.read_bytes(clen)?;
                        let v = lzf_decompress(&data, ulen as usize).map_err(|m| {
                            self.err_at(start, format!("LZF-compressed string: {m}"))
                        })?;
                        self.last_string_encoding = "lzf";
                        return Ok(v);
                    }
                    _ => return Err(self.err_at(start, format!("unknown string encoding {tag}"))),
                };
                self.last_string_encoding = "int";
                Ok(v)
            }
        }
    }

    /// A score of the old zset type 3: a length-prefixed decimal text (253/254/255 for NaN, +inf, -inf).
    fn text_double(&mut self) -> Result<f64> {
        let at = self.offset;
        let n = self.u8()?;
        match n {
            253 => Ok(f64::NAN),
            254 => Ok(f64::INFINITY),
            255 => Ok(f64::NEG_INFINITY),
            _ => {
                let b = self.read_bytes(n as u64)?;
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| parse_double(s))
                    .ok_or_else(|| self.err_at(at, "score is not a number".into()))
            }
        }
    }

    /// The next key, or None at the end of the file (after the checksum was verified).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let mut expire: Option<i64> = None;
        let mut start: Option<u64> = None;
        loop {
            let at = self.offset;
            let op = self.u8()?;
            match op {
                opcode::EOF => {
                    self.finish(at)?;
                    return Ok(None);
                }
                opcode::SELECTDB => self.db = self.len()?,
                opcode::RESIZEDB => {
                    self.len()?;
                    self.len()?;
                }
                opcode::AUX => {
                    let k = self.string()?;
                    let v = self.string()?;
                    self.aux.push((k, v));
                }
                opcode::EXPIRETIME_MS => {
                    start.get_or_insert(at);
                    expire = Some(self.u64_le()? as i64);
                }
                opcode::EXPIRETIME => {
                    start.get_or_insert(at);
                    expire = Some(self.u32_le()? as i64 * 1000);
                }
                opcode::FREQ => {
                    start.get_or_insert(at);
                    self.u8()?;
                }
                opcode::IDLE => {
                    start.get_or_insert(at);
                    self.len()?;
                }
                opcode::MODULE_AUX => {
                    self.len()?; // module id
                    let when_opcode = self.len()?;
                    self.len()?; // when
                    if when_opcode != 2 {
                        return Err(self.err_at(at, "module aux data without its annotation: cannot be skipped".into()));
                    }
                    self.skip_module_value()?;
                    self.skipped.module_aux += 1;
                }
                opcode::FUNCTION2 => {
                    self.string()?;
                    self.skipped.function_libraries += 1;
                }
                opcode::FUNCTION_PRE_GA => {
                    return Err(self.err_at(at, "function library in the Redis 7.0 release-candidate format is not supported; load the dump into Redis 7.0+ and save it again".into()))
                }
                opcode::SLOT_INFO => {
                    self.len()?;
                    self.len()?;
                    self.len()?;
                    self.skipped.slot_info += 1;
                }
                t => {
                    let Some((_, enc)) = value_type(t) else {
                        return Err(self.err_at(
                            at,
                            format!("unknown opcode or value type {t} (0x{t:02x}): the dump is corrupt or from a Redis newer than this reader (RDB {})", self.version),
                        ));
                    };
                    let offset = start.unwrap_or(at);
                    let key = self.string()?;
                    let value = self.value(t).map_err(|mut e| {
                        e.key = Some(key.clone());
                        e
                    })?;
                    let encoding = if t == 0 { self.last_string_encoding } else { enc };
                    return Ok(Some(Entry {
                        db: self.db,
                        key,
                        expire_at_ms: expire,
                        rdb_type: t,
                        encoding,
                        value,
                        offset,
                    }));
                }
            }
        }
    }

    fn finish(&mut self, eof_at: u64) -> Result<()> {
        self.done = true;
        if self.version < 5 {
            self.checksum = Checksum::Absent;
            return Ok(());
        }
        let computed = self.crc;
        let stored = self.u64_le()?;
        if stored == 0 {
            self.checksum = Checksum::Disabled;
        } else if stored != computed {
            return Err(self.err_at(
                eof_at + 1,
                format!(
                    "checksum mismatch: the file says CRC64 {stored:016x}, its bytes give {computed:016x}; the dump is corrupt (a changed or truncated byte)"
                ),
            ));
        } else {
            self.checksum = Checksum::Verified(computed);
        }
        Ok(())
    }

    /// The annotated opcodes of a module value, up to its EOF opcode.
    fn skip_module_value(&mut self) -> Result<()> {
        loop {
            let at = self.offset;
            match self.len()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.len()?;
                }
                3 => {
                    self.u32_le()?;
                }
                4 => {
                    self.u64_le()?;
                }
                5 => {
                    self.string()?;
                }
                op => return Err(self.err_at(at, format!("unknown module value opcode {op}"))),
            }
        }
    }

    fn value(&mut self, t: u8) -> Result<Value> {
        Ok(match t {
            0 => Value::String(self.string()?),
            1 => {
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Value::List(v)
            }
            2 => {
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Value::Set(v)
            }
            3 | 5 => {
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let m = self.string()?;
                    let s = if t == 5 {
                        self.f64_le()?
                    } else {
                        self.text_double()?
                    };
                    v.push((m, s));
                }
                Value::ZSet(v)
            }
            4 => {
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let field = self.string()?;
                    let value = self.string()?;
                    v.push(HashField {
                        field,
                        value,
                        expire_at_ms: None,
                    });
                }
                Value::Hash(v)
            }
            22 | 24 => {
                // Hash with field expiry: GA (24) stores a base time, then per field a TTL relative to it
                // (+1, 0 = no expiry); the release candidate (22) stores absolute times.
                let min_expire = if t == 24 { Some(self.u64_le()?) } else { None };
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let ttl = self.len()?;
                    let expire_at_ms = match (ttl, min_expire) {
                        (0, _) => None,
                        (x, Some(base)) => Some(base.wrapping_add(x).wrapping_sub(1) as i64),
                        (x, None) => Some(x as i64),
                    };
                    let field = self.string()?;
                    let value = self.string()?;
                    v.push(HashField {
                        field,
                        value,
                        expire_at_ms,
                    });
                }
                Value::Hash(v)
            }
            14 | 18 => {
                let nodes = self.len()?;
                let mut v = vec![];
                for _ in 0..nodes {
                    let container = if t == 18 { self.len()? } else { 2 };
                    let at = self.offset;
                    let blob = self.string()?;
                    match container {
                        1 => v.push(blob),
                        2 if t == 18 => v.extend(listpack(&blob).map_err(|m| {
                            self.err_at(at, format!("quicklist node listpack: {m}"))
                        })?),
                        2 => v.extend(ziplist(&blob).map_err(|m| {
                            self.err_at(at, format!("quicklist node ziplist: {m}"))
                        })?),
                        c => {
                            return Err(self.err_at(at, format!("unknown quicklist container {c}")))
                        }
                    }
                }
                Value::List(v)
            }
            9 | 10 | 11 | 12 | 13 | 16 | 17 | 20 | 23 | 25 => {
                if t == 25 {
                    self.u64_le()?; // the hash's earliest field expiry; each field carries its own
                }
                let at = self.offset;
                let blob = self.string()?;
                let bad = |m: String| {
                    self.err_at(
                        at,
                        format!("{} value: {m}", value_type(t).map(|x| x.1).unwrap_or("?")),
                    )
                };
                match t {
                    9 => Value::Hash(zipmap(&blob).map_err(bad)?),
                    10 => Value::List(ziplist(&blob).map_err(bad)?),
                    11 => Value::Set(intset(&blob).map_err(bad)?),
                    12 | 17 => {
                        let items = if t == 12 {
                            ziplist(&blob)
                        } else {
                            listpack(&blob)
                        }
                        .map_err(&bad)?;
                        Value::ZSet(pairs_with_scores(items).map_err(bad)?)
                    }
                    13 | 16 => {
                        let items = if t == 13 {
                            ziplist(&blob)
                        } else {
                            listpack(&blob)
                        }
                        .map_err(&bad)?;
                        Value::Hash(hash_pairs(items, false).map_err(bad)?)
                    }
                    20 => Value::Set(listpack(&blob).map_err(bad)?),
                    _ => {
                        Value::Hash(hash_pairs(listpack(&blob).map_err(&bad)?, true).map_err(bad)?)
                    }
                }
            }
            15 | 19 | 21 => Value::Stream(self.stream(t)?),
            7 => {
                let id = self.len()?;
                self.recording = Some(vec![]);
                let done = self.skip_module_value();
                let raw = self.recording.take().unwrap_or_default();
                done?;
                Value::Module(ModuleValue {
                    name: module_name(id),
                    version: id & 1023,
                    raw,
                })
            }
            _ => return Err(self.err(format!("value type {t} is not supported"))),
        })
    }

    /// A stream: its listpack nodes (entries), metadata and consumer groups with their pending lists.
    fn stream(&mut self, t: u8) -> Result<Stream> {
        let nodes = self.len()?;
        let mut entries = vec![];
        for _ in 0..nodes {
            let at = self.offset;
            let id = self.string()?;
            let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) else {
                return Err(self.err_at(at, "stream node key is not a 128-bit entry id".into()));
            };
            let master = (
                u64::from_be_bytes(id[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(id[8..].try_into().expect("8 bytes")),
            );
            let at = self.offset;
            let blob = self.string()?;
            let items = listpack(&blob)
                .map_err(|m| self.err_at(at, format!("stream node listpack: {m}")))?;
            stream_node(master, items, &mut entries)
                .map_err(|m| self.err_at(at, format!("stream node: {m}")))?;
        }
        self.len()?; // length: the entries themselves are counted
        let last_id = (self.len()?, self.len()?);
        if t >= 19 {
            for _ in 0..5 {
                self.len()?; // first id, max deleted id, entries added
            }
        }
        let n_groups = self.len()?;
        let mut groups = vec![];
        for _ in 0..n_groups {
            let name = self.string()?;
            let last_delivered_id = (self.len()?, self.len()?);
            if t >= 19 {
                self.len()?; // entries read
            }
            let pending = self.len()?;
            for _ in 0..pending {
                self.read_bytes(16)?;
                self.u64_le()?; // delivery time
                self.len()?; // delivery count
            }
            let n_consumers = self.len()?;
            let mut consumers = vec![];
            for _ in 0..n_consumers {
                let name = self.string()?;
                self.u64_le()?; // seen time
                if t >= 21 {
                    self.u64_le()?; // active time
                }
                let pel = self.len()?;
                for _ in 0..pel {
                    self.read_bytes(16)?;
                }
                consumers.push((name, pel));
            }
            groups.push(StreamGroup {
                name,
                last_delivered_id,
                pending,
                consumers,
            });
        }
        Ok(Stream {
            entries,
            last_id,
            groups,
        })
    }
}

/// The value of a `DUMP` reply (what `RESTORE` takes): its type byte and value in RDB encoding, then the RDB
/// version (2 bytes) and a CRC64 (8 bytes), which are checked here.
pub fn dump_payload(payload: &[u8]) -> Result<(u8, Value)> {
    let bad = |m: &str| RdbError {
        offset: 0,
        key: None,
        message: format!("DUMP payload: {m}"),
    };
    if payload.len() < 11 {
        return Err(bad("shorter than its trailer"));
    }
    let (body, trailer) = payload.split_at(payload.len() - 10);
    let version = u16::from_le_bytes([trailer[0], trailer[1]]) as u32;
    let stored = u64::from_le_bytes(trailer[2..].try_into().expect("8 bytes"));
    let computed = crc64(0, &payload[..payload.len() - 8]);
    if stored != 0 && stored != computed {
        return Err(bad("checksum mismatch"));
    }
    let mut r = RdbReader::at_start(body, version);
    let t = r.u8()?;
    let v = r.value(t)?;
    if r.offset != body.len() as u64 {
        return Err(bad("bytes after the value"));
    }
    Ok((t, v))
}

/// The entries of one stream node: a master entry (counts and the master fields), then per entry its flags,
/// id as a difference from the node's master id, its fields (or only values when it has the master's fields)
/// and a back count. Deleted entries are left out.
fn stream_node(
    master: StreamId,
    items: Vec<Vec<u8>>,
    out: &mut Vec<StreamEntry>,
) -> std::result::Result<(), String> {
    const DELETED: i64 = 1;
    const SAME_FIELDS: i64 = 2;
    let mut items = items.into_iter().peekable();
    let mut next = |what: &str| {
        items
            .next()
            .ok_or_else(|| format!("ends before its {what}"))
    };
    let int = |b: Vec<u8>, what: &str| -> std::result::Result<i64, String> {
        std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| format!("{what} is not an integer"))
    };
    int(next("entry count")?, "entry count")?;
    int(next("deleted count")?, "deleted count")?;
    let n_master = int(next("master field count")?, "master field count")?;
    let mut master_fields = vec![];
    for _ in 0..n_master.max(0) {
        master_fields.push(next("master fields")?);
    }
    if int(next("master terminator")?, "master terminator")? != 0 {
        return Err("master entry is not terminated by 0".into());
    }
    while items.peek().is_some() {
        let mut next = |what: &str| {
            items
                .next()
                .ok_or_else(|| format!("ends inside an entry's {what}"))
        };
        let flags = int(next("flags")?, "entry flags")?;
        let ms = master.0.wrapping_add(int(next("id")?, "entry id")? as u64);
        let seq = master.1.wrapping_add(int(next("id")?, "entry id")? as u64);
        let mut fields = vec![];
        if flags & SAME_FIELDS != 0 {
            for f in &master_fields {
                fields.push((f.clone(), next("values")?));
            }
        } else {
            let n = int(next("field count")?, "entry field count")?;
            for _ in 0..n.max(0) {
                let f = next("fields")?;
                fields.push((f, next("values")?));
            }
        }
        int(next("back count")?, "entry back count")?;
        if flags & DELETED == 0 {
            out.push(StreamEntry {
                id: (ms, seq),
                fields,
            });
        }
    }
    Ok(())
}

/// The 9-character name of a module type from its 64-bit id (6 bits per character, 10 bits of version).
pub fn module_name(id: u64) -> String {
    const CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = id >> 10;
    (0..9)
        .map(|j| CHARS[((bits >> (6 * (8 - j))) & 63) as usize] as char)
        .collect()
}

/// Parses a Redis double as text (`inf`, `-inf`, `nan` included).
pub fn parse_double(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

fn pairs_with_scores(items: Vec<Vec<u8>>) -> std::result::Result<Vec<(Vec<u8>, f64)>, String> {
    if items.len() % 2 != 0 {
        return Err("odd number of entries for member/score pairs".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(m), Some(s)) = (it.next(), it.next()) {
        let score = std::str::from_utf8(&s)
            .ok()
            .and_then(parse_double)
            .ok_or("score is not a number")?;
        out.push((m, score));
    }
    Ok(out)
}

/// Field/value pairs, or field/value/expiry triplets (listpack with field expiry: 0 = none, else Unix ms).
fn hash_pairs(
    items: Vec<Vec<u8>>,
    with_expiry: bool,
) -> std::result::Result<Vec<HashField>, String> {
    let step = if with_expiry { 3 } else { 2 };
    if items.len() % step != 0 {
        return Err(format!(
            "{} entries is not a multiple of {step}",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len() / step);
    let mut it = items.into_iter();
    while let (Some(field), Some(value)) = (it.next(), it.next()) {
        let expire_at_ms = if with_expiry {
            let t = it.next().unwrap_or_default();
            let t: i64 = std::str::from_utf8(&t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("field expiry is not an integer")?;
            (t != 0).then_some(t)
        } else {
            None
        };
        out.push(HashField {
            field,
            value,
            expire_at_ms,
        });
    }
    Ok(out)
}

/// A bounds-checked cursor over an in-memory encoded blob.
struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "entry at byte {} runs past the end of the {}-byte blob",
                    self.p,
                    self.b.len()
                )
            })?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> std::result::Result<u64, String> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
}

/// Sign-extends the low `bits` bits of `v`.
fn sext(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// Entries of a listpack (Redis 7+ small lists, sets, zsets, hashes), integers as decimal text.
pub fn listpack(b: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut c = Cur { b, p: 0 };
    let total = c.le(4)? as usize;
    if total != b.len() {
        return Err(format!("header says {total} bytes, blob has {}", b.len()));
    }
    c.le(2)?; // element count (65535 = unknown): the terminator decides
    let mut out = vec![];
    loop {
        let start = c.p;
        let e = c.u8()?;
        let v: Vec<u8> = if e == 0xff {
            if c.p != b.len() {
                return Err("bytes after the listpack terminator".into());
            }
            return Ok(out);
        } else if e & 0x80 == 0 {
            (e as i64).to_string().into_bytes()
        } else if e & 0xc0 == 0x80 {
            c.take((e & 0x3f) as usize)?.to_vec()
        } else if e & 0xe0 == 0xc0 {
            sext((((e & 0x1f) as u64) << 8) | c.u8()? as u64, 13)
                .to_string()
                .into_bytes()
        } else if e & 0xf0 == 0xe0 {
            let n = (((e & 0x0f) as usize) << 8) | c.u8()? as usize;
            c.take(n)?.to_vec()
        } else {
            match e {
                0xf0 => {
                    let n = c.le(4)? as usize;
                    c.take(n)?.to_vec()
                }
                0xf1 => sext(c.le(2)?, 16).to_string().into_bytes(),
                0xf2 => sext(c.le(3)?, 24).to_string().into_bytes(),
                0xf3 => sext(c.le(4)?, 32).to_string().into_bytes(),
                0xf4 => (c.le(8)? as i64).to_string().into_bytes(),
                _ => {
                    return Err(format!(
                        "unknown listpack entry encoding 0x{e:02x} at byte {start}"
                    ))
                }
            }
        };
        // The back-length: the entry's size (encoding + data) in 1 to 5 bytes.
        let len = c.p - start;
        let back = match len {
            0..=127 => 1,
            128..=16383 => 2,
            16384..=2097151 => 3,
            2097152..=268435455 => 4,
            _ => 5,
        };
        c.take(back)?;
        out.push(v);
    }
}

/// Entries of a ziplist (Redis before 7), integers as decimal text.
pub fn ziplist(b: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut c = Cur { b, p: 0 };
    let total = c.le(4)? as usize;
    if total != b.len() {
        return Err(format!("header says {total} bytes, blob has {}", b.len()));
    }
    c.le(4)?; // tail offset
    c.le(2)?; // entry count
    let mut out = vec![];
    loop {
        let first = c.u8()?;
        if first == 0xff {
            if c.p != b.len() {
                return Err("bytes after the ziplist terminator".into());
            }
            return Ok(out);
        }
        if first == 0xfe {
            c.take(4)?; // a previous-entry length of 254 or more
        }
        let e = c.u8()?;
        let v = match e >> 6 {
            0 => c.take((e & 0x3f) as usize)?.to_vec(),
            1 => {
                let n = (((e & 0x3f) as usize) << 8) | c.u8()? as usize;
                c.take(n)?.to_vec()
            }
            2 => {
                let s = c.take(4)?;
                let n = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
                c.take(n)?.to_vec()
            }
            _ => {
                let n: i64 = match e {
                    0xc0 => sext(c.le(2)?, 16),
                    0xd0 => sext(c.le(4)?, 32),
                    0xe0 => c.le(8)? as i64,
                    0xf0 => sext(c.le(3)?, 24),
                    0xfe => sext(c.le(1)?, 8),
                    0xf1..=0xfd => (e & 0x0f) as i64 - 1,
                    _ => return Err(format!("unknown ziplist entry encoding 0x{e:02x}")),
                };
                n.to_string().into_bytes()
            }
        };
        out.push(v);
    }
}

/// Members of an intset (sorted integers), as decimal text.
pub fn intset(b: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut c = Cur { b, p: 0 };
    let width = c.le(4)? as usize;
    if !matches!(width, 2 | 4 | 8) {
        return Err(format!("intset integer width {width} (2, 4 or 8 expected)"));
    }
    let n = c.le(4)? as usize;
    if n.checked_mul(width).map(|x| x + 8) != Some(b.len()) {
        return Err(format!(
            "intset of {n} {width}-byte integers does not fill its {} bytes",
            b.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            sext(c.le(width)?, width as u32 * 8)
                .to_string()
                .into_bytes(),
        );
    }
    Ok(out)
}

/// Field/value pairs of a zipmap (Redis before 2.6 small hashes).
pub fn zipmap(b: &[u8]) -> std::result::Result<Vec<HashField>, String> {
    let mut c = Cur { b, p: 0 };
    c.u8()?; // count, unreliable past 253
    let mut out = vec![];
    let len = |c: &mut Cur| -> std::result::Result<Option<usize>, String> {
        Ok(match c.u8()? {
            0xff => None,
            254 => Some(c.le(4)? as usize),
            n => Some(n as usize),
        })
    };
    loop {
        let Some(flen) = len(&mut c)? else {
            return Ok(out);
        };
        let field = c.take(flen)?.to_vec();
        let vlen = len(&mut c)?.ok_or("zipmap ends between a field and its value")?;
        let free = c.u8()? as usize;
        let value = c.take(vlen)?.to_vec();
        c.take(free)?;
        out.push(HashField {
            field,
            value,
            expire_at_ms: None,
        });
    }
}

/// LZF decompression (the format of liblzf, which Redis uses): literal runs and back-references.
pub fn lzf_decompress(input: &[u8], out_len: usize) -> std::result::Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len.min(input.len().saturating_mul(4).max(64)));
    let mut i = 0;
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let n = ctrl + 1;
            if i + n > input.len() {
                return Err("literal run past the end of the compressed data".into());
            }
            if out.len() + n > out_len {
                return Err("output longer than the declared length".into());
            }
            out.extend_from_slice(&input[i..i + n]);
            i += n;
        } else {
            let mut n = ctrl >> 5;
            if n == 7 {
                n += *input.get(i).ok_or("back-reference cut short")? as usize;
                i += 1;
            }
            n += 2;
            let back = ((ctrl & 0x1f) << 8)
                + *input.get(i).ok_or("back-reference cut short")? as usize
                + 1;
            i += 1;
            if back > out.len() {
                return Err("back-reference before the start of the output".into());
            }
            if out.len() + n > out_len {
                return Err("output longer than the declared length".into());
            }
            let from = out.len() - back;
            // Byte by byte: a reference may overlap the bytes it produces (a run).
            for k in 0..n {
                let x = out[from + k];
                out.push(x);
            }
        }
    }
    if out.len() != out_len {
        return Err(format!(
            "decompressed to {} bytes, {out_len} declared",
            out.len()
        ));
    }
    Ok(out)
}

/// CRC-64/Jones as Redis computes it (reflected, polynomial 0xad93d23594c935a9, initial value 0).
pub fn crc64(mut crc: u64, data: &[u8]) -> u64 {
    let t = &*CRC_TABLE;
    for &b in data {
        crc = t[((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

static CRC_TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
    // The reflected form of 0xad93d23594c935a9.
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut t = [0u64; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let mut c = i as u64;
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
        }
        *slot = c;
    }
    t
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        // The check value Redis's own crc64 test uses.
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn lzf_literals_and_back_references() {
        // "abcabcabc": literal "abc" then a back-reference of length 6 at distance 3.
        let data = [2u8, b'a', b'b', b'c', (4 << 5) as u8, 2];
        assert_eq!(lzf_decompress(&data, 9).unwrap(), b"abcabcabc");
        assert!(lzf_decompress(&data, 8).is_err());
        assert!(
            lzf_decompress(&[(1 << 5) as u8, 0], 3).is_err(),
            "reference before start"
        );
    }

    #[test]
    fn listpack_every_encoding() {
        let mut entries: Vec<u8> = vec![];
        let mut push = |enc: &[u8]| {
            entries.extend_from_slice(enc);
            entries.push(enc.len() as u8); // one-byte back-length (all entries here are short)
        };
        push(&[5]); // 7-bit uint
        push(&[0x82, b'h', b'i']); // 6-bit string
        push(&[0xc0 | 0x1f, 0xff]); // 13-bit int: -1
        push(&[0xe0, 2, b'o', b'k']); // 12-bit string
        push(&[0xf1, 0x00, 0x80]); // int16: -32768
        push(&[0xf2, 0xff, 0xff, 0x7f]); // int24: 8388607
        push(&[0xf3, 1, 0, 0, 0x80]); // int32
        push(&[0xf4, 0, 0, 0, 0, 0, 0, 0, 0x80]); // int64 min
        let mut b = vec![0u8; 6];
        b.extend_from_slice(&entries);
        b.push(0xff);
        let n = b.len() as u32;
        b[..4].copy_from_slice(&n.to_le_bytes());
        let v = listpack(&b).unwrap();
        let s: Vec<String> = v
            .iter()
            .map(|x| String::from_utf8(x.clone()).unwrap())
            .collect();
        assert_eq!(
            s,
            [
                "5",
                "hi",
                "-1",
                "ok",
                "-32768",
                "8388607",
                "-2147483647",
                "-9223372036854775808"
            ]
        );
        b[0] = b[0].wrapping_add(1);
        assert!(listpack(&b).is_err(), "wrong total length");
    }

    #[test]
    fn ziplist_every_encoding() {
        let entries: &[&[u8]] = &[
            &[0, 0x02, b'h', b'i'],
            &[4, 0xc0, 0xff, 0xff],       // int16 -1
            &[4, 0xf1],                   // immediate 0
            &[2, 0xfd],                   // immediate 12
            &[2, 0xfe, 0x80],             // int8 -128
            &[3, 0xf0, 0xff, 0xff, 0x7f], // int24
            &[5, 0xd0, 1, 0, 0, 0],       // int32 1
            &[7, 0xe0, 2, 0, 0, 0, 0, 0, 0, 0],
            &[11, 0x40, 3, b'a', b'b', b'c'],
        ];
        let mut b = vec![0u8; 10];
        for e in entries {
            b.extend_from_slice(e);
        }
        b.push(0xff);
        let n = b.len() as u32;
        b[..4].copy_from_slice(&n.to_le_bytes());
        let s: Vec<String> = ziplist(&b)
            .unwrap()
            .iter()
            .map(|x| String::from_utf8(x.clone()).unwrap())
            .collect();
        assert_eq!(
            s,
            ["hi", "-1", "0", "12", "-128", "8388607", "1", "2", "abc"]
        );
    }

    #[test]
    fn intset_and_zipmap() {
        let mut b = vec![2, 0, 0, 0, 2, 0, 0, 0];
        b.extend_from_slice(&(-3i16).to_le_bytes());
        b.extend_from_slice(&7i16.to_le_bytes());
        let s: Vec<_> = intset(&b).unwrap();
        assert_eq!(s, vec![b"-3".to_vec(), b"7".to_vec()]);
        assert!(intset(&b[..10]).is_err());
        let zm = [1u8, 1, b'f', 2, 1, b'v', b'w', 0, 0xff];
        let h = zipmap(&zm).unwrap();
        assert_eq!(
            h,
            vec![HashField {
                field: b"f".to_vec(),
                value: b"vw".to_vec(),
                expire_at_ms: None
            }]
        );
    }

    #[test]
    fn module_names_decode() {
        let name = b"MBbloom--";
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id = 0u64;
        for c in name {
            id = (id << 6) | CHARS.iter().position(|x| x == c).unwrap() as u64;
        }
        id = (id << 10) | 3;
        assert_eq!(module_name(id), "MBbloom--");
    }

    #[test]
    fn value_types_are_unique_and_known() {
        for (i, (t, ty, enc)) in VALUE_TYPES.iter().enumerate() {
            assert!(
                VALUE_TYPES[..i].iter().all(|r| r.0 != *t),
                "type {t} listed twice"
            );
            assert!(["string", "list", "set", "zset", "hash", "stream", "module"].contains(ty));
            assert!(!enc.is_empty());
            assert!(*t < opcode::KEY_META);
        }
    }

    /// A tiny dump written by hand: header, aux, a db, a string with expiry, EOF and its CRC.
    fn tiny(version: &str) -> Vec<u8> {
        let mut b = format!("REDIS{version}").into_bytes();
        b.extend_from_slice(&[opcode::AUX, 5]);
        b.extend_from_slice(b"ctime");
        b.extend_from_slice(&[0xc2]);
        b.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        b.extend_from_slice(&[opcode::SELECTDB, 3, opcode::EXPIRETIME_MS]);
        b.extend_from_slice(&1_800_000_000_000u64.to_le_bytes());
        b.extend_from_slice(&[0, 1, b'k', 0xc0, 42]);
        b.push(opcode::EOF);
        let c = crc64(0, &b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn reads_a_hand_made_dump_and_verifies_its_checksum() {
        let b = tiny("0011");
        let mut r = RdbReader::new(&b[..]).unwrap();
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(
            (e.db, e.key.as_slice(), e.expire_at_ms, e.encoding),
            (3, &b"k"[..], Some(1_800_000_000_000), "int")
        );
        assert_eq!(e.value, Value::String(b"42".to_vec()));
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.aux_field("ctime").as_deref(), Some("1700000000"));
        assert!(matches!(r.checksum, Checksum::Verified(_)));
    }

    #[test]
    fn bad_input_is_an_error_with_an_offset_never_a_panic() {
        let b = tiny("0011");
        // Every truncation fails (the checksum is the last 8 bytes, so no prefix passes).
        for n in 0..b.len() {
            let r = RdbReader::new(&b[..n]).and_then(|mut r| {
                while r.next_entry()?.is_some() {}
                Ok(())
            });
            let e = r.expect_err("a truncated dump must fail");
            assert!(e.offset <= n as u64, "{e}");
        }
        // Every single flipped byte fails (header, structure or checksum).
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let r = RdbReader::new(&c[..]).and_then(|mut r| {
                while r.next_entry()?.is_some() {}
                Ok(())
            });
            assert!(r.is_err(), "flipped byte {i} went unnoticed");
        }
        let e = RdbReader::new(&tiny("0013")[..]).err().unwrap();
        assert!(e.message.contains("version 13"), "{e}");
        let mut c = tiny("0011");
        let at = c.iter().position(|&x| x == opcode::SELECTDB).unwrap();
        c[at] = 200;
        let mut r = RdbReader::new(&c[..]).unwrap();
        let e = r.next_entry().unwrap_err();
        assert_eq!(e.offset, at as u64);
        assert!(
            e.message.contains("unknown opcode or value type 200"),
            "{e}"
        );
    }

    /// A listpack of small strings and 32-bit integers, as a stream node stores them.
    fn lp(items: &[std::result::Result<i32, &str>]) -> Vec<u8> {
        let mut body = vec![];
        for it in items {
            let enc: Vec<u8> = match it {
                Ok(n) => [&[0xf3u8][..], &n.to_le_bytes()].concat(),
                Err(s) => [&[0x80 | s.len() as u8][..], s.as_bytes()].concat(),
            };
            body.extend_from_slice(&enc);
            body.push(enc.len() as u8);
        }
        let mut b = vec![0u8; 6];
        b.extend_from_slice(&body);
        b.push(0xff);
        let n = b.len() as u32;
        b[..4].copy_from_slice(&n.to_le_bytes());
        b
    }

    fn rdb_string(b: &mut Vec<u8>, s: &[u8]) {
        assert!(s.len() < 64);
        b.push(s.len() as u8);
        b.extend_from_slice(s);
    }

    /// An RDB 9 (Redis 6.2) dump with a stream of type 15: one node whose master id is 1000-0 and whose entries
    /// are 1000-0 {a: 1, b: 2} (the master's fields), 1005-1 {c: 3} (its own), 1007-0 (deleted), with one
    /// consumer group `g` (last delivered 1000-0) whose consumer `alice` has one pending entry; then a module
    /// value of type 7.
    fn stream_and_module_dump() -> (Vec<u8>, Vec<u8>) {
        let mut b = b"REDIS0009".to_vec();
        b.extend_from_slice(&[opcode::SELECTDB, 0, 15]);
        rdb_string(&mut b, b"events");
        b.push(1); // one node
        let mut master = 1000u64.to_be_bytes().to_vec();
        master.extend_from_slice(&0u64.to_be_bytes());
        b.push(16);
        b.extend_from_slice(&master);
        let node = lp(&[
            Ok(3),
            Ok(1),
            Ok(2),
            Err("a"),
            Err("b"),
            Ok(0), // master entry: count, deleted, fields, 0
            Ok(2),
            Ok(0),
            Ok(0),
            Err("1"),
            Err("2"),
            Ok(5), // same fields as the master
            Ok(0),
            Ok(5),
            Ok(1),
            Ok(1),
            Err("c"),
            Err("3"),
            Ok(6), // own fields
            Ok(3),
            Ok(7),
            Ok(0),
            Err("4"),
            Err("5"),
            Ok(5), // deleted, same fields
        ]);
        // A listpack longer than 63 bytes needs the 14-bit length form.
        b.push(0x40 | (node.len() >> 8) as u8);
        b.push(node.len() as u8);
        b.extend_from_slice(&node);
        b.extend_from_slice(&[2, 0x40 | (1007u64 >> 8) as u8, 1007u64 as u8, 0]); // length, last id 1007-0
        b.push(1); // one group
        rdb_string(&mut b, b"g");
        b.extend_from_slice(&[0x40 | (1000u64 >> 8) as u8, 1000u64 as u8, 0]); // last delivered 1000-0
        b.push(1); // group PEL: one entry
        b.extend_from_slice(&master);
        b.extend_from_slice(&5u64.to_le_bytes()); // delivery time
        b.push(1); // delivery count
        b.push(1); // one consumer
        rdb_string(&mut b, b"alice");
        b.extend_from_slice(&9u64.to_le_bytes()); // seen time
        b.push(1);
        b.extend_from_slice(&master);
        // A module value: type 7, key, module id (64-bit length form), opcodes: an unsigned int, a string, EOF.
        b.push(7);
        rdb_string(&mut b, b"mod");
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let id = b"ReJSON-RL".iter().fold(0u64, |id, c| {
            (id << 6) | CHARS.iter().position(|x| x == c).unwrap() as u64
        });
        b.push(0x81);
        b.extend_from_slice(&((id << 10) | 3).to_be_bytes());
        let raw = vec![2, 7, 5, 2, b'h', b'i', 0];
        b.extend_from_slice(&raw);
        b.push(opcode::EOF);
        let c = crc64(0, &b);
        b.extend_from_slice(&c.to_le_bytes());
        (b, raw)
    }

    #[test]
    fn streams_and_module_values_are_read_whole() {
        let (b, raw) = stream_and_module_dump();
        let mut r = RdbReader::new(&b[..]).unwrap();
        let e = r.next_entry().unwrap().unwrap();
        let Value::Stream(st) = e.value else {
            panic!("not a stream: {:?}", e.value)
        };
        let f = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(
            st.entries,
            vec![
                StreamEntry {
                    id: (1000, 0),
                    fields: vec![f("a", "1"), f("b", "2")]
                },
                StreamEntry {
                    id: (1005, 1),
                    fields: vec![f("c", "3")]
                },
            ]
        );
        assert_eq!(st.last_id, (1007, 0));
        assert_eq!(
            st.groups,
            vec![StreamGroup {
                name: b"g".to_vec(),
                last_delivered_id: (1000, 0),
                pending: 1,
                consumers: vec![(b"alice".to_vec(), 1)],
            }]
        );
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(
            e.value,
            Value::Module(ModuleValue {
                name: "ReJSON-RL".into(),
                version: 3,
                raw: raw.clone()
            })
        );
        assert!(r.next_entry().unwrap().is_none());
        assert!(matches!(r.checksum, Checksum::Verified(_)));

        // The same module value as DUMP returns it: type byte, module id, the opcodes, version, CRC64.
        let start = b.windows(4).position(|w| w == [7, 3, b'm', b'o']).unwrap();
        let mut payload = vec![7];
        payload.extend_from_slice(&b[start + 5..b.len() - 9]);
        payload.extend_from_slice(&9u16.to_le_bytes());
        let c = crc64(0, &payload);
        payload.extend_from_slice(&c.to_le_bytes());
        let (t, v) = dump_payload(&payload).unwrap();
        assert_eq!(t, 7);
        assert_eq!(
            v,
            Value::Module(ModuleValue {
                name: "ReJSON-RL".into(),
                version: 3,
                raw
            })
        );
        let mut bad = payload.clone();
        bad[3] ^= 1;
        assert!(dump_payload(&bad).is_err());
    }
}
