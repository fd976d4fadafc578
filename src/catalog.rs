//! What a source holds, as the tool describes it: tables, columns with their type mapping, keys, foreign keys,
//! partitions. A leaf module: sources produce these, the snapshot format records them, the mappings read them.

use serde::{Deserialize, Serialize};

/// One column as the source declares it and as it is staged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// The type as the source declares it (e.g. `VARCHAR(80)`, `DATETIME`, empty when undeclared).
    pub source_type: String,
    /// The Arrow type it is staged as, in Arrow's display form.
    pub arrow_type: String,
    /// The source's own name for the rule used (e.g. `timestamp`, `text`), so a later read stages it the same way.
    pub mapped_as: String,
    /// `exact`, `widened: ...` or `text fallback: ...`; see the type mapping docs of each source.
    pub fidelity: String,
    /// True for a column the tool added (a SQLite rowid for a table without primary key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub parent_table: String,
    /// Referenced columns; the parent's primary key when the source leaves them implicit.
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// Key columns (may name the synthetic rowid column). Never empty.
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
    /// Row count known before reading (exact for SQLite), for `plan` and progress.
    pub row_estimate: Option<u64>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Records of a source table that are not rows of its snapshot, or not in their own form, by reason: a snapshot
/// never loses or changes a record in silence. `kind` is `skipped` (the tool cannot stage it; validation's
/// `skipped_items` fails unless `--allow-skipped`), `expired` (left out by the expiry policy, `--expired drop`;
/// reported, not a failure) or `raw` (staged as opaque bytes it cannot decode, e.g. Redis module values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotStaged {
    pub kind: String,
    pub count: u64,
    pub what: String,
    /// The first few of them, by key, for people.
    pub first: Vec<String>,
}

/// Tables in dependency order (parents before children) plus the foreign-key cycles found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: Vec<TableInfo>,
    /// Each cycle as the list of tables on it; their edges are still made.
    pub cycles: Vec<Vec<String>>,
    /// Objects that exist in the source but are not read, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Catalog {
    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// One independent slice of a table (a key range or a page range), read and committed on its own, so an
/// interrupted snapshot resumes with the slices not yet done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Partition {
    /// SQL condition selecting the slice (`TRUE` for the whole table).
    pub filter: String,
    pub row_estimate: u64,
}

/// What a source looks like at one moment, as named signals: row or key counts, a schema digest, change
/// counters, a file's content hash. A snapshot records its source's fingerprint; a later command compares it with
/// the source's fingerprint then, to know whether the snapshot still stands for the source (a resume must not mix
/// two states; a complete snapshot of a source that changed is stale). Signals are named so a change can be said
/// in words, and tied to a table where they can be, so a change in a table that is not migrated is not a change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    /// Signals about the source as a whole (a file's content, a server's write counter).
    pub whole: std::collections::BTreeMap<String, String>,
    /// Signals per table, by table name (as the catalog names it).
    pub tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl Fingerprint {
    pub fn whole(mut self, signal: &str, value: impl ToString) -> Self {
        self.whole.insert(signal.to_string(), value.to_string());
        self
    }

    pub fn table(mut self, table: &str, signal: &str, value: impl ToString) -> Self {
        self.tables
            .entry(table.to_string())
            .or_default()
            .insert(signal.to_string(), value.to_string());
        self
    }

    /// Only the signals of the tables `keep` accepts (the migrated ones); whole-source signals stay.
    pub fn only_tables(mut self, keep: impl Fn(&str) -> bool) -> Self {
        self.tables.retain(|t, _| keep(t));
        self
    }

    /// What differs from `now`, one line per signal, in words: `rows of "users": 10 then, 12 now`.
    pub fn changes(&self, now: &Fingerprint) -> Vec<String> {
        fn show(v: Option<&String>) -> String {
            match v {
                None => "absent".into(),
                // Digests are long and say nothing to a person beyond "different".
                Some(v) if v.len() > 24 => format!("{}…", &v[..v.floor_char_boundary(12)]),
                Some(v) => v.clone(),
            }
        }
        fn diff(
            label: &dyn Fn(&str) -> String,
            then: &std::collections::BTreeMap<String, String>,
            now: &std::collections::BTreeMap<String, String>,
            out: &mut Vec<String>,
        ) {
            let names: std::collections::BTreeSet<&String> =
                then.keys().chain(now.keys()).collect();
            for n in names {
                let (a, b) = (then.get(n), now.get(n));
                if a != b {
                    out.push(format!("{}: {} then, {} now", label(n), show(a), show(b)));
                }
            }
        }
        let mut out = vec![];
        diff(&|s| s.to_string(), &self.whole, &now.whole, &mut out);
        let empty = std::collections::BTreeMap::new();
        let tables: std::collections::BTreeSet<&String> =
            self.tables.keys().chain(now.tables.keys()).collect();
        for t in tables {
            match (self.tables.get(t), now.tables.get(t)) {
                (Some(_), None) => out.push(format!("table {t:?}: there then, gone now")),
                (None, Some(_)) => out.push(format!("table {t:?}: new")),
                (a, b) => diff(
                    &|s| format!("{s} of {t:?}"),
                    a.unwrap_or(&empty),
                    b.unwrap_or(&empty),
                    &mut out,
                ),
            }
        }
        out
    }
}

/// Reads a fingerprint as snapshots record it; a snapshot written before fingerprints had named signals holds
/// one string, kept as one whole-source signal (so it still compares, and differs, as before).
impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Named {
            #[serde(default)]
            whole: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Named(Named),
            Old(String),
        }
        Ok(match Any::deserialize(d)? {
            Any::Named(n) => Fingerprint {
                whole: n.whole,
                tables: n.tables,
            },
            Any::Old(s) => Fingerprint::default().whole("fingerprint (older snapshot format)", s),
        })
    }
}

/// A digest of text (a schema, a file's bytes) for a fingerprint signal: XXH3-128 in hex.
pub fn digest(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The XXH3-128 of a file's bytes (and of its companion files, e.g. a write-ahead log), streamed.
pub fn file_digest(paths: &[&std::path::Path]) -> std::io::Result<String> {
    use std::io::Read;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = match std::fs::File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn changes_are_named_and_unmigrated_tables_do_not_count() {
        let then = Fingerprint::default()
            .whole("file content", "a".repeat(32))
            .table("users", "rows", 10)
            .table("logs", "rows", 5);
        let same = then.clone();
        assert!(then.changes(&same).is_empty());
        let now = Fingerprint::default()
            .whole("file content", "b".repeat(32))
            .table("users", "rows", 12)
            .table("logs", "rows", 9)
            .table("new_table", "rows", 1);
        let c = then.changes(&now);
        assert!(
            c.contains(&"rows of \"users\": 10 then, 12 now".to_string()),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|l| l.starts_with("file content: aaaaaaaaaaaa… then")),
            "{c:?}"
        );
        assert!(c.contains(&"table \"new_table\": new".to_string()), "{c:?}");
        let only = |f: Fingerprint| f.only_tables(|t| t == "users");
        let c = only(then.clone()).changes(&only(now.clone()));
        assert_eq!(c.len(), 2, "logs and new_table are not migrated: {c:?}");
    }

    #[test]
    fn reads_both_the_named_form_and_an_older_string() {
        let f = Fingerprint::default()
            .whole("keys", 3)
            .table("t", "rows", 1);
        let back: Fingerprint = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        let old: Fingerprint = serde_json::from_str("\"size=1,mtime=2\"").unwrap();
        assert_eq!(old.whole.len(), 1);
        assert!(!old.changes(&f).is_empty());
    }
}
