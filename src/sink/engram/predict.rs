//! What Engram will silently lose of a bundle, predicted before anything is sent: memories its near-duplicate
//! filter skips (an embedding with cosine >= 0.95 to one the space already holds, identical ones included),
//! memories beyond the per-space limit, and, over HTTP, contents over 100 KB. The server answers 201 for the
//! first two, so only a prediction (or a read-back afterwards) shows them.
//!
//! The near-duplicate search replays the server's rule in bundle order, one space at a time: a memory is lost
//! if a memory kept before it is within the threshold. Candidates come from random-hyperplane locality-sensitive
//! hashing (12 bands of 6 sign bits: a pair at cosine 0.95 shares some band with probability > 0.9999) and each
//! candidate is checked with the exact cosine, so the count never includes a pair below the threshold and scales
//! to millions of memories (each memory meets only its bucket mates).

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use serde::Serialize;

use super::{cosine, Protocol, DUPLICATE_COSINE, MAX_CONTENT_BYTES};
use crate::bundle::BundleManifest;
use crate::error::{Error, Result};
use crate::schema::memory;

const BANDS: usize = 12;
const BITS_PER_BAND: usize = 6;
/// Up to this many kept memories a space is searched pair by pair: exact, and cheap at that size.
const EXHAUSTIVE_UP_TO: usize = 5000;

/// The prediction for one space.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct SpaceLoss {
    pub space: String,
    pub memories: u64,
    /// Skipped by the duplicate filter: an earlier memory of the space has cosine >= 0.95 with it.
    pub near_duplicates: u64,
    /// Of those, exactly the same embedding as an earlier one.
    pub identical: u64,
    /// Beyond the server's per-space limit (after the duplicates are gone).
    pub over_limit: u64,
    /// Content over 100 KB: refused over HTTP (gRPC kept it).
    pub too_large_for_http: u64,
    /// Up to 5 (memory, the earlier memory it duplicates, cosine).
    pub examples: Vec<(String, String, f32)>,
}

impl SpaceLoss {
    /// Memories this load would lose over `protocol`.
    pub fn lost(&self, protocol: Protocol) -> u64 {
        self.near_duplicates
            + self.over_limit
            + if protocol == Protocol::Http {
                self.too_large_for_http
            } else {
                0
            }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Prediction {
    pub spaces: Vec<SpaceLoss>,
    pub memories: u64,
}

impl Prediction {
    pub fn lost(&self, protocol: Protocol) -> u64 {
        self.spaces.iter().map(|s| s.lost(protocol)).sum()
    }

    pub fn fraction(&self, protocol: Protocol) -> f64 {
        if self.memories == 0 {
            0.0
        } else {
            self.lost(protocol) as f64 / self.memories as f64
        }
    }

    /// A table for people: per space, what would be lost and why, with examples.
    pub fn render(&self, protocol: Protocol) -> String {
        let mut s = format!(
            "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "space", "memories", "near-dup", "identical", "over lim", "too large"
        );
        for sp in self
            .spaces
            .iter()
            .filter(|sp| sp.lost(protocol) > 0 || sp.too_large_for_http > 0)
        {
            s.push_str(&format!(
                "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                sp.space,
                sp.memories,
                sp.near_duplicates,
                sp.identical,
                sp.over_limit,
                sp.too_large_for_http
            ));
            for (id, of, c) in &sp.examples {
                s.push_str(&format!("    {id} ~ {of} (cosine {c:.4})\n"));
            }
        }
        s.push_str(&format!(
            "predicted loss: {} of {} memories ({:.2}%)\n",
            self.lost(protocol),
            self.memories,
            100.0 * self.fraction(protocol)
        ));
        s
    }
}

/// Random hyperplanes for the sign hashes: Gaussian normals (Box-Muller over splitmix64), so every direction is
/// equally likely and two vectors' signs differ with probability angle/pi; a fixed seed keeps it reproducible.
fn hyperplanes(dim: usize) -> Vec<f32> {
    let mut x = 0x5eed_e4a1_u64;
    let mut uniform = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64 // in (0, 1)
    };
    (0..BANDS * BITS_PER_BAND * dim)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// The band keys of a vector: for each band, its 6 sign bits (with the band number, so bands never collide).
fn band_keys(v: &[f32], planes: &[f32]) -> [u32; BANDS] {
    let dim = v.len();
    let mut keys = [0u32; BANDS];
    for (b, key) in keys.iter_mut().enumerate() {
        let mut bits = 0u32;
        for k in 0..BITS_PER_BAND {
            let p = &planes[(b * BITS_PER_BAND + k) * dim..(b * BITS_PER_BAND + k + 1) * dim];
            let dot: f32 = p.iter().zip(v).map(|(a, b)| a * b).sum();
            bits = (bits << 1) | (dot >= 0.0) as u32;
        }
        *key = ((b as u32) << BITS_PER_BAND) | bits;
    }
    keys
}

/// Engram's duplicate filter replayed over one space, memory by memory, in the order they are sent.
struct Replay {
    planes: Vec<f32>,
    /// Kept memories: id, vector.
    kept: Vec<(String, Vec<f32>)>,
    /// Band key -> indexes into `kept`.
    buckets: HashMap<u32, Vec<usize>>,
    /// Up to this many kept memories the search is pair by pair (exact); beyond, through the bands.
    exhaustive_up_to: usize,
    /// Memories kept, stored or not: beyond `capacity` (the space's limit, all Engram holds in memory to compare
    /// with) a kept memory is counted but not stored, so the replay's memory is bounded.
    kept_count: u64,
    capacity: usize,
}

impl Replay {
    fn new(dim: usize, exhaustive_up_to: usize, capacity: usize) -> Replay {
        Replay {
            planes: hyperplanes(dim),
            kept: vec![],
            buckets: HashMap::new(),
            exhaustive_up_to,
            kept_count: 0,
            capacity,
        }
    }

    /// Offers a memory: Some((index of the kept memory it duplicates, cosine)) if the server would skip it,
    /// else None (it is kept).
    fn offer(&mut self, id: &str, v: &[f32]) -> Option<(usize, f32)> {
        let keys = band_keys(v, &self.planes);
        let dup = if self.kept.len() <= self.exhaustive_up_to {
            self.kept
                .iter()
                .enumerate()
                .map(|(j, k)| (j, cosine(v, &k.1)))
                .find(|(_, c)| *c >= DUPLICATE_COSINE)
        } else {
            keys.iter()
                .flat_map(|key| self.buckets.get(key).map(Vec::as_slice).unwrap_or(&[]))
                .map(|&j| (j, cosine(v, &self.kept[j].1)))
                .find(|(_, c)| *c >= DUPLICATE_COSINE)
        };
        if dup.is_none() {
            self.kept_count += 1;
            if self.kept.len() >= self.capacity {
                return None;
            }
            for key in keys {
                self.buckets.entry(key).or_default().push(self.kept.len());
            }
            self.kept.push((id.to_string(), v.to_vec()));
        }
        dup
    }
}

/// Engram's duplicate filter, limits and HTTP size limit replayed over memories offered one by one, space by
/// space, in the order they would be sent: from a finished bundle (`predict`) or from staged memories (`plan`).
pub struct Predictor {
    space_limit: u64,
    spaces: Vec<(SpaceLoss, Option<Replay>)>,
    index: HashMap<String, usize>,
}

impl Predictor {
    pub fn new(space_limit: u64) -> Predictor {
        Predictor {
            space_limit,
            spaces: vec![],
            index: HashMap::new(),
        }
    }

    /// Offers one memory: its space, id, content size and embedding (None: the server computes one, which this
    /// cannot predict).
    pub fn offer(
        &mut self,
        space: &str,
        id: &str,
        content_bytes: usize,
        embedding: Option<&[f32]>,
    ) {
        let i = match self.index.get(space) {
            Some(&i) => i,
            None => {
                self.index.insert(space.to_string(), self.spaces.len());
                self.spaces.push((
                    SpaceLoss {
                        space: space.to_string(),
                        ..Default::default()
                    },
                    None,
                ));
                self.spaces.len() - 1
            }
        };
        let capacity = usize::try_from(self.space_limit).unwrap_or(usize::MAX);
        let (loss, replay) = &mut self.spaces[i];
        loss.memories += 1;
        if content_bytes > MAX_CONTENT_BYTES {
            loss.too_large_for_http += 1;
        }
        let Some(v) = embedding else { return };
        let r = replay.get_or_insert_with(|| Replay::new(v.len(), EXHAUSTIVE_UP_TO, capacity));
        if let Some((j, c)) = r.offer(id, v) {
            loss.near_duplicates += 1;
            if r.kept[j].1.as_slice() == v {
                loss.identical += 1;
            }
            if loss.examples.len() < 5 {
                loss.examples.push((id.to_string(), r.kept[j].0.clone(), c));
            }
        }
    }

    pub fn finish(self) -> Prediction {
        let mut out = Prediction::default();
        for (mut loss, replay) in self.spaces {
            let kept = replay.map_or(0, |r| r.kept_count);
            loss.over_limit = kept.saturating_sub(self.space_limit);
            out.memories += loss.memories;
            out.spaces.push(loss);
        }
        out
    }
}

/// Replays Engram's duplicate filter and limits over every space of the bundle.
pub fn predict(bundle: &Path, manifest: &BundleManifest, space_limit: u64) -> Result<Prediction> {
    let mut p = Predictor::new(space_limit);
    let removed = crate::bundle::Removed::load(bundle, manifest)?;
    for s in &manifest.spaces {
        for part in manifest.memory_parts_of(bundle, &s.space) {
            let path = &part.path;
            for b in crate::bundle::read_live(&part, &removed, 8192)? {
                let b = b?;
                offer_batch(&mut p, Some(&s.space), &b)
                    .map_err(|m| Error::source_err(path.display().to_string(), m))?;
            }
        }
    }
    Ok(p.finish())
}

/// Offers every memory of a batch of the memory schema; `space` where the batch is of one space (a bundle's
/// part), else each row's own.
pub fn offer_batch(
    p: &mut Predictor,
    space: Option<&str>,
    b: &arrow::array::RecordBatch,
) -> std::result::Result<(), String> {
    let string = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>().cloned())
    };
    let (Some(ids), Some(contents), Some(embs)) = (
        string(memory::ID),
        string(memory::CONTENT),
        b.column_by_name(memory::EMBEDDING)
            .and_then(|c| c.as_fixed_size_list_opt().cloned()),
    ) else {
        return Err("not memories of the bundle's schema (id, content, embedding)".into());
    };
    let spaces = string(memory::SPACE);
    let values = embs.values().as_primitive::<Float32Type>().clone();
    let dim = embs.value_length() as usize;
    for i in 0..b.num_rows() {
        let sp = match (space, &spaces) {
            (Some(s), _) => s,
            (None, Some(col)) => col.value(i),
            (None, None) => return Err("memories without a space column".into()),
        };
        let v = (!embs.is_null(i)).then(|| &values.values()[i * dim..(i + 1) * dim]);
        p.offer(sp, ids.value(i), contents.value(i).len(), v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    /// The LSH search finds what a brute-force replay of the rule finds, on vectors near and just beyond the
    /// threshold (no pair below 0.95 is counted, and misses are rare enough not to show in 2,000 tries).
    #[test]
    fn band_search_agrees_with_brute_force() {
        let dim = 64;
        let planes = hyperplanes(dim);
        let mut vs: Vec<Vec<f32>> = (0..200).map(|i| unit(i + 1, dim)).collect();
        // Perturbed copies at a range of similarities around the threshold.
        for i in 0..1800u64 {
            let base = &vs[(i % 200) as usize];
            let noise = unit(10_000 + i, dim);
            let eps = 0.1 + (i % 30) as f32 * 0.01;
            let mut v: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + eps * b).collect();
            let n: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= n);
            vs.push(v);
        }
        let (mut lsh, mut brute) = (0, 0);
        let mut kept_l: Vec<usize> = vec![];
        let mut kept_b: Vec<usize> = vec![];
        let mut buckets: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, v) in vs.iter().enumerate() {
            if kept_b
                .iter()
                .any(|&j| cosine(v, &vs[j]) >= DUPLICATE_COSINE)
            {
                brute += 1;
            } else {
                kept_b.push(i);
            }
            let keys = band_keys(v, &planes);
            let hit = keys.iter().any(|k| {
                buckets.get(k).is_some_and(|js| {
                    js.iter()
                        .any(|&j| cosine(v, &vs[kept_l[j]]) >= DUPLICATE_COSINE)
                })
            });
            if hit {
                lsh += 1;
            } else {
                for k in keys {
                    buckets.entry(k).or_default().push(kept_l.len());
                }
                kept_l.push(i);
            }
        }
        assert!(brute > 300, "the test set has near-duplicates: {brute}");
        assert!(
            (lsh as i64 - brute as i64).abs() <= brute / 200,
            "lsh {lsh}, brute force {brute}"
        );
    }

    /// On the vectors this tool makes (feature hashing of short, repetitive texts, as in a real table), the
    /// band search finds what the exhaustive one finds, within 0.5%.
    #[test]
    fn band_search_agrees_on_hashing_embeddings() {
        use crate::embed::{EmbeddingProvider, HashingProvider};
        // The shape of the table: a text column that repeats 97 values, plus rows that differ in one word.
        let texts: Vec<String> = (0..1000)
            .map(|i| match i % 4 {
                0 => format!("sensor: s{} | site: north", i % 97),
                1 => format!("sensor: s{} | site: north | unit {}", i % 97, i % 5),
                _ => format!("sensor: s{} | reading {}", i % 97, i),
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut flat = vec![0.0; refs.len() * 768];
        HashingProvider::new().embed(&refs, &mut flat).unwrap();
        let count = |exhaustive_up_to| {
            let mut r = Replay::new(768, exhaustive_up_to, usize::MAX);
            flat.chunks_exact(768)
                .enumerate()
                .filter(|(i, v)| r.offer(&i.to_string(), v).is_some())
                .count()
        };
        let (exact, banded) = (count(usize::MAX), count(0));
        assert!(exact > 100, "the texts repeat: {exact}");
        assert!(
            exact.abs_diff(banded) * 200 <= exact,
            "exhaustive {exact}, bands {banded}"
        );
    }
}
