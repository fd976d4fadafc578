//! `hashing-v1`: a dependency-free feature-hashing embedder (768 dims).
//!
//! No model, no network: every text is turned into a bag of features, each feature is hashed into one of 768
//! buckets with a ±1 sign, the weighted counts are summed and the vector is L2-normalised. Texts that share words,
//! word pairs or word pieces (so also inflections: "parse"/"parsing", "file"/"files") land close in cosine; unrelated
//! texts are near-orthogonal. It is a lexical embedding, not a semantic one, but it is fast, deterministic and
//! good enough for recall on the source's own vocabulary until a model provider is configured.
//!
//! # Features (all taken from the text lowercased with Unicode rules, `char::to_lowercase`)
//!
//! - words: maximal runs of `char::is_alphanumeric` characters (Unicode-aware; the test is made on the original
//!   character, its whole lowercase expansion joins the word). No Unicode normalisation is applied: NFC and NFD
//!   spellings of the same text give different vectors.
//! - word unigrams `w`, weight [`UNIGRAM_WEIGHT`];
//! - word bigrams `"a b"` (one ASCII space) of adjacent words, weight [`BIGRAM_WEIGHT`];
//! - character n-grams, n = [`CHAR_NGRAM_MIN`]..=[`CHAR_NGRAM_MAX`] counted in chars (not bytes), over each word
//!   padded as `<word>`, weight [`CHAR_NGRAM_WEIGHT`].
//!
//! All features share one hash space and one seed. Bigrams contain a space and can never equal a unigram; padded
//! n-grams containing `<`/`>` cannot either, while an inner n-gram may equal a short word ("the" in "other"), which
//! is the usual fastText behaviour and harmless.
//!
//! If a text has no word at all (empty, only punctuation or symbols), its raw bytes are hashed as one feature of
//! weight 1.0, so the vector is never zero; the same fallback is used in the (astronomically rare) case where the
//! signed features cancel out exactly.
//!
//! # Identity
//!
//! The output is fully determined by: [`HASHING_SEED`], the hash function (XXH3-64 with seed, `xxhash-rust`), the
//! bucket rule (`h % 768`), the sign rule (bit 63 of `h`: 0 → +, 1 → −), the weights and n-gram range above, and
//! the tokenisation. Changing any of them changes every vector and must come with a new provider name
//! (`hashing-v2`), since vectors from different versions are not comparable.

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::EmbeddingProvider;
use crate::error::{Error, Result};

/// Provider name recorded in provenance.
pub const HASHING_NAME: &str = "hashing-v1";

/// Seed of every feature hash. Part of the identity of `hashing-v1` vectors: never change it without renaming the
/// provider. (The bytes spell "ENGRAMv1".)
pub const HASHING_SEED: u64 = 0x454E_4752_414D_7631;

/// Weight of a word unigram.
pub const UNIGRAM_WEIGHT: f32 = 1.0;
/// Weight of a word bigram (two adjacent words joined by one space).
pub const BIGRAM_WEIGHT: f32 = 0.7;
/// Weight of each character n-gram of a padded word.
pub const CHAR_NGRAM_WEIGHT: f32 = 0.5;
/// Shortest character n-gram (in chars, padding `<`/`>` included).
pub const CHAR_NGRAM_MIN: usize = 3;
/// Longest character n-gram.
pub const CHAR_NGRAM_MAX: usize = 5;

/// Engram's dimension, so hashed vectors go to an Engram server as they are.
const DIM: usize = 768;

/// Texts per rayon work item at least: one text costs about a microsecond, so smaller splits are all overhead.
const MIN_TEXTS_PER_TASK: usize = 32;

/// Feature-hashing embedder, see the module docs. Stateless and cheap to create.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashingProvider;

impl HashingProvider {
    pub fn new() -> Self {
        HashingProvider
    }
}

impl EmbeddingProvider for HashingProvider {
    fn name(&self) -> String {
        HASHING_NAME.to_string()
    }

    fn dimension(&self) -> usize {
        DIM
    }

    /// Parallel over texts (rayon). Each row depends on its own text only and is computed in a fixed order, so the
    /// result is bit-identical whatever the thread count, batch size or position of the text in the batch.
    fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        if out.len() != texts.len() * DIM {
            return Err(Error::Internal(format!(
                "{HASHING_NAME}: output buffer has {} floats, expected {} texts x {DIM}",
                out.len(),
                texts.len()
            )));
        }
        out.par_chunks_mut(DIM)
            .zip(texts.par_iter())
            .with_min_len(MIN_TEXTS_PER_TASK)
            .for_each_init(Scratch::default, |scratch, (row, text)| {
                let row: &mut [f32; DIM] = row
                    .try_into()
                    .expect("par_chunks_mut(DIM) yields full rows");
                embed_one(text, row, scratch);
            });
        Ok(())
    }
}

/// Buffers reused across the texts of one rayon task, so features cost no heap allocation once warmed up.
#[derive(Default)]
struct Scratch {
    /// The lowercased words, concatenated (separators are not kept).
    lower: String,
    /// Byte ranges of the words in `lower`.
    words: Vec<(usize, usize)>,
    /// The feature being built: a bigram or a padded word.
    feature: String,
    /// Char boundaries (byte offsets) of the padded word, with its end as the last entry.
    bounds: Vec<usize>,
}

/// Embed one text into `row` (overwritten) and L2-normalise it.
fn embed_one(text: &str, row: &mut [f32; DIM], scratch: &mut Scratch) {
    row.fill(0.0);
    let Scratch {
        lower,
        words,
        feature,
        bounds,
    } = scratch;

    // Lowercase and tokenise in one pass; the alphanumeric test is on the source char. ASCII takes a fast path
    // with the same result (`to_lowercase` goes through the Unicode tables and was ~30% of the time otherwise).
    lower.clear();
    words.clear();
    let mut start: Option<usize> = None;
    for c in text.chars() {
        let alnum = if c.is_ascii() {
            c.is_ascii_alphanumeric()
        } else {
            c.is_alphanumeric()
        };
        if alnum {
            if start.is_none() {
                start = Some(lower.len());
            }
            if c.is_ascii() {
                lower.push(c.to_ascii_lowercase());
            } else {
                lower.extend(c.to_lowercase());
            }
        } else if let Some(s) = start.take() {
            words.push((s, lower.len()));
        }
    }
    if let Some(s) = start {
        words.push((s, lower.len()));
    }

    for (k, &(a, b)) in words.iter().enumerate() {
        let word = &lower[a..b];
        add_feature(row, word.as_bytes(), UNIGRAM_WEIGHT);

        if k > 0 {
            let (pa, pb) = words[k - 1];
            feature.clear();
            feature.push_str(&lower[pa..pb]);
            feature.push(' ');
            feature.push_str(word);
            add_feature(row, feature.as_bytes(), BIGRAM_WEIGHT);
        }

        feature.clear();
        feature.push('<');
        feature.push_str(word);
        feature.push('>');
        bounds.clear();
        bounds.extend(feature.char_indices().map(|(i, _)| i));
        bounds.push(feature.len());
        let chars = bounds.len() - 1;
        let bytes = feature.as_bytes();
        for n in CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX.min(chars) {
            for i in 0..=chars - n {
                add_feature(row, &bytes[bounds[i]..bounds[i + n]], CHAR_NGRAM_WEIGHT);
            }
        }
    }

    if words.is_empty() || !l2_normalize(row) {
        // No features, or (practically never) features that cancelled exactly: one feature for the raw text.
        row.fill(0.0);
        add_feature(row, text.as_bytes(), UNIGRAM_WEIGHT);
        let ok = l2_normalize(row);
        debug_assert!(ok, "a single ±1 feature always normalises");
    }
}

/// Hash one feature into its bucket with its sign. `h % DIM < DIM` lets the compiler drop the bounds check.
#[inline(always)]
fn add_feature(row: &mut [f32; DIM], bytes: &[u8], weight: f32) {
    let h = xxh3_64_with_seed(bytes, HASHING_SEED);
    let bucket = (h % DIM as u64) as usize;
    let signed = if h >> 63 == 0 { weight } else { -weight };
    row[bucket] += signed;
}

/// Scale `row` to unit L2 norm; false (row untouched) if the norm is zero or not finite.
///
/// Written for auto-vectorisation: the sum of squares runs over `chunks_exact(16)` of a fixed-size array (768 is a
/// multiple of 16, no remainder, no bounds checks) into 16 independent lane accumulators, which LLVM maps onto
/// SIMD registers (2 × AVX2 or 4 × SSE) without needing to reassociate floats; the lanes are then summed in a fixed
/// tree order, so the result is deterministic. The scaling loop is a plain element-wise multiply.
#[inline]
fn l2_normalize(row: &mut [f32; DIM]) -> bool {
    const LANES: usize = 16;
    const _: () = assert!(DIM % LANES == 0);
    let mut acc = [0.0f32; LANES];
    for chunk in row.chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += chunk[l] * chunk[l];
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    let sum = acc[0];
    if !(sum > 0.0 && sum.is_finite()) {
        return false;
    }
    let inv = 1.0 / sum.sqrt();
    for x in row.iter_mut() {
        *x *= inv;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed_all(texts: &[&str]) -> Vec<Vec<f32>> {
        let mut out = vec![f32::NAN; texts.len() * DIM];
        HashingProvider::new().embed(texts, &mut out).unwrap();
        out.chunks_exact(DIM).map(|r| r.to_vec()).collect()
    }

    fn embed1(text: &str) -> Vec<f32> {
        embed_all(&[text]).pop().unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn norm(a: &[f32]) -> f32 {
        dot(a, a).sqrt()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn name_and_dimension() {
        let p: HashingProvider = Default::default();
        assert_eq!(p.name(), "hashing-v1");
        assert_eq!(p.dimension(), 768);
        assert_eq!(embed1("hello world").len(), 768);
    }

    #[test]
    fn deterministic_across_calls_and_batches() {
        let texts: Vec<String> = (0..500)
            .map(|i| format!("record {i} of the parse config file {}", i * 7))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let all = embed_all(&refs);
        // Same text twice in one call and across calls.
        let again = embed_all(&[refs[3], refs[3]]);
        assert_eq!(bits(&again[0]), bits(&again[1]));
        assert_eq!(bits(&again[0]), bits(&all[3]));
        // Different groupings of the same texts.
        for size in [1, 7, 64, 499] {
            let mut row = 0;
            for group in refs.chunks(size) {
                for v in embed_all(group) {
                    assert_eq!(
                        bits(&v),
                        bits(&all[row]),
                        "row {row} with group size {size}"
                    );
                    row += 1;
                }
            }
        }
        // Different thread counts.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let single = pool.install(|| embed_all(&refs));
        for (a, b) in single.iter().zip(&all) {
            assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn unit_norm_and_never_zero() {
        let long = "word ".repeat(10_000);
        let texts = [
            "",
            "!!!",
            "   ",
            "Ünïcödé 日本語",
            "a",
            "hello world",
            "ÄÖÜ äöü",
            "🦀🦀",
            "İstanbul",
            &long,
        ];
        for (t, v) in texts.iter().zip(embed_all(&texts)) {
            assert!(v.iter().all(|x| x.is_finite()), "{t:?}");
            assert!(v.iter().any(|&x| x != 0.0), "{t:?} gave a zero vector");
            assert!((norm(&v) - 1.0).abs() < 1e-5, "{t:?} norm {}", norm(&v));
        }
        // Punctuation-only texts fall back to their raw bytes, so they still differ from each other.
        assert_ne!(bits(&embed1("!!!")), bits(&embed1("???")));
        assert_ne!(bits(&embed1("")), bits(&embed1("!!!")));
    }

    #[test]
    fn unicode_lowercase_and_tokenisation() {
        // Case-insensitive (Unicode), punctuation and whitespace are separators.
        assert_eq!(
            bits(&embed1("Ünïcödé 日本語")),
            bits(&embed1("ünïcödé, 日本語!"))
        );
        assert_eq!(bits(&embed1("HELLO   World")), bits(&embed1("hello world")));
        // Word order matters through bigrams.
        assert_ne!(
            bits(&embed1("dog bites man")),
            bits(&embed1("man bites dog"))
        );
    }

    #[test]
    fn similar_texts_are_closer() {
        let a = embed1("parse the config file");
        let b = embed1("parsing config files");
        let c = embed1("tropical fish aquarium");
        let near = dot(&a, &b);
        let far = dot(&a, &c);
        assert!(near > far + 0.2, "near {near} far {far}");
        assert!(near > 0.3, "near {near}");
        assert!(far.abs() < 0.2, "far {far}");
    }

    /// The feature definition of the module docs, written plainly (allocating), as an oracle for the fast path.
    fn reference(text: &str) -> Vec<f32> {
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.chars().flat_map(char::to_lowercase).collect())
            .collect();
        let mut features: Vec<(String, f32)> = Vec::new();
        for (k, w) in words.iter().enumerate() {
            features.push((w.clone(), UNIGRAM_WEIGHT));
            if k > 0 {
                features.push((format!("{} {}", words[k - 1], w), BIGRAM_WEIGHT));
            }
            let padded: Vec<char> = format!("<{w}>").chars().collect();
            for n in CHAR_NGRAM_MIN..=CHAR_NGRAM_MAX {
                for gram in padded.windows(n) {
                    features.push((gram.iter().collect(), CHAR_NGRAM_WEIGHT));
                }
            }
        }
        if features.is_empty() {
            features.push((text.to_string(), UNIGRAM_WEIGHT));
        }
        let mut v = vec![0.0f32; DIM];
        for (f, w) in features {
            let h = xxh3_64_with_seed(f.as_bytes(), HASHING_SEED);
            v[(h % 768) as usize] += if h >> 63 == 0 { w } else { -w };
        }
        let n = norm(&v);
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn matches_reference_definition() {
        let texts = [
            "Parse the CONFIG file, then RETRY.",
            "Ünïcödé 日本語 テキスト",
            "İstanbul ΣΊΣΥΦΟΣ straße ǅemal",
            "a",
            "x1 y2z3 -- 42",
            "",
            "?!",
            "emoji 🦀 between words",
        ];
        for (t, v) in texts.iter().zip(embed_all(&texts)) {
            let r = reference(t);
            for (i, (a, b)) in v.iter().zip(&r).enumerate() {
                assert!((a - b).abs() < 1e-6, "{t:?} dim {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rejects_wrong_buffer() {
        let mut out = vec![0.0; 767];
        assert!(HashingProvider::new().embed(&["x"], &mut out).is_err());
        let mut none: Vec<f32> = vec![];
        HashingProvider::new().embed(&[], &mut none).unwrap();
    }
}
