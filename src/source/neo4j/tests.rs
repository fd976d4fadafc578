//! One test per row of TYPE_TABLE: a Bolt value built in memory, rendered as typed JSON. The same values are
//! written to a real ArcadeDB by fixtures/neo4j/types.cypher and read back in tests/it/neo4j.rs.

use super::*;
use neo4rs::{
    BoltBoolean, BoltBytes, BoltDuration, BoltFloat, BoltInteger, BoltList, BoltMap, BoltNull,
    BoltString,
};

fn j(v: BoltType) -> Value {
    let mut flagged = vec![];
    let out = to_json(&v, &mut flagged);
    assert!(flagged.is_empty(), "{v:?} flagged {flagged:?}: {out}");
    out
}

fn s(x: &str) -> BoltType {
    BoltType::String(BoltString::new(x))
}

/// The documented type table (shown by docs and `plan`) says what `to_json` writes: every row whose example is
/// one concrete JSON value is that value for a Bolt value of its type, and the rows are the ones listed.
#[test]
fn type_table_examples_are_what_to_json_writes() {
    use chrono::{FixedOffset, NaiveDate, NaiveTime};
    let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let t = NaiveTime::from_hms_milli_opt(12, 34, 56, 789).unwrap();
    let cases: Vec<(&str, BoltType)> = vec![
        ("Null", BoltType::Null(BoltNull)),
        ("Date", BoltType::Date(day.into())),
        (
            "Time (with offset)",
            BoltType::Time((t, FixedOffset::east_opt(3600).unwrap()).into()),
        ),
        ("LocalTime", BoltType::LocalTime(t.into())),
        (
            "DateTime (with offset)",
            BoltType::DateTime(
                chrono::DateTime::parse_from_rfc3339("2024-02-29T12:34:56.789+01:00")
                    .unwrap()
                    .into(),
            ),
        ),
        (
            "DateTime (with zone id)",
            BoltType::DateTimeZoneId((day.and_hms_opt(12, 34, 56).unwrap(), "Europe/Paris").into()),
        ),
        (
            "LocalDateTime",
            BoltType::LocalDateTime(day.and_time(t).into()),
        ),
        (
            "Duration",
            BoltType::Duration(BoltDuration::new(
                14.into(),
                3.into(),
                3723.into(),
                0.into(),
            )),
        ),
        (
            "Point (2D)",
            BoltType::Point2D(neo4rs::BoltPoint2D {
                sr_id: 4326.into(),
                x: BoltFloat::new(2.35),
                y: BoltFloat::new(48.85),
            }),
        ),
        (
            "Point (3D)",
            BoltType::Point3D(neo4rs::BoltPoint3D {
                sr_id: 9157.into(),
                x: BoltFloat::new(1.0),
                y: BoltFloat::new(2.0),
                z: BoltFloat::new(3.0),
            }),
        ),
    ];
    for (name, v) in cases {
        let (_, example) = TYPE_TABLE
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no row {name}"));
        let want: Value = serde_json::from_str(example)
            .unwrap_or_else(|e| panic!("{name}: example {example} is not JSON: {e}"));
        assert_eq!(j(v), want, "{name}");
    }
    let names: Vec<&str> = TYPE_TABLE.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "Null",
            "Boolean",
            "Integer",
            "Float (finite)",
            "Float (NaN, ±Infinity)",
            "String",
            "List",
            "Map",
            "Bytes",
            "Date",
            "Time (with offset)",
            "LocalTime",
            "DateTime (with offset)",
            "DateTime (with zone id)",
            "LocalDateTime",
            "Duration",
            "Point (2D)",
            "Point (3D)",
            "Node, Relationship, Path (not property values)",
        ]
    );
}

#[test]
fn type_null() {
    assert_eq!(j(BoltType::Null(BoltNull)), Value::Null);
}

#[test]
fn type_boolean() {
    assert_eq!(j(BoltType::Boolean(BoltBoolean::new(true))), json!(true));
}

#[test]
fn type_integer_is_exact_at_the_extremes() {
    assert_eq!(
        j(BoltType::Integer(BoltInteger::new(i64::MAX))).to_string(),
        "9223372036854775807"
    );
    assert_eq!(j(BoltType::Integer(BoltInteger::new(-1))).to_string(), "-1");
}

#[test]
fn type_float_keeps_a_fraction() {
    assert_eq!(j(BoltType::Float(BoltFloat::new(1.0))).to_string(), "1.0");
    assert_eq!(j(BoltType::Float(BoltFloat::new(0.1))).to_string(), "0.1");
    let back: Value = serde_json::from_str("1.0").unwrap();
    assert!(back.is_f64());
}

#[test]
fn type_float_non_finite_is_tagged() {
    assert_eq!(
        j(BoltType::Float(BoltFloat::new(f64::NAN))),
        json!({"$type":"float","value":"NaN"})
    );
    assert_eq!(
        j(BoltType::Float(BoltFloat::new(f64::NEG_INFINITY))),
        json!({"$type":"float","value":"-Infinity"})
    );
}

#[test]
fn type_string() {
    assert_eq!(j(s("héllo \"q\"")), json!("héllo \"q\""));
}

#[test]
fn type_list_is_typed_per_element() {
    let l = BoltList::from(vec![
        BoltType::Integer(BoltInteger::new(1)),
        BoltType::Float(BoltFloat::new(2.0)),
        s("x"),
    ]);
    assert_eq!(j(BoltType::List(l)).to_string(), r#"[1,2.0,"x"]"#);
}

#[test]
fn type_map_keys_sorted_and_dollar_type_wrapped() {
    let mut m = BoltMap::new();
    m.put(BoltString::new("b"), BoltType::Integer(BoltInteger::new(2)));
    m.put(BoltString::new("a"), s("x"));
    assert_eq!(j(BoltType::Map(m)).to_string(), r#"{"a":"x","b":2}"#);
    let mut m = BoltMap::new();
    m.put(BoltString::new("$type"), s("user data"));
    assert_eq!(
        j(BoltType::Map(m)),
        json!({"$type":"map","value":{"$type":"user data"}})
    );
}

#[test]
fn type_bytes() {
    let b = BoltType::Bytes(BoltBytes::new(vec![0u8, 1, 254, 255].into()));
    assert_eq!(j(b), json!({"$type":"bytes","base64":"AAH+/w=="}));
}

#[test]
fn type_date() {
    let d = BoltType::Date(chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap().into());
    assert_eq!(j(d), json!({"$type":"date","value":"2024-02-29"}));
}

#[test]
fn type_time_with_offset() {
    let t = chrono::NaiveTime::from_hms_milli_opt(12, 34, 56, 789).unwrap();
    let v = BoltType::Time((t, chrono::FixedOffset::east_opt(3600).unwrap()).into());
    assert_eq!(j(v), json!({"$type":"time","value":"12:34:56.789+01:00"}));
}

#[test]
fn type_local_time() {
    let t = chrono::NaiveTime::from_hms_nano_opt(1, 2, 3, 4).unwrap();
    assert_eq!(
        j(BoltType::LocalTime(t.into())),
        json!({"$type":"local_time","value":"01:02:03.000000004"})
    );
}

#[test]
fn type_datetime_with_offset() {
    let d = chrono::DateTime::parse_from_rfc3339("2024-02-29T12:34:56.789+01:00").unwrap();
    assert_eq!(
        j(BoltType::DateTime(d.into())),
        json!({"$type":"datetime","value":"2024-02-29T12:34:56.789+01:00"})
    );
}

#[test]
fn type_datetime_with_zone_id() {
    let local = chrono::NaiveDate::from_ymd_opt(2024, 7, 1)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap();
    let v = BoltType::DateTimeZoneId((local, "Europe/Paris").into());
    assert_eq!(
        j(v),
        json!({"$type":"datetime","value":"2024-07-01T12:00:00+02:00[Europe/Paris]"})
    );
}

#[test]
fn type_local_datetime() {
    let d = chrono::NaiveDate::from_ymd_opt(1969, 12, 31)
        .unwrap()
        .and_hms_micro_opt(23, 59, 59, 5)
        .unwrap();
    assert_eq!(
        j(BoltType::LocalDateTime(d.into())),
        json!({"$type":"local_datetime","value":"1969-12-31T23:59:59.000005"})
    );
}

#[test]
fn type_duration_keeps_months_days_seconds_nanos() {
    let d = BoltDuration::new(14.into(), 3.into(), 3723.into(), 500_000_000.into());
    assert_eq!(
        j(BoltType::Duration(d)),
        json!({"$type":"duration","months":14,"days":3,"seconds":3723,"nanoseconds":500000000,"value":"P14M3DT3723.5S"})
    );
}

#[test]
fn type_point_2d() {
    let p = neo4rs::BoltPoint2D {
        sr_id: 4326.into(),
        x: BoltFloat::new(2.35),
        y: BoltFloat::new(48.85),
    };
    assert_eq!(
        j(BoltType::Point2D(p)),
        json!({"$type":"point","srid":4326,"x":2.35,"y":48.85})
    );
}

#[test]
fn type_point_3d() {
    let p = neo4rs::BoltPoint3D {
        sr_id: 9157.into(),
        x: BoltFloat::new(1.0),
        y: BoltFloat::new(2.0),
        z: BoltFloat::new(3.0),
    };
    assert_eq!(
        j(BoltType::Point3D(p)).to_string(),
        r#"{"$type":"point","srid":9157,"x":1.0,"y":2.0,"z":3.0}"#
    );
}

#[test]
fn type_graph_values_are_flagged_not_dropped() {
    let n = neo4rs::BoltNode::new(1.into(), BoltList::from(vec![s("A")]), BoltMap::new());
    let mut flagged = vec![];
    let v = to_json(&BoltType::Node(n), &mut flagged);
    assert_eq!(v["$type"], "node");
    assert!(v["$fallback"].is_string());
    assert_eq!(flagged.len(), 1);
}

#[test]
fn redact_removes_the_password() {
    let r = super::super::redact_url("bolt://root:s3cret@127.0.0.1:7687/db");
    assert!(!r.contains("s3cret"), "{r}");
    assert!(r.contains("127.0.0.1:7687/db"));
    let o = Neo4jOptions {
        user: Some("u".into()),
        password: Some("s3cret".into()),
        fetch_size: None,
    };
    assert!(!format!("{o:?}").contains("s3cret"));
    assert_eq!(scrub("bad s3cret here", "s3cret"), "bad *** here");
}

#[test]
fn url_user_info_is_percent_decoded() {
    assert_eq!(percent_decode("p%40ss%2Bw%3Ard+x"), "p@ss+w:rd+x");
    assert_eq!(percent_decode("100%"), "100%");
}
