//! `embed-bench PROVIDER TEXTS [VECTORS_OUT N]`: embeds every line of TEXTS with PROVIDER (`hashing` or
//! `model2vec:DIR`) in batches of 8192 through the project's provider code (src/embed/), and prints one JSON line:
//! texts, load and embed seconds, texts/s, peak RSS (VmHWM). With VECTORS_OUT, the first N vectors are written
//! there as little-endian f32 (for comparing with the Python package).

// The crate paths the provider files use, reduced to what they need.
mod error {
    #[derive(Debug)]
    pub enum Error {
        Internal(String),
        Usage(String),
    }
    impl Error {
        pub fn usage(m: impl Into<String>) -> Self {
            Error::Usage(m.into())
        }
    }
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }
    pub type Result<T, E = Error> = std::result::Result<T, E>;
}
mod schema {
    pub const EMBEDDING_DIM: usize = 768;
}
/// Same as src/embed/mod.rs. (At the crate root, as the provider files' `super::` is src/embed/ there.)
pub trait EmbeddingProvider: Send + Sync {
    fn name(&self) -> String;
    fn dimension(&self) -> usize;
    fn model(&self) -> Option<String> {
        None
    }
    fn embed(&self, texts: &[&str], out: &mut [f32]) -> crate::error::Result<()>;
}
#[path = "../../../src/embed/hashing.rs"]
mod hashing;
#[path = "../../../src/embed/model2vec.rs"]
mod model2vec;

use std::io::Write;
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: embed-bench hashing|model2vec:DIR TEXTS [VECTORS_OUT N]");
        std::process::exit(2);
    }
    let input = std::fs::read_to_string(&args[2]).expect("read the texts");
    let texts: Vec<&str> = input.lines().collect();
    let t0 = Instant::now();
    let provider: Box<dyn EmbeddingProvider> = if args[1] == "hashing" {
        Box::new(hashing::HashingProvider::new())
    } else if let Some(dir) = args[1].strip_prefix("model2vec:") {
        Box::new(
            model2vec::Model2VecProvider::load(std::path::Path::new(dir)).expect("load the model"),
        )
    } else {
        panic!("unknown provider {}", args[1]);
    };
    let load = t0.elapsed().as_secs_f64();
    let dim = provider.dimension();
    const BATCH: usize = 8192;
    let mut out = vec![0.0f32; BATCH * dim];
    let mut keep: Vec<f32> = Vec::new();
    let want = args
        .get(4)
        .map_or(0, |n| n.parse::<usize>().unwrap())
        .min(texts.len());
    let t1 = Instant::now();
    let mut checksum = 0.0f64;
    for chunk in texts.chunks(BATCH) {
        let buf = &mut out[..chunk.len() * dim];
        provider.embed(chunk, buf).expect("embed");
        checksum += buf[0] as f64;
        if keep.len() < want * dim {
            let n = (want * dim - keep.len()).min(buf.len());
            keep.extend_from_slice(&buf[..n]);
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    if let Some(path) = args.get(3) {
        let mut f = std::fs::File::create(path).unwrap();
        for x in &keep {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    println!(
        "{{\"impl\": \"rust {}\", \"provider\": \"{}\", \"threads\": {}, \"texts\": {}, \"dim\": {}, \"load_s\": {:.3}, \"embed_s\": {:.3}, \"texts_per_s\": {:.0}, \"peak_rss_mb\": {:.1}, \"checksum\": {:.6}}}",
        args[1].split(':').next().unwrap(),
        provider.name(),
        rayon::current_num_threads(),
        texts.len(),
        dim,
        load,
        secs,
        texts.len() as f64 / secs,
        peak_rss_mb(),
        checksum
    );
}
