//! Fuzzes the RDB reader: any bytes must give entries or an error with an offset, never a panic, a hang or an
//! allocation driven by an unread length. The reader depends on std only, so it is compiled here on its own.
#![no_main]

#[path = "../../src/source/redis/rdb.rs"]
#[allow(dead_code)]
mod rdb;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = rdb::RdbReader::new(data) {
        loop {
            match r.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        e.offset <= data.len() as u64,
                        "offset {} past the input ({} bytes)",
                        e.offset,
                        data.len()
                    );
                    break;
                }
            }
        }
    }
    // The blob decoders on their own, too.
    let _ = rdb::listpack(data);
    let _ = rdb::ziplist(data);
    let _ = rdb::intset(data);
    let _ = rdb::zipmap(data);
    if data.len() > 2 {
        let _ = rdb::lzf_decompress(&data[2..], data[0] as usize * 256 + data[1] as usize);
    }
});
