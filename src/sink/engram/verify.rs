//! Read-back verification: what the server kept, against the bundle, space by space. Engram answers 201 for
//! memories it then drops, so only this tells a complete load from a lossy one.
//!
//! Per space: the server's count (system health), the ids listed back with their embeddings, and every bundle
//! memory not among them with its likely reason: refused during the load (status and message), near-duplicate
//! of a memory the server kept (cosine >= 0.95, which one), or evicted over the per-space limit.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::http::HttpApi;
use super::{cosine, memories_of, EngramTarget, Rejection, DUPLICATE_COSINE};
use crate::bundle::BundleManifest;
use crate::error::Result;

/// Why a bundle memory is not on the server.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The server refused the write (4xx / invalid request).
    Rejected { status: String, message: String },
    /// Engram's duplicate filter: the server holds `of`, whose embedding has this cosine with this memory's.
    NearDuplicate { of: String, cosine: f32 },
    /// The space holds the server's limit of memories; the least active were evicted.
    OverSpaceLimit { limit: u64 },
    /// None of the above explains it.
    Unknown,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Rejected { status, message } => write!(f, "rejected: {status}: {message}"),
            Reason::NearDuplicate { of, cosine } => {
                write!(
                    f,
                    "near-duplicate of {of} (cosine {cosine:.4}), dropped by the server's filter"
                )
            }
            Reason::OverSpaceLimit { limit } => {
                write!(
                    f,
                    "evicted: the space is over the server's limit of {limit} memories"
                )
            }
            Reason::Unknown => write!(f, "not on the server, reason unknown"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NotKept {
    pub space: String,
    pub id: String,
    #[serde(flatten)]
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SpaceCheck {
    pub space: String,
    pub bundle: u64,
    /// `spaces[].memories` of the server's system health, when it lists the space.
    pub server_count: Option<u64>,
    /// Memories listed back.
    pub listed: u64,
    /// Bundle memories listed back.
    pub kept: u64,
    pub not_kept: u64,
    /// Listed back with an embedding that differs from the bundle's.
    pub embedding_differs: u64,
    /// Listed back but not in the bundle (there before the load).
    pub other_on_server: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    pub spaces: Vec<SpaceCheck>,
    pub not_kept: Vec<NotKept>,
    pub embedding_differs: Vec<String>,
    pub bundle_total: u64,
    pub kept_total: u64,
    /// Counts by reason: rejected, near_duplicate, over_space_limit, unknown.
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// What no Engram API stores: kept in the bundle only.
    pub bundle_only: BundleOnly,
    /// The bundle memories the server holds (the target checks' `target_memories`); in the report as counts.
    #[serde(skip)]
    pub held: Vec<crate::sink::HeldMemory>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BundleOnly {
    pub edges: u64,
    pub note: String,
}

impl Verification {
    pub fn complete(&self) -> bool {
        self.not_kept.is_empty() && self.embedding_differs.is_empty()
    }

    /// The report for people: a table per space, the memories not kept (first `max_listed`), what stays in the bundle.
    pub fn render(&self, max_listed: usize) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "space", "bundle", "server", "kept", "not kept", "emb diff"
        ));
        for c in &self.spaces {
            s.push_str(&format!(
                "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                c.space,
                c.bundle,
                c.server_count
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                c.kept,
                c.not_kept,
                c.embedding_differs
            ));
        }
        s.push_str(&format!(
            "kept {} of {} memories",
            self.kept_total, self.bundle_total
        ));
        if !self.reasons.is_empty() {
            let parts: Vec<String> = self
                .reasons
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            s.push_str(&format!("; not kept: {}", parts.join(", ")));
        }
        s.push('\n');
        for n in self.not_kept.iter().take(max_listed) {
            s.push_str(&format!("  {}/{}: {}\n", n.space, n.id, n.reason));
        }
        if self.not_kept.len() > max_listed {
            s.push_str(&format!(
                "  ... and {} more (all in the JSON report)\n",
                self.not_kept.len() - max_listed
            ));
        }
        for id in self.embedding_differs.iter().take(max_listed) {
            s.push_str(&format!("  {id}: listed back with a different embedding\n"));
        }
        s.push_str(&self.bundle_only.note);
        s.push('\n');
        s
    }
}

pub fn reason_key(r: &Reason) -> &'static str {
    match r {
        Reason::Rejected { .. } => "rejected",
        Reason::NearDuplicate { .. } => "near_duplicate",
        Reason::OverSpaceLimit { .. } => "over_space_limit",
        Reason::Unknown => "unknown",
    }
}

/// Explains one missing memory. `listed` is what the server kept in its space; `full` says whether the space
/// reached the limit.
pub fn explain(
    embedding: &[f32],
    rejected: Option<&Rejection>,
    listed: &[(String, Vec<f32>)],
    space_full: bool,
    limit: u64,
) -> Reason {
    if let Some(r) = rejected {
        return Reason::Rejected {
            status: r.status.clone(),
            message: r.message.clone(),
        };
    }
    let best = listed
        .iter()
        .map(|(id, e)| (id, cosine(embedding, e)))
        .fold(None::<(&String, f32)>, |acc, (id, c)| match acc {
            Some((_, b)) if b >= c => acc,
            _ => Some((id, c)),
        });
    if let Some((id, c)) = best {
        if c >= DUPLICATE_COSINE {
            return Reason::NearDuplicate {
                of: id.clone(),
                cosine: c,
            };
        }
    }
    if space_full {
        return Reason::OverSpaceLimit { limit };
    }
    Reason::Unknown
}

/// Embeddings the server gives back go through JSON floats: equal within this.
const EMBEDDING_TOLERANCE: f32 = 1e-5;

pub async fn run(
    http: &HttpApi,
    manifest: &BundleManifest,
    bundle: &Path,
    rejected: &[Rejection],
    target: &EngramTarget,
) -> Result<Verification> {
    let mut v = Verification::default();
    let rejected: HashMap<(&str, &str), &Rejection> = rejected
        .iter()
        .map(|r| ((r.space.as_str(), r.id.as_str()), r))
        .collect();
    let counts = http.counts().await?;
    let removed = crate::bundle::Removed::load(bundle, manifest)?;
    for s in &manifest.spaces {
        v.bundle_only.edges += s.edges.rows;
        if s.memories.rows == 0 {
            continue;
        }
        let server_count = counts.get(&s.space).copied();
        let (listed, tier_total) = http.list(&s.space).await?;
        let listed: Vec<(String, Vec<f32>)> = listed
            .into_iter()
            .map(|l| (l.id, l.embedding.unwrap_or_default()))
            .collect();
        let index: HashMap<&str, &Vec<f32>> =
            listed.iter().map(|(id, e)| (id.as_str(), e)).collect();
        let server_count = server_count.or(tier_total);
        let held = server_count
            .unwrap_or(listed.len() as u64)
            .max(listed.len() as u64);
        let space_full = held >= target.space_limit;

        let mut check = SpaceCheck {
            space: s.space.clone(),
            server_count,
            listed: listed.len() as u64,
            ..Default::default()
        };
        let mut in_bundle: HashSet<String> = HashSet::new();
        let mut missing: Vec<(String, Vec<f32>)> = vec![];
        for part in manifest.memory_parts_of(bundle, &s.space) {
            let path = &part.path;
            for b in crate::bundle::read_live(&part, &removed, 8192)? {
                let b = b?;
                // Only ids and embeddings are compared: Engram's listing gives timestamps of its own.
                for m in memories_of(&b, &path)? {
                    check.bundle += 1;
                    match index.get(m.id.as_str()) {
                        Some(e) => {
                            check.kept += 1;
                            let same = e.len() == m.embedding.len()
                                && e.iter()
                                    .zip(&m.embedding)
                                    .all(|(a, b)| (a - b).abs() <= EMBEDDING_TOLERANCE);
                            if !same {
                                check.embedding_differs += 1;
                                v.embedding_differs.push(format!("{}/{}", s.space, m.id));
                            }
                            v.held.push(crate::sink::HeldMemory {
                                space: s.space.clone(),
                                id: m.id.clone(),
                                embedding_matches: Some(same),
                                // Engram's read-back API returns the content, but reshaped (its own fields
                                // added); the bundle's validation compares content with the source.
                                content_matches: None,
                            });
                        }
                        None => missing.push((m.id.clone(), m.embedding)),
                    }
                    in_bundle.insert(m.id);
                }
            }
        }
        check.other_on_server = listed
            .iter()
            .filter(|(id, _)| !in_bundle.contains(id))
            .count() as u64;
        for (id, emb) in missing {
            let reason = explain(
                &emb,
                rejected.get(&(s.space.as_str(), id.as_str())).copied(),
                &listed,
                space_full,
                target.space_limit,
            );
            *v.reasons
                .entry(reason_key(&reason).to_string())
                .or_default() += 1;
            v.not_kept.push(NotKept {
                space: s.space.clone(),
                id,
                reason,
            });
            check.not_kept += 1;
        }
        v.bundle_total += check.bundle;
        v.kept_total += check.kept;
        v.spaces.push(check);
    }
    v.bundle_only.note = format!(
        "Kept in the bundle only (Engram has no API for them): {} edges, decay rates, activation and provenance; \
         created_at is replaced by the server's clock over gRPC. Bundle: {}",
        v.bundle_only.edges,
        bundle.display()
    );
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rej() -> Rejection {
        Rejection {
            space: "s".into(),
            id: "a".into(),
            status: "HTTP 400 INVALID_MEMORY_INPUT".into(),
            message: "too big".into(),
        }
    }

    #[test]
    fn reasons_in_order_of_evidence() {
        let listed = vec![
            ("x".to_string(), vec![1.0, 0.0, 0.0]),
            ("y".to_string(), vec![0.0, 1.0, 0.0]),
        ];
        // A refusal wins over everything.
        assert!(matches!(
            explain(&[1.0, 0.0, 0.0], Some(&rej()), &listed, true, 10),
            Reason::Rejected { .. }
        ));
        // The closest kept memory is named.
        match explain(&[0.1, 1.0, 0.0], None, &listed, true, 10) {
            Reason::NearDuplicate { of, cosine } => {
                assert_eq!(of, "y");
                assert!(cosine >= DUPLICATE_COSINE);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            explain(&[0.0, 0.0, 1.0], None, &listed, true, 10),
            Reason::OverSpaceLimit { limit: 10 }
        );
        assert_eq!(
            explain(&[0.0, 0.0, 1.0], None, &listed, false, 10),
            Reason::Unknown
        );
        // Just under the threshold is not a duplicate.
        assert_eq!(
            explain(&[1.0, 0.4, 0.0], None, &listed, false, 10),
            Reason::Unknown
        );
    }
}
