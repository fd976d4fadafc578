//! Reads an RDB dump with engram-migrate's reader (the same source file, compiled on its own) and prints the
//! number of keys per type: the reader's speed without the staging to Parquet. Used by scripts/bench-redis.sh.

#[path = "../../../src/source/redis/rdb.rs"]
#[allow(dead_code)]
mod rdb;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: rdb-scan DUMP.rdb");
        std::process::exit(2);
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(3);
        }
    };
    let run = || -> Result<(Vec<(&'static str, u64)>, u64), rdb::RdbError> {
        let mut r = rdb::RdbReader::new(std::io::BufReader::with_capacity(1 << 20, file))?;
        let mut counts: Vec<(&'static str, u64)> = vec![];
        let mut elements = 0u64;
        while let Some(e) = r.next_entry()? {
            let t = rdb::value_type(e.rdb_type).map(|x| x.0).unwrap_or("?");
            match counts.iter_mut().find(|c| c.0 == t) {
                Some(c) => c.1 += 1,
                None => counts.push((t, 1)),
            }
            elements += match &e.value {
                rdb::Value::List(v) | rdb::Value::Set(v) => v.len() as u64,
                rdb::Value::ZSet(v) => v.len() as u64,
                rdb::Value::Hash(v) => v.len() as u64,
                _ => 1,
            };
        }
        Ok((counts, elements))
    };
    match run() {
        Ok((counts, elements)) => println!("{counts:?} elements={elements}"),
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(3);
        }
    }
}
