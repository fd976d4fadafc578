//! The live Redis reader: SCAN with COUNT over each database, TYPE and the absolute expiry per key, values by
//! pipelined GET / LRANGE / SMEMBERS / ZRANGE WITHSCORES / HGETALL, and for collections larger than `BIG` the
//! SSCAN / ZSCAN / HSCAN family and LRANGE in slices, so one huge key is never asked for in one reply.
//!
//! Expiry is read as an absolute time (PEXPIRETIME, Redis 7.0+; HPEXPIRETIME for hash fields, Redis 7.4+), so
//! it is exact and the same as a dump's, whatever the time of the read. Servers before 7.0 get PTTL added to
//! the server's clock.

use std::time::Duration;

use redis::{Connection, Value as RV};

use super::{HashField, Item, Value};
use crate::error::{Error, Result};

/// Keys per SCAN page, and the size above which a collection is read in pages.
const SCAN_COUNT: usize = 1000;
const BIG: i64 = 1000;

pub struct Live {
    con: Connection,
    redacted: String,
    url_db: Option<u64>,
    run_id: String,
    /// (major, minor) of the server.
    version: (u32, u32),
}

fn err(url: &str, what: &str, e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    let hint = if msg.contains("WRONGPASS")
        || msg.contains("NOAUTH")
        || msg.contains("uthentication")
        || msg.contains("invalid password")
        || msg.contains("invalid username-password")
    {
        " (authentication failed: check the password in the URL, redis://:PASSWORD@HOST:PORT)"
    } else if msg.contains("refused")
        || msg.contains("timed out")
        || msg.contains("No route")
        || msg.contains("resolve")
    {
        " (the server is not reachable: check host and port, and that it is running)"
    } else {
        ""
    };
    Error::source_err(url.to_string(), format!("{what}: {msg}{hint}"))
}

pub use crate::source::redact_url as redact;

fn bytes(v: RV) -> Option<Vec<u8>> {
    match v {
        RV::BulkString(b) => Some(b),
        RV::SimpleString(s) => Some(s.into_bytes()),
        RV::Okay => Some(b"OK".to_vec()),
        RV::Int(i) => Some(i.to_string().into_bytes()),
        RV::Double(d) => Some(d.to_string().into_bytes()),
        RV::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn int(v: &RV) -> Option<i64> {
    match v {
        RV::Int(i) => Some(*i),
        RV::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn list(v: RV) -> Vec<RV> {
    match v {
        RV::Array(a) | RV::Set(a) => a,
        RV::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => vec![],
    }
}

fn byte_list(v: RV) -> Vec<Vec<u8>> {
    list(v).into_iter().filter_map(bytes).collect()
}

impl Live {
    pub fn connect(url: &str) -> Result<Live> {
        let redacted = redact(url);
        let client = redis::Client::open(url).map_err(|e| err(&redacted, "bad Redis URL", e))?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .map_err(|e| err(&redacted, "cannot connect", e))?;
        con.set_read_timeout(Some(Duration::from_secs(300))).ok();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut con)
            .map_err(|e| err(&redacted, "INFO server", e))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let ver = field("redis_version");
        let mut it = ver.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        let version = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let url_db = url::Url::parse(url)
            .ok()
            .and_then(|u| u.path().trim_start_matches('/').parse::<u64>().ok());
        Ok(Live {
            con,
            redacted,
            url_db,
            run_id: field("run_id"),
            version,
        })
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }
    pub fn url_db(&self) -> Option<u64> {
        self.url_db
    }
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn q<T: redis::FromRedisValue>(&mut self, what: &str, c: &redis::Cmd) -> Result<T> {
        c.query(&mut self.con)
            .map_err(|e| err(&self.redacted, what, e))
    }

    fn pipe(&mut self, what: &str, p: &redis::Pipeline) -> Result<Vec<RV>> {
        p.query(&mut self.con)
            .map_err(|e| err(&self.redacted, what, e))
    }

    /// The server's clock (TIME), Unix ms.
    pub fn server_time_ms(&mut self) -> Result<i64> {
        let t: Vec<String> = self.q("TIME", &redis::cmd("TIME"))?;
        let s: i64 = t.first().and_then(|x| x.parse().ok()).unwrap_or(0);
        let us: i64 = t.get(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        Ok(s * 1000 + us / 1000)
    }

    /// Databases that hold keys (INFO keyspace), or just `only`.
    fn dbs(&mut self, only: Option<u64>) -> Result<Vec<u64>> {
        if let Some(d) = only {
            return Ok(vec![d]);
        }
        let info: String = self.q("INFO keyspace", redis::cmd("INFO").arg("keyspace"))?;
        Ok(info
            .lines()
            .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
            .collect())
    }

    /// What changes when the data does, as named signals: keys per database (`only`, else all), and the
    /// server's write counter since its last save with the time of that save (any write, an expiry included,
    /// moves one of the two; reads move neither). A restart resets the counter, so the run id is said too.
    pub fn change_signals(&mut self, only: Option<u64>) -> Result<Vec<(String, String)>> {
        let keyspace: String = self.q("INFO keyspace", redis::cmd("INFO").arg("keyspace"))?;
        let persistence: String =
            self.q("INFO persistence", redis::cmd("INFO").arg("persistence"))?;
        let mut out = vec![("server run id".to_string(), self.run_id.clone())];
        for line in keyspace.lines() {
            // db0:keys=3,expires=0,avg_ttl=0 (avg_ttl moves by itself, so only the key count counts)
            let Some((db, fields)) = line
                .trim()
                .strip_prefix("db")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let Ok(n) = db.parse::<u64>() else { continue };
            if only.is_some_and(|o| o != n) {
                continue;
            }
            let keys = fields
                .split(',')
                .find_map(|f| f.strip_prefix("keys="))
                .unwrap_or("0");
            out.push((format!("keys in db{n}"), keys.to_string()));
        }
        for (field, name) in [
            ("rdb_changes_since_last_save", "writes since the last save"),
            ("rdb_last_save_time", "time of the last save"),
        ] {
            let v = persistence
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
                .unwrap_or("?");
            out.push((name.to_string(), v.to_string()));
        }
        Ok(out)
    }

    /// Whether expiry is read as an absolute time (PEXPIRETIME, Redis 7+), or derived from PTTL.
    pub fn expiry_is_exact(&self) -> bool {
        self.version.0 >= 7
    }

    /// Function libraries the server holds (FUNCTION LIST, Redis 7+): code, not keys, so not migrated, but
    /// counted as a dump's are. 0 on a server without functions.
    pub fn function_libraries(&mut self) -> Result<u64> {
        if self.version.0 < 7 {
            return Ok(0);
        }
        let libs: RV = self.q("FUNCTION LIST", redis::cmd("FUNCTION").arg("LIST"))?;
        Ok(list(libs).len() as u64)
    }

    pub fn dbsize(&mut self, only: Option<u64>) -> Result<u64> {
        let mut n = 0;
        for db in self.dbs(only)? {
            self.select(db)?;
            let k: u64 = self.q("DBSIZE", &redis::cmd("DBSIZE"))?;
            n += k;
        }
        Ok(n)
    }

    fn select(&mut self, db: u64) -> Result<()> {
        self.q::<()>(&format!("SELECT {db}"), redis::cmd("SELECT").arg(db))
    }

    /// Every key of every database (or `only`), in SCAN order.
    pub fn for_each(
        &mut self,
        only: Option<u64>,
        f: &mut dyn FnMut(Item) -> Result<()>,
    ) -> Result<()> {
        for db in self.dbs(only)? {
            self.select(db)?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = self.q(
                    "SCAN",
                    redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(SCAN_COUNT),
                )?;
                for it in self.read_keys(db, keys)? {
                    f(it)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// Reads the given keys again (validation samples); keys that are gone are left out.
    pub fn fetch(&mut self, keys: &[(u64, Vec<u8>)]) -> Result<Vec<Item>> {
        let mut out = vec![];
        for (db, k) in keys {
            self.select(*db)?;
            out.extend(self.read_keys(*db, vec![k.clone()])?);
        }
        Ok(out)
    }

    /// TYPE + expiry, then sizes, then values, each step one pipeline for the whole page of keys.
    fn read_keys(&mut self, db: u64, keys: Vec<Vec<u8>>) -> Result<Vec<Item>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let absolute = self.version.0 >= 7;
        let mut p = redis::pipe();
        for k in &keys {
            p.cmd("TYPE").arg(k);
            if absolute {
                p.cmd("PEXPIRETIME").arg(k);
            } else {
                p.cmd("PTTL").arg(k);
            }
        }
        let now = if absolute { 0 } else { self.server_time_ms()? };
        let r = self.pipe("TYPE/PEXPIRETIME", &p)?;
        let mut meta = vec![];
        for (k, pair) in keys.into_iter().zip(r.chunks(2)) {
            let ty = pair
                .first()
                .cloned()
                .and_then(bytes)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let e = pair.get(1).and_then(int).unwrap_or(-2);
            if ty == "none" || e == -2 {
                continue; // gone since SCAN saw it
            }
            let expire = (e >= 0).then(|| if absolute { e } else { now + e });
            meta.push((k, ty, expire));
        }
        // Sizes of collections (to choose one reply or paging) and string values.
        let mut p = redis::pipe();
        for (k, ty, _) in &meta {
            let c = match ty.as_str() {
                "string" => "GET",
                "list" => "LLEN",
                "set" => "SCARD",
                "zset" => "ZCARD",
                "hash" => "HLEN",
                "stream" => "XLEN",
                _ => "EXISTS",
            };
            p.cmd(c).arg(k);
        }
        let sizes = self.pipe("GET/sizes", &p)?;
        let mut small = redis::pipe();
        let mut small_idx = vec![];
        let mut items: Vec<Option<Item>> = vec![];
        for (i, ((k, ty, expire), size)) in meta.into_iter().zip(sizes).enumerate() {
            let n = int(&size).unwrap_or(0);
            let value = match ty.as_str() {
                "string" => match bytes(size) {
                    Some(b) => Value::String(b),
                    None => {
                        items.push(None);
                        continue;
                    }
                },
                "stream" => self.read_stream(&k)?,
                "list" | "set" | "zset" | "hash" if n > BIG => self.read_big(&k, &ty, n)?,
                "list" | "set" | "zset" | "hash" => {
                    match ty.as_str() {
                        "list" => small.cmd("LRANGE").arg(&k).arg(0).arg(-1),
                        "set" => small.cmd("SMEMBERS").arg(&k),
                        "zset" => small.cmd("ZRANGE").arg(&k).arg(0).arg(-1).arg("WITHSCORES"),
                        _ => small.cmd("HGETALL").arg(&k),
                    };
                    small_idx.push((i, ty.clone()));
                    Value::List(vec![]) // filled below
                }
                // Anything else is a module's type: its value as DUMP serialises it (what a dump file holds).
                _ => match self.read_module(&k)? {
                    Some(v) => v,
                    None => {
                        items.push(None); // gone since TYPE saw it
                        continue;
                    }
                },
            };
            items.push(Some(Item {
                db,
                key: k,
                expire_at_ms: expire,
                encoding: None,
                value,
            }));
        }
        if !small_idx.is_empty() {
            let vals = self.pipe("values", &small)?;
            for ((i, ty), v) in small_idx.into_iter().zip(vals) {
                if let Some(it) = items[i].as_mut() {
                    it.value = decode(&ty, byte_list(v))?;
                }
            }
        }
        let mut items: Vec<Item> = items.into_iter().flatten().collect();
        if self.version >= (7, 4) {
            self.hash_field_expiry(&mut items)?;
        }
        // A collection emptied since TYPE saw it no longer exists.
        items.retain(|it| !matches!(&it.value, Value::List(v) | Value::Set(v) if v.is_empty()));
        items.retain(|it| !matches!(&it.value, Value::ZSet(v) if v.is_empty()));
        items.retain(|it| !matches!(&it.value, Value::Hash(v) if v.is_empty()));
        Ok(items)
    }

    /// A stream: its entries by XRANGE in pages of `BIG`, its last id (XINFO STREAM), its consumer groups (XINFO
    /// GROUPS) and their consumers (XINFO CONSUMERS), the same facts a dump holds.
    fn read_stream(&mut self, k: &[u8]) -> Result<Value> {
        use super::rdb::{Stream, StreamEntry, StreamGroup};
        let bad = |what: &str| {
            Error::Internal(format!(
                "{what} of stream {:?} is not what Redis documents",
                String::from_utf8_lossy(k)
            ))
        };
        let mut st = Stream::default();
        let mut start = "-".to_string();
        loop {
            let page: RV = self.q(
                "XRANGE",
                redis::cmd("XRANGE")
                    .arg(k)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(BIG),
            )?;
            let page = list(page);
            let got = page.len() as i64;
            for e in page {
                let mut parts = list(e).into_iter();
                let id = parts
                    .next()
                    .and_then(bytes)
                    .and_then(|b| stream_id(&b))
                    .ok_or_else(|| bad("an XRANGE entry id"))?;
                let flat = parts.next().map(byte_list).unwrap_or_default();
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    fields.push((f, v));
                }
                st.entries.push(StreamEntry { id, fields });
            }
            match st.entries.last() {
                // An exclusive start (Redis 6.2+) continues after the last entry read.
                Some(last) if got >= BIG => start = format!("({}-{}", last.id.0, last.id.1),
                _ => break,
            }
        }
        let mut info = by_name(self.q("XINFO STREAM", redis::cmd("XINFO").arg("STREAM").arg(k))?);
        st.last_id = info
            .remove("last-generated-id")
            .and_then(bytes)
            .and_then(|b| stream_id(&b))
            .ok_or_else(|| bad("XINFO STREAM's last-generated-id"))?;
        let groups: RV = self.q("XINFO GROUPS", redis::cmd("XINFO").arg("GROUPS").arg(k))?;
        for g in list(groups) {
            let mut g = by_name(g);
            let name = g
                .remove("name")
                .and_then(bytes)
                .ok_or_else(|| bad("a group name"))?;
            let last_delivered_id = g
                .remove("last-delivered-id")
                .and_then(bytes)
                .and_then(|b| stream_id(&b))
                .ok_or_else(|| bad("a group's last-delivered-id"))?;
            let pending = g.get("pending").and_then(int).unwrap_or(0).max(0) as u64;
            let cs: RV = self.q(
                "XINFO CONSUMERS",
                redis::cmd("XINFO").arg("CONSUMERS").arg(k).arg(&name),
            )?;
            let mut consumers = vec![];
            for c in list(cs) {
                let mut c = by_name(c);
                let cname = c
                    .remove("name")
                    .and_then(bytes)
                    .ok_or_else(|| bad("a consumer name"))?;
                let p = c.get("pending").and_then(int).unwrap_or(0).max(0) as u64;
                consumers.push((cname, p));
            }
            st.groups.push(StreamGroup {
                name,
                last_delivered_id,
                pending,
                consumers,
            });
        }
        Ok(Value::Stream(st))
    }

    /// A module value through DUMP (the RDB encoding of the value, which this reader decodes as far as the module
    /// id and keeps raw after it); None when the key is gone.
    fn read_module(&mut self, k: &[u8]) -> Result<Option<Value>> {
        let payload: Option<Vec<u8>> = self.q("DUMP", redis::cmd("DUMP").arg(k))?;
        let Some(payload) = payload else {
            return Ok(None);
        };
        let (_, v) = super::rdb::dump_payload(&payload).map_err(|e| {
            err(
                &self.redacted,
                &format!("DUMP of key {:?}", String::from_utf8_lossy(k)),
                e,
            )
        })?;
        Ok(Some(v))
    }

    /// Pages through a big collection.
    fn read_big(&mut self, k: &[u8], ty: &str, n: i64) -> Result<Value> {
        if ty == "list" {
            let mut v = Vec::with_capacity(n as usize);
            let mut start = 0i64;
            loop {
                let page: Vec<Vec<u8>> = self.q(
                    "LRANGE",
                    redis::cmd("LRANGE").arg(k).arg(start).arg(start + BIG - 1),
                )?;
                let got = page.len() as i64;
                v.extend(page);
                if got < BIG {
                    break;
                }
                start += BIG;
            }
            return Ok(Value::List(v));
        }
        let c = match ty {
            "set" => "SSCAN",
            "zset" => "ZSCAN",
            _ => "HSCAN",
        };
        let mut all = vec![];
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) =
                self.q(c, redis::cmd(c).arg(k).arg(cursor).arg("COUNT").arg(BIG))?;
            all.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut v = decode(ty, all)?;
        // SCAN may return an element more than once (while the server rehashes): keep each once.
        match &mut v {
            Value::Set(s) => {
                s.sort();
                s.dedup();
            }
            Value::ZSet(z) => {
                z.sort_by(|a, b| a.0.cmp(&b.0));
                z.dedup_by(|a, b| a.0 == b.0);
            }
            Value::Hash(h) => {
                h.sort_by(|a, b| a.field.cmp(&b.field));
                h.dedup_by(|a, b| a.field == b.field);
            }
            _ => {}
        }
        Ok(v)
    }

    /// Per-field expiry of hashes (HPEXPIRETIME, Redis 7.4+): -1 = none, -2 = field gone.
    fn hash_field_expiry(&mut self, items: &mut [Item]) -> Result<()> {
        let mut p = redis::pipe();
        let mut which = vec![];
        for (i, it) in items.iter().enumerate() {
            if let Value::Hash(h) = &it.value {
                if h.is_empty() {
                    continue;
                }
                let c = p
                    .cmd("HPEXPIRETIME")
                    .arg(&it.key)
                    .arg("FIELDS")
                    .arg(h.len());
                for f in h {
                    c.arg(&f.field);
                }
                which.push(i);
            }
        }
        if which.is_empty() {
            return Ok(());
        }
        let r = self.pipe("HPEXPIRETIME", &p)?;
        for (i, v) in which.into_iter().zip(r) {
            if let Value::Hash(h) = &mut items[i].value {
                let times = list(v);
                let mut keep = vec![];
                for (mut f, t) in std::mem::take(h).into_iter().zip(times.iter().map(int)) {
                    match t {
                        Some(-2) => continue,
                        Some(t) if t >= 0 => f.expire_at_ms = Some(t),
                        _ => {}
                    }
                    keep.push(f);
                }
                *h = keep;
            }
        }
        Ok(())
    }
}

/// A reply of field/value pairs (RESP2 flat array or RESP3 map) by field name.
fn by_name(v: RV) -> std::collections::HashMap<String, RV> {
    let mut out = std::collections::HashMap::new();
    let mut it = list(v).into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = bytes(k) {
            out.insert(String::from_utf8_lossy(&k).into_owned(), v);
        }
    }
    out
}

/// A stream id `ms-seq` as Redis prints it.
fn stream_id(b: &[u8]) -> Option<(u64, u64)> {
    let (ms, seq) = std::str::from_utf8(b).ok()?.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A flat reply to a value of type `ty`.
fn decode(ty: &str, flat: Vec<Vec<u8>>) -> Result<Value> {
    Ok(match ty {
        "list" => Value::List(flat),
        "set" => Value::Set(flat),
        "zset" => {
            let mut v = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(m), Some(s)) = (it.next(), it.next()) {
                let score = std::str::from_utf8(&s)
                    .ok()
                    .and_then(super::rdb::parse_double)
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "ZRANGE returned a score that is not a number: {:?}",
                            String::from_utf8_lossy(&s)
                        ))
                    })?;
                v.push((m, score));
            }
            Value::ZSet(v)
        }
        _ => {
            let mut v = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(field), Some(value)) = (it.next(), it.next()) {
                v.push(HashField {
                    field,
                    value,
                    expire_at_ms: None,
                });
            }
            Value::Hash(v)
        }
    })
}
