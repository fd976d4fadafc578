//! model2vec static embeddings (`--embedding-provider model2vec:DIR`), loaded from a local directory with the
//! `model2vec-rs` crate, built without any network feature (`local-only`): nothing is ever downloaded.
//!
//! The directory holds `model.safetensors` (the token embedding table, tensor `embeddings`), `tokenizer.json`
//! (a Hugging Face tokenizer) and `config.json`, as model2vec saves them; `scripts/models.sh` fetches
//! potion-base-8M (256 dimensions) into a cache for the tests and benchmarks.
//!
//! A text's vector is the mean of its tokens' rows (at most 512 tokens, as the Python package does), L2-normalised
//! (always: the stage needs unit vectors, whatever `normalize` in config.json says). The texts of a call are
//! spread over rayon's pool, each written into its row of the caller's buffer. The stage zero-pads vectors to 768;
//! padding with zeros changes neither dot products nor norms, so cosine similarity is the model's own.
//!
//! A text with no known token (empty, or only characters the vocabulary maps to `[UNK]`) would be the zero vector,
//! which Engram cannot use: it gets a deterministic unit vector instead, one signed component chosen by the text's
//! hash (so two such texts differ, and the same text always gives the same vector).
//!
//! Identity: the provider name is `model2vec:<dir name>:<fingerprint>`, the fingerprint being XXH3-64 of the three
//! files' bytes, so a changed model is never mistaken for the old one (in the bundle's provenance, in the
//! persistent cache and in the resume key).

use std::path::{Path, PathBuf};

use model2vec_rs::model::StaticModel;
use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::EmbeddingProvider;
use crate::error::{Error, Result};

/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// Texts per rayon work item at least: a short text costs a few microseconds.
const MIN_TEXTS_PER_TASK: usize = 16;

pub struct Model2VecProvider {
    model: StaticModel,
    dim: usize,
    name: String,
    dir: PathBuf,
}

impl std::fmt::Debug for Model2VecProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model2VecProvider")
            .field("name", &self.name)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Model2VecProvider {
    /// Load the model in `dir`. Errors name the directory and the missing or unreadable file.
    pub fn load(dir: &Path) -> Result<Self> {
        let what = |msg: String| {
            Error::usage(format!(
                "--embedding-provider model2vec:{}: {msg}",
                dir.display()
            ))
        };
        if !dir.is_dir() {
            return Err(what(
                "not a directory; give a model2vec model directory (model.safetensors, tokenizer.json, \
                 config.json), e.g. the one scripts/models.sh prints"
                    .into(),
            ));
        }
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(3);
        let mut hasher = Xxh3::new();
        for f in MODEL_FILES {
            let p = dir.join(f);
            let b = std::fs::read(&p).map_err(|e| {
                what(format!(
                    "cannot read {f} ({e}); a model2vec directory holds {}",
                    MODEL_FILES.join(", ")
                ))
            })?;
            hasher.update(&(b.len() as u64).to_le_bytes());
            hasher.update(&b);
            bytes.push(b);
        }
        let model = StaticModel::from_bytes(&bytes[1], &bytes[0], &bytes[2], Some(true))
            .map_err(|e| what(format!("not a usable model2vec model: {e:#}")))?;
        let dim = model.dim();
        let base = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(Model2VecProvider {
            model,
            dim,
            name: format!("model2vec:{base}:{:016x}", hasher.digest()),
            dir: dir.to_path_buf(),
        })
    }
}

impl EmbeddingProvider for Model2VecProvider {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn dimension(&self) -> usize {
        self.dim
    }

    fn model(&self) -> Option<String> {
        Some(self.dir.display().to_string())
    }

    fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        let dim = self.dim;
        if out.len() != texts.len() * dim {
            return Err(Error::Internal(format!(
                "{}: output buffer has {} floats, expected {} texts x {dim}",
                self.name,
                out.len(),
                texts.len()
            )));
        }
        out.par_chunks_mut(dim)
            .zip(texts.par_iter())
            .with_min_len(MIN_TEXTS_PER_TASK)
            .try_for_each(|(row, text)| self.embed_one(text, row))
    }
}

impl Model2VecProvider {
    fn embed_one(&self, text: &str, row: &mut [f32]) -> Result<()> {
        // model2vec-rs panics (`expect`) if its tokenizer fails; turn that into an error naming the text's start
        // instead of tearing down the run. (The WordPiece path of BERT-style models has no such failure.)
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.model.encode_single(text)
        }))
        .map_err(|_| {
            let head: String = text.chars().take(40).collect();
            Error::Internal(format!(
                "{}: the tokenizer failed on the text starting {head:?}",
                self.name
            ))
        })?;
        if v.len() != row.len() {
            return Err(Error::Internal(format!(
                "{}: model returned {} floats, expected {}",
                self.name,
                v.len(),
                row.len()
            )));
        }
        row.copy_from_slice(&v);
        let sq: f32 = row.iter().map(|x| x * x).sum();
        if !(sq > 0.0 && sq.is_finite()) {
            fallback(text, row);
        }
        Ok(())
    }
}

/// The unit vector of a text without known tokens: one ±1 component picked by the text's hash.
fn fallback(text: &str, row: &mut [f32]) {
    row.fill(0.0);
    let h = xxh3_64(text.as_bytes());
    let i = (h % row.len() as u64) as usize;
    row[i] = if h >> 63 == 0 { 1.0 } else { -1.0 };
}

/// A tiny model2vec model written into a directory, for tests that must not need the real files: a BERT-style
/// WordPiece tokenizer over `vocab` and an embedding table given row by row (all in the same order as `vocab`).
#[cfg(test)]
pub(crate) mod synthetic {
    use std::path::Path;

    /// Writes model.safetensors (F32 tensor `embeddings`, shape [vocab, dim]), tokenizer.json and config.json.
    pub fn write_model(dir: &Path, vocab: &[&str], rows: &[Vec<f32>]) {
        assert_eq!(vocab.len(), rows.len());
        let dim = rows[0].len();
        std::fs::create_dir_all(dir).unwrap();
        // safetensors: u64 LE header length, JSON header, raw little-endian data.
        let data: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let header = serde_json::json!({
            "embeddings": {"dtype": "F32", "shape": [vocab.len(), dim], "data_offsets": [0, data.len()]}
        })
        .to_string();
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header.as_bytes());
        st.extend_from_slice(&data);
        std::fs::write(dir.join("model.safetensors"), st).unwrap();

        let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), serde_json::Value::from(i)))
            .collect();
        let special = |id: usize, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        };
        let tokenizer = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab_map}
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({"model_type": "model2vec", "hidden_dim": dim, "normalize": true})
                .to_string(),
        )
        .unwrap();
    }

    /// A 4-dimensional model: `[PAD]`, `[UNK]`, then words on axes (cat/kitten/feline on axis 0, car/automobile on
    /// axis 1, "sun" on axis 2, "##s" a plural suffix on axis 3).
    pub fn tiny(dir: &Path) {
        let vocab = [
            "[PAD]",
            "[UNK]",
            "cat",
            "kitten",
            "feline",
            "car",
            "automobile",
            "sun",
            "##s",
        ];
        let rows = vec![
            vec![0.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.9, 0.1, 0.0, 0.0],
            vec![0.8, 0.0, 0.2, 0.0],
            vec![0.0, 1.0, 0.0, 0.0],
            vec![0.1, 0.9, 0.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 1.0],
        ];
        write_model(dir, &vocab, &rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed(p: &Model2VecProvider, texts: &[&str]) -> Vec<Vec<f32>> {
        let mut out = vec![f32::NAN; texts.len() * p.dimension()];
        p.embed(texts, &mut out).unwrap();
        out.chunks_exact(p.dimension())
            .map(|r| r.to_vec())
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn synthetic_model_means_and_normalises() {
        let dir = tempfile::tempdir().unwrap();
        synthetic::tiny(dir.path());
        let p = Model2VecProvider::load(dir.path()).unwrap();
        assert_eq!(p.dimension(), 4);
        assert!(p.name().starts_with("model2vec:"), "{}", p.name());
        let v = embed(&p, &["Cat", "cat car", "cats", "kitten", "🦀", ""]);
        // One token: its row, normalised.
        assert_eq!(v[0], vec![1.0, 0.0, 0.0, 0.0]);
        // Mean of cat and car, normalised: (0.5, 0.5) / |.|.
        let h = 0.5f32.sqrt();
        for (a, b) in v[1].iter().zip([h, h, 0.0, 0.0]) {
            assert!((a - b).abs() < 1e-6, "{:?}", v[1]);
        }
        // WordPiece splits "cats" into cat + ##s.
        for (a, b) in v[2].iter().zip([h, 0.0, 0.0, h]) {
            assert!((a - b).abs() < 1e-6, "{:?}", v[2]);
        }
        // Unit norm everywhere, including the unknown-only and empty texts (fallback, never zero).
        for (i, r) in v.iter().enumerate() {
            assert!((dot(r, r) - 1.0).abs() < 1e-5, "row {i}: {r:?}");
        }
        assert!(dot(&v[0], &v[3]) > 0.9);
        assert_eq!(v[4].iter().filter(|x| **x != 0.0).count(), 1);
    }

    #[test]
    fn same_vectors_whatever_the_batch_or_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        synthetic::tiny(dir.path());
        let p = Model2VecProvider::load(dir.path()).unwrap();
        let texts: Vec<String> = (0..300)
            .map(|i| ["cat", "car sun", "kitten cats", "x"][i % 4].repeat(1 + i % 3))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let all = embed(&p, &refs);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let single = pool.install(|| embed(&p, &refs));
        assert_eq!(all, single);
        let mut row = 0;
        for chunk in refs.chunks(7) {
            for v in embed(&p, chunk) {
                assert_eq!(v, all[row]);
                row += 1;
            }
        }
    }

    #[test]
    fn fingerprint_changes_with_the_model() {
        let a = tempfile::tempdir().unwrap();
        synthetic::tiny(a.path());
        let b = tempfile::tempdir().unwrap();
        synthetic::tiny(b.path());
        let pa = Model2VecProvider::load(a.path()).unwrap();
        let pb = Model2VecProvider::load(b.path()).unwrap();
        // Same files, same fingerprint (the directory name differs, so compare the hash part only).
        assert_eq!(pa.name().rsplit(':').next(), pb.name().rsplit(':').next());
        let vocab = ["[PAD]", "[UNK]", "cat"];
        synthetic::write_model(
            b.path(),
            &vocab,
            &[vec![0.0, 0.0], vec![0.0, 0.0], vec![1.0, 0.5]],
        );
        let pb = Model2VecProvider::load(b.path()).unwrap();
        assert_ne!(pa.name().rsplit(':').next(), pb.name().rsplit(':').next());
        assert_eq!(pb.dimension(), 2);
    }

    #[test]
    fn bad_directories_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = Model2VecProvider::load(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        let e = Model2VecProvider::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        synthetic::tiny(dir.path());
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        let e = Model2VecProvider::load(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("not a usable model2vec model"),
            "{e}"
        );
    }

    #[test]
    fn rejects_wrong_buffer() {
        let dir = tempfile::tempdir().unwrap();
        synthetic::tiny(dir.path());
        let p = Model2VecProvider::load(dir.path()).unwrap();
        let mut out = vec![0.0; 3];
        assert!(p.embed(&["cat"], &mut out).is_err());
    }
}
