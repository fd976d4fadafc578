//! Unit tests of the PostgreSQL type table (no server): every row of `TYPE_MAP` resolves to a rule whose name
//! round-trips, and typmods resolve as the catalog encodes them. The values themselves are tested against a real
//! server in tests/it/postgres.rs.

use super::*;

fn col(typname: &str, typmod: i32) -> CatalogColumn {
    CatalogColumn {
        name: "c".into(),
        declared: typname.into(),
        typname: typname.into(),
        typtype: "b".into(),
        elem: String::new(),
        typmod,
        domain_base: None,
    }
}

#[test]
fn every_type_map_row_resolves_and_round_trips() {
    for (typname, rule, _) in TYPE_MAP {
        let (t, note) = rule_for(&col(typname, -1));
        assert!(!note.is_empty(), "{typname}");
        assert_eq!(
            PgType::from_name(&t.name()),
            Some(t.clone()),
            "{typname} -> {}",
            t.name()
        );
        if !matches!(*rule, "decimal" | "vector" | "halfvec") {
            assert_eq!(t.name(), *rule, "{typname}");
        }
    }
}

#[test]
fn numeric_typmods() {
    // numeric(12,2): ((12 << 16) | 2) + 4
    assert_eq!(
        rule_for(&col("numeric", (12 << 16 | 2) + 4)).0,
        PgType::Decimal(12, 2)
    );
    assert_eq!(
        rule_for(&col("numeric", (38 << 16 | 38) + 4)).0,
        PgType::Decimal(38, 38)
    );
    let (t, note) = rule_for(&col("numeric", (39 << 16 | 2) + 4));
    assert_eq!(t, PgType::AsText);
    assert!(note.starts_with("widened"), "{note}");
    // unconstrained numeric and a negative scale (numeric(5,-2), PostgreSQL 15) travel as exact text
    assert_eq!(rule_for(&col("numeric", -1)).0, PgType::AsText);
    assert_eq!(
        rule_for(&col("numeric", ((5 << 16) | (0x800 - 2)) + 4)).0,
        PgType::AsText
    );
}

#[test]
fn vectors_arrays_enums_and_unknown_types() {
    let (t, _) = rule_for(&col("vector", 768));
    assert_eq!(
        crate::schema::type_name(&t.data_type()),
        "FixedSizeList(768 x Float32)"
    );
    assert_eq!(rule_for(&col("vector", -1)).0, PgType::Vector(None));
    let mut a = col("_int4", -1);
    a.elem = "int4".into();
    assert_eq!(rule_for(&a).0, PgType::Array(Box::new(PgType::Int32)));
    let mut a = col("_uuid", -1);
    a.elem = "uuid".into();
    let (t, note) = rule_for(&a);
    assert_eq!(t, PgType::AsText);
    assert!(note.starts_with("text fallback"), "{note}");
    let mut e = col("mood", -1);
    e.typtype = "e".into();
    assert_eq!(rule_for(&e), (PgType::AsText, "exact (enum label)".into()));
    let (t, note) = rule_for(&col("point", -1));
    assert_eq!(t, PgType::AsText);
    assert!(note.contains("text fallback"), "{note}");
}

#[test]
fn partitions_cover_every_key() {
    let b = split(1, 101, 4);
    assert_eq!(b, vec![1, 26, 51, 76]);
    let parts = ranges(&b, 100, |x| format!("k >= {x}"), |x| format!("k < {x}"));
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0].filter, "k < 26");
    assert_eq!(parts[1].filter, "k >= 26 AND k < 51");
    assert_eq!(parts[3].filter, "k >= 76");
    assert_eq!(split(5, 6, 4), vec![5]);
}

#[test]
fn redacts_the_password() {
    let r = redact("postgres://app:s3cret@db:5432/x");
    assert!(!r.contains("s3cret"), "{r}");
    assert!(r.contains("app:***@db"), "{r}");
    assert_eq!(redact("postgres://db/x"), "postgres://db/x");
}
