//! Embedding quality that can fail: how a provider ranks sentence pairs that mean the same (paraphrases) against
//! pairs that have nothing in common, on the fixture `fixtures/embedding-pairs.tsv`.
//!
//! [`pair_scores`] gives the cosine of every pair; [`PairScores::margin`] is the lowest paraphrase score minus the
//! highest unrelated one (positive: every paraphrase ranks above every unrelated pair) and [`PairScores::auc`] the
//! share of (paraphrase, unrelated) combinations ranked the right way round (0.5 is chance). The tests require a
//! margin of [`MODEL2VEC_MARGIN`] from model2vec (potion-base-8M) and an AUC of [`HASHING_MIN_AUC`] from feature
//! hashing, which only sees shared words and character n-grams.

use super::stage::check_vectors;
use super::EmbeddingProvider;
use crate::error::{Error, Result};

/// The fixture, compiled in.
pub const PAIRS_TSV: &str = include_str!("../../fixtures/embedding-pairs.tsv");

/// Least margin model2vec must keep between the worst paraphrase and the best unrelated pair.
pub const MODEL2VEC_MARGIN: f32 = 0.2;
/// Least AUC feature hashing must reach (chance is 0.5).
pub const HASHING_MIN_AUC: f64 = 0.75;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    Paraphrase,
    Unrelated,
}

#[derive(Debug, Clone)]
pub struct Pair {
    pub kind: PairKind,
    pub a: String,
    pub b: String,
}

/// Parses `kind<TAB>a<TAB>b` lines (`para` or `unrel`); `#` lines and blank lines are skipped.
pub fn parse_pairs(tsv: &str) -> Result<Vec<Pair>> {
    let mut out = vec![];
    for (n, line) in tsv.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let kind = match f.first() {
            Some(&"para") => PairKind::Paraphrase,
            Some(&"unrel") => PairKind::Unrelated,
            _ => {
                return Err(Error::usage(format!(
                    "pairs line {}: expected para|unrel<TAB>a<TAB>b",
                    n + 1
                )))
            }
        };
        if f.len() != 3 {
            return Err(Error::usage(format!(
                "pairs line {}: expected 3 tab-separated fields, found {}",
                n + 1,
                f.len()
            )));
        }
        out.push(Pair {
            kind,
            a: f[1].to_string(),
            b: f[2].to_string(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct PairScores {
    pub paraphrase: Vec<f32>,
    pub unrelated: Vec<f32>,
}

impl PairScores {
    /// Lowest paraphrase cosine minus highest unrelated cosine.
    pub fn margin(&self) -> f32 {
        let lo = self
            .paraphrase
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let hi = self
            .unrelated
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        lo - hi
    }

    /// Share of (paraphrase, unrelated) combinations where the paraphrase scores higher (ties count half).
    pub fn auc(&self) -> f64 {
        let mut wins = 0.0;
        for &p in &self.paraphrase {
            for &u in &self.unrelated {
                wins += if p > u {
                    1.0
                } else if p == u {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (self.paraphrase.len() * self.unrelated.len()).max(1) as f64
    }
}

/// Embeds both sides of every pair with `provider` (checking every vector: finite, non-zero, unit norm) and
/// scores each pair by cosine similarity.
pub fn pair_scores(provider: &dyn EmbeddingProvider, pairs: &[Pair]) -> Result<PairScores> {
    let dim = provider.dimension();
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    let mut out = vec![0.0f32; texts.len() * dim];
    provider.embed(&texts, &mut out)?;
    check_vectors(&provider.name(), dim, &texts, &out)?;
    let mut s = PairScores::default();
    for (i, p) in pairs.iter().enumerate() {
        let a = &out[2 * i * dim..(2 * i + 1) * dim];
        let b = &out[(2 * i + 1) * dim..(2 * i + 2) * dim];
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        match p.kind {
            PairKind::Paraphrase => s.paraphrase.push(cos),
            PairKind::Unrelated => s.unrelated.push(cos),
        }
    }
    Ok(s)
}

/// The potion-base-8M directory for tests: `ENGRAM_MODEL2VEC_DIR`, else the cache scripts/models.sh fills. None
/// (the test is skipped, with a message) when absent, unless `ENGRAM_REQUIRE_MODELS=1` (scripts/test.sh sets it
/// after fetching the model), which makes a missing model a failure.
#[cfg(test)]
pub(crate) fn test_model_dir() -> Option<std::path::PathBuf> {
    let required = std::env::var("ENGRAM_REQUIRE_MODELS").as_deref() == Ok("1");
    let Some(dir) = std::env::var_os("ENGRAM_MODEL2VEC_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("ENGRAM_MIGRATE_CACHE")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| std::path::PathBuf::from(h).join(".cache/engram-migrate"))
                })?;
            Some(cache.join("models/potion-base-8M"))
        })
    else {
        // Never a silent skip: required, it fails; otherwise it says why it did not run.
        assert!(!required, "no model directory: set ENGRAM_MODEL2VEC_DIR");
        eprintln!("skipped: no model directory (ENGRAM_MODEL2VEC_DIR, ENGRAM_MIGRATE_CACHE and HOME unset)");
        return None;
    };
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if required {
        panic!(
            "model directory {} missing; run scripts/models.sh potion-base-8M",
            dir.display()
        );
    }
    eprintln!(
        "skipped: no model2vec model at {} (scripts/models.sh fetches it)",
        dir.display()
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{HashingProvider, Model2VecProvider};

    fn pairs() -> Vec<Pair> {
        parse_pairs(PAIRS_TSV).unwrap()
    }

    #[test]
    fn fixture_parses_and_is_balanced() {
        let p = pairs();
        let para = p.iter().filter(|p| p.kind == PairKind::Paraphrase).count();
        let unrel = p.len() - para;
        assert!(para >= 10 && unrel >= 10, "{para} {unrel}");
        assert!(parse_pairs("para\tonly two").is_err());
        assert!(parse_pairs("same\ta\tb").is_err());
    }

    #[test]
    fn scores_are_what_they_say() {
        let s = PairScores {
            paraphrase: vec![0.9, 0.6],
            unrelated: vec![0.1, 0.7],
        };
        assert!((s.margin() - (0.6 - 0.7)).abs() < 1e-6);
        assert_eq!(s.auc(), 0.75);
    }

    #[test]
    fn hashing_ranks_above_chance() {
        let s = pair_scores(&HashingProvider::new(), &pairs()).unwrap();
        eprintln!(
            "hashing: auc {:.3}, margin {:.3}, para {:?}, unrel {:?}",
            s.auc(),
            s.margin(),
            s.paraphrase,
            s.unrelated
        );
        assert!(s.auc() >= HASHING_MIN_AUC, "auc {}", s.auc());
    }

    #[test]
    fn model2vec_ranks_every_paraphrase_above_unrelated_pairs() {
        let Some(dir) = test_model_dir() else { return };
        let p = Model2VecProvider::load(&dir).unwrap();
        assert_eq!(p.dimension(), 256);
        let s = pair_scores(&p, &pairs()).unwrap();
        eprintln!(
            "model2vec: auc {:.3}, margin {:.3}, para {:?}, unrel {:?}",
            s.auc(),
            s.margin(),
            s.paraphrase,
            s.unrelated
        );
        assert!(
            s.margin() >= MODEL2VEC_MARGIN,
            "margin {} (worst paraphrase minus best unrelated)",
            s.margin()
        );
        assert_eq!(s.auc(), 1.0);
    }

    #[test]
    fn a_provider_that_ignores_meaning_fails() {
        // The test must be able to fail: a provider giving every text a vector from its length alone.
        struct ByLength;
        impl EmbeddingProvider for ByLength {
            fn name(&self) -> String {
                "by-length".into()
            }
            fn dimension(&self) -> usize {
                8
            }
            fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
                for (t, row) in texts.iter().zip(out.chunks_exact_mut(8)) {
                    row.fill(0.0);
                    row[t.len() % 8] = 1.0;
                }
                Ok(())
            }
        }
        let s = pair_scores(&ByLength, &pairs()).unwrap();
        assert!(s.margin() < MODEL2VEC_MARGIN);
        assert!(s.auc() < HASHING_MIN_AUC, "auc {}", s.auc());
    }
}
