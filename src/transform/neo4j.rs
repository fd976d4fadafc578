//! The mapping of a graph snapshot (nodes, relationships): sql/neo4j.sql with its placeholders filled in from the
//! flags. The result is plain DataFusion SQL, written to `<work>/mapping.sql` like the generic mapping, so a user
//! can copy it, edit it and run the copy with `--sql FILE`.

use super::generic::lit;

pub const TEMPLATE: &str = include_str!("../../sql/neo4j.sql");

/// Properties whose values make the text to embed, before the configured ones.
pub const DEFAULT_TEXT_PROPERTIES: &[&str] = &["name", "title", "description", "content"];
/// Creation-time properties looked for, in order, when none is configured.
pub const DEFAULT_TIME_PROPERTIES: &[&str] = &["created_at", "createdAt", "created"];

/// What a node's memory id is made from (`--id-property`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GraphKey {
    /// `elementId(n)` (the snapshot's `element_id`; `toString(id(n))` on a server without elementId): memory id
    /// `neo4j_node_<element id>`. Servers reuse element ids after deletes, so they are stable within one
    /// snapshot only.
    ElementId,
    /// One property keys every node (the user asserts it is unique across the graph): `neo4j_<value>`.
    Property { name: String },
    /// Per label, in the order given; a node is keyed by the first listed label it has:
    /// `neo4j_<label>:<value>` (a label in the spec holds no `:`, so label and value cannot run together).
    LabelProperties { pairs: Vec<(String, String)> },
}

impl GraphKey {
    /// Parses `--id-property`: `NAME`, or `Label:prop,Label2:prop2`.
    pub fn parse(spec: &str) -> Result<GraphKey, String> {
        let items: Vec<&str> = spec
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        let bad = |why: &str| {
            format!(
                "--id-property {spec:?}: {why}; give one property NAME (unique across the graph) or \
                 LABEL:PROPERTY pairs, e.g. \"File:path,Class:fqn,Function:fqn\""
            )
        };
        match items.as_slice() {
            [] => Err(bad("empty")),
            [one] if !one.contains(':') => Ok(GraphKey::Property {
                name: one.to_string(),
            }),
            _ => {
                let mut pairs: Vec<(String, String)> = vec![];
                for item in items {
                    let (label, prop) = item
                        .split_once(':')
                        .map(|(l, p)| (l.trim(), p.trim()))
                        .filter(|(l, p)| !l.is_empty() && !p.is_empty() && !p.contains(':'))
                        .ok_or_else(|| bad(&format!("{item:?} is not LABEL:PROPERTY")))?;
                    if pairs.iter().any(|(l, _)| l == label) {
                        return Err(bad(&format!("label {label:?} is listed twice")));
                    }
                    pairs.push((label.to_string(), prop.to_string()));
                }
                Ok(GraphKey::LabelProperties { pairs })
            }
        }
    }

    /// One line for `plan`: what graph memory ids are made of.
    pub fn describe(&self) -> String {
        match self {
            GraphKey::ElementId => "element ids: neo4j_node_<elementId(n)> (toString(id(n)) on a server without \
                                    elementId(); the source line says which)"
                .into(),
            GraphKey::Property { name } => {
                format!("property {name} of every node (--id-property): neo4j_<value>")
            }
            GraphKey::LabelProperties { pairs } => format!(
                "per label (--id-property {}): neo4j_<label>:<value>, the first listed label a node has",
                pairs
                    .iter()
                    .map(|(l, p)| format!("{l}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphMapping {
    /// What node memory ids are made from.
    pub id_key: GraphKey,
    /// Every node into this space.
    pub memory_space: Option<String>,
    /// Label -> space, in the order given (the first one a node has wins).
    pub label_to_space: Vec<(String, String)>,
    pub space_prefix: String,
    /// Extra text properties, after the defaults.
    pub text_properties: Vec<String>,
    /// The creation-time property (default: DEFAULT_TIME_PROPERTIES).
    pub time_property: Option<String>,
    pub weight_property: Option<String>,
    pub confidence: f32,
    pub activation: f32,
    pub bidirectional: bool,
    pub skip_edges: bool,
}

impl Default for GraphMapping {
    fn default() -> Self {
        GraphMapping {
            id_key: GraphKey::ElementId,
            memory_space: None,
            label_to_space: vec![],
            space_prefix: "neo4j_".into(),
            text_properties: vec![],
            time_property: None,
            weight_property: None,
            // Engram's confidence category MEDIUM, as a value.
            confidence: 0.5,
            activation: 0.5,
            bidirectional: false,
            skip_edges: false,
        }
    }
}

/// The space of a label made into an Engram space id: prefix + lower case, other characters `_`, at most 64.
fn label_space_expr(prefix: &str, label: &str) -> String {
    format!(
        "substr({} || regexp_replace(lower({label}), '[^a-z0-9_-]', '_', 'g'), 1, 64)",
        lit(prefix)
    )
}

/// The SQL of a node's key: (key_label, key_value, memory_id, problem when key_value is NULL), over `n` (a row of
/// `source.nodes`, then of `node_keys`). The key is computed in the mapping from the raw `properties`, never in the
/// snapshot, which stays the source's own copy.
fn key_exprs(key: &GraphKey) -> (String, String, String, String) {
    // The node's labels for a message: ":File:Test", or "(no label)".
    let labels = "CASE WHEN cardinality(n.labels) = 0 THEN '(no label)' \
                  ELSE ':' || array_to_string(n.labels, ':') END";
    match key {
        GraphKey::ElementId => (
            "CAST(NULL AS VARCHAR)".into(),
            "n.element_id".into(),
            "'neo4j_node_' || n.key_value".into(),
            "'have no element id'".into(),
        ),
        GraphKey::Property { name } => (
            "CAST(NULL AS VARCHAR)".into(),
            format!("json_get(n.properties, {})", lit(name)),
            "'neo4j_' || n.key_value".into(),
            format!(
                "concat('labelled ', {labels}, ' have no property ', {}, \
                 ' (or it is null), which --id-property ', {}, ' needs on every node')",
                lit(&format!("{name:?}")),
                lit(name)
            ),
        ),
        GraphKey::LabelProperties { pairs } => {
            let spec = pairs
                .iter()
                .map(|(l, p)| format!("{l}:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let case = |then: &dyn Fn(&str, &str) -> String, otherwise: String| {
                let mut e = String::from("CASE\n");
                for (label, prop) in pairs {
                    e.push_str(&format!(
                        "    WHEN array_has(n.labels, {}) THEN {}\n",
                        lit(label),
                        then(label, prop)
                    ));
                }
                e.push_str(&format!("    ELSE {otherwise}\n  END"));
                e
            };
            (
                case(&|label, _| lit(label), "CAST(NULL AS VARCHAR)".into()),
                case(
                    &|_, prop| format!("json_get(n.properties, {})", lit(prop)),
                    "CAST(NULL AS VARCHAR)".into(),
                ),
                "'neo4j_' || n.key_label || ':' || n.key_value".into(),
                case(
                    &|label, prop| {
                        lit(&format!(
                            "with label {label} have no property {prop:?} (or it is null), which --id-property \
                             {label}:{prop} needs on every {label} node"
                        ))
                    },
                    format!(
                        "concat('labelled ', {labels}, ' have none of the labels of --id-property ', {}, \
                         ', so they have no key: add LABEL:PROPERTY for one of their labels')",
                        lit(&spec)
                    ),
                ),
            )
        }
    }
}

pub fn generate(m: &GraphMapping) -> String {
    let (key_label, key_value, memory_id, key_problem) = key_exprs(&m.id_key);
    let space = match &m.memory_space {
        Some(s) => lit(s),
        None => {
            let mut e = String::from("CASE\n");
            for (label, space) in &m.label_to_space {
                e.push_str(&format!(
                    "    WHEN array_has(n.labels, {}) THEN {}\n",
                    lit(label),
                    lit(space)
                ));
            }
            e.push_str(&format!(
                "    WHEN cardinality(n.labels) = 0 THEN {}\n    ELSE {}\n  END",
                lit(&format!("{}unlabelled", m.space_prefix)),
                label_space_expr(&m.space_prefix, "n.labels[1]")
            ));
            e
        }
    };
    let mut text_props: Vec<String> = DEFAULT_TEXT_PROPERTIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    for p in &m.text_properties {
        if !text_props.contains(p) {
            text_props.push(p.clone());
        }
    }
    let text = format!(
        "concat_ws(' | ',\n{}\n  )",
        text_props
            .iter()
            .map(|p| format!(
                "    {} || json_get(n.properties, {})",
                lit(&format!("{p}: ")),
                lit(p)
            ))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    // concat_ws over only NULLs gives '': no text at all -> NULL (the content is embedded).
    let text = format!("nullif({text}, '')");
    let time_props: Vec<String> = match &m.time_property {
        Some(p) => vec![p.clone()],
        None => DEFAULT_TIME_PROPERTIES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let times: Vec<String> = time_props
        .iter()
        .map(|p| format!("json_get_timestamp(n.properties, {})", lit(p)))
        .collect();
    let created = if times.len() == 1 {
        times[0].clone()
    } else {
        format!("coalesce({})", times.join(", "))
    };
    let (weight_value, weight) = match &m.weight_property {
        Some(p) => {
            let v = format!("json_get_float(r.properties, {})", lit(p));
            (
                v.clone(),
                format!(
                    "coalesce(CASE WHEN w.lo >= 0 AND w.hi <= 1 THEN {v} \
                     WHEN w.hi > w.lo THEN ({v} - w.lo) / (w.hi - w.lo) ELSE 1.0 END, 0.7)"
                ),
            )
        }
        None => ("CAST(NULL AS DOUBLE)".to_string(), "0.7".to_string()),
    };
    let orphan_space = match &m.memory_space {
        Some(s) => s.clone(),
        None => format!("{}orphans", m.space_prefix),
    };
    TEMPLATE
        .replace("{{KEY_KIND}}", &m.id_key.describe())
        .replace("{{KEY_LABEL}}", &key_label)
        .replace("{{KEY_VALUE}}", &key_value)
        .replace("{{MEMORY_ID}}", &memory_id)
        .replace("{{KEY_PROBLEM}}", &key_problem)
        .replace("{{SPACE}}", &space)
        .replace("{{TEXT}}", &text)
        .replace("{{CREATED_AT}}", &created)
        .replace("{{CONFIDENCE}}", &format!("{}", m.confidence))
        .replace("{{ACTIVATION}}", &format!("{}", m.activation))
        .replace("{{WEIGHT_VALUE}}", &weight_value)
        .replace("{{WEIGHT}}", &weight)
        .replace("{{ORPHAN_SPACE}}", &orphan_space.replace('\'', "''"))
        .replace("{{EDGES_ON}}", if m.skip_edges { "FALSE" } else { "TRUE" })
        .replace(
            "{{BIDIRECTIONAL}}",
            if m.bidirectional { "TRUE" } else { "FALSE" },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let sql = generate(&GraphMapping {
            label_to_space: vec![("Person".into(), "people".into())],
            weight_property: Some("w".into()),
            ..Default::default()
        });
        let body: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        assert!(!body.contains("{{"), "{body}");
        assert!(sql.contains("WHEN array_has(n.labels, 'Person') THEN 'people'"));
        assert!(sql.contains("json_get_float(r.properties, 'w')"));
        for key in [
            GraphKey::ElementId,
            GraphKey::parse("uuid").unwrap(),
            GraphKey::parse("File:path,Class:fqn").unwrap(),
        ] {
            let sql = generate(&GraphMapping {
                id_key: key,
                ..Default::default()
            });
            let body: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(!body.contains("{{"), "{body}");
        }
    }

    #[test]
    fn id_property_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            GraphKey::parse(" uuid ").unwrap(),
            GraphKey::Property {
                name: "uuid".into()
            }
        );
        assert_eq!(
            GraphKey::parse("File:path, Class:fqn").unwrap(),
            GraphKey::LabelProperties {
                pairs: vec![
                    ("File".into(), "path".into()),
                    ("Class".into(), "fqn".into())
                ]
            }
        );
        for bad in [
            "",
            "a,b",
            "File:path,uuid",
            "File:",
            ":path",
            "File:a:b",
            "F:a,F:b",
        ] {
            assert!(GraphKey::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Maps a tiny graph in the snapshot's two tables, nodes (id, element_id, labels, properties) and
    /// relationships (id, start_id, end_id, start_element_id, end_element_id); returns the memory ids, sorted,
    /// and the edges and orphans as (source_id, target_id, is an edge), sorted.
    async fn mapped(
        key: GraphKey,
        nodes: &[(i64, &str, &[&str], &str)],
        rels: &[(i64, i64, i64, &str, &str)],
    ) -> crate::Result<(Vec<String>, Vec<(String, String, bool)>)> {
        use arrow::array::{
            Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
        };
        use datafusion::catalog::MemorySchemaProvider;
        use datafusion::datasource::MemTable;
        use std::sync::Arc;
        let nodes_schema = crate::source::neo4j::nodes_schema();
        let mut labels = ListBuilder::new(StringBuilder::new());
        for n in nodes {
            for l in n.2 {
                labels.values().append_value(l);
            }
            labels.append(true);
        }
        let nb = RecordBatch::try_new(
            nodes_schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(nodes.iter().map(|n| n.0))),
                Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.1))),
                Arc::new(labels.finish()),
                Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.3))),
            ],
        )?;
        let rels_schema = crate::source::neo4j::relationships_schema();
        let rb = RecordBatch::try_new(
            rels_schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(
                    rels.iter().map(|r| format!("#9:{}", r.0)),
                )),
                Arc::new(StringArray::from_iter_values(rels.iter().map(|_| "LINKS"))),
                Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rels.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.3))),
                Arc::new(StringArray::from_iter_values(rels.iter().map(|r| r.4))),
                Arc::new(StringArray::from_iter_values(rels.iter().map(|_| "{}"))),
            ],
        )?;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::engine::local_session(
            1,
            1024,
            &crate::engine::SqlMemory {
                limit_bytes: 64 << 20,
                spill_dir: dir.path().to_path_buf(),
            },
        )?;
        let schema = Arc::new(MemorySchemaProvider::new());
        use datafusion::catalog::SchemaProvider;
        schema
            .register_table(
                "nodes".into(),
                Arc::new(MemTable::try_new(nodes_schema, vec![vec![nb]]).unwrap()),
            )
            .unwrap();
        schema
            .register_table(
                "relationships".into(),
                Arc::new(MemTable::try_new(rels_schema, vec![vec![rb]]).unwrap()),
            )
            .unwrap();
        ctx.catalog("datafusion")
            .unwrap()
            .register_schema("source", schema)
            .unwrap();
        let sql = generate(&GraphMapping {
            id_key: key,
            ..Default::default()
        });
        super::super::run_statements(&ctx, &sql, "test").await?;
        super::super::check_mapping_errors(&ctx, "test").await?;
        let strings = |b: &RecordBatch, i: usize| -> Vec<String> {
            let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_any().downcast_ref::<StringArray>().unwrap();
            (0..c.len()).map(|r| c.value(r).to_string()).collect()
        };
        let mut ids = vec![];
        for b in super::super::collect(&ctx, "SELECT id FROM memories ORDER BY id", "t").await? {
            ids.extend(strings(&b, 0));
        }
        let mut edges = vec![];
        for (view, kept) in [("edges", true), ("orphans", false)] {
            let q = format!("SELECT source_id, target_id FROM {view} ORDER BY 1, 2");
            for b in super::super::collect(&ctx, &q, "t").await? {
                for (s, t) in strings(&b, 0).into_iter().zip(strings(&b, 1)) {
                    edges.push((s, t, kept));
                }
            }
        }
        edges.sort();
        Ok((ids, edges))
    }

    fn owned(v: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        v.iter()
            .map(|(s, t, k)| (s.to_string(), t.to_string(), *k))
            .collect()
    }

    /// The ids of each key kind, edges taking their end nodes' ids, an orphan's missing end in the element-id
    /// form, and nodes without their key refused with a message naming the label and the count.
    #[tokio::test]
    async fn node_ids_follow_the_key_and_edges_follow_their_nodes() {
        let nodes: &[(i64, &str, &[&str], &str)] = &[
            (10, "#1:0", &["File"], r#"{"path":"a.py","uuid":"u1"}"#),
            (
                11,
                "#1:1",
                &["File", "Test"],
                r#"{"path":"t.py","uuid":"u2"}"#,
            ),
            (12, "#2:0", &["Class"], r#"{"fqn":"a.K","uuid":7}"#),
        ];
        // 10 -> 12, 11 -> 10, and 12 -> a node the snapshot lacks (id 99, element id #3:5).
        let rels = &[
            (1, 10, 12, "#1:0", "#2:0"),
            (2, 11, 10, "#1:1", "#1:0"),
            (3, 12, 99, "#2:0", "#3:5"),
        ];

        let (ids, edges) = mapped(GraphKey::ElementId, nodes, rels).await.unwrap();
        assert_eq!(
            ids,
            ["neo4j_node_#1:0", "neo4j_node_#1:1", "neo4j_node_#2:0"]
        );
        assert_eq!(
            edges,
            owned(&[
                ("neo4j_node_#1:0", "neo4j_node_#2:0", true),
                ("neo4j_node_#1:1", "neo4j_node_#1:0", true),
                ("neo4j_node_#2:0", "neo4j_node_#3:5", false),
            ])
        );

        let (ids, edges) = mapped(GraphKey::parse("uuid").unwrap(), nodes, rels)
            .await
            .unwrap();
        assert_eq!(ids, ["neo4j_7", "neo4j_u1", "neo4j_u2"]);
        assert_eq!(
            edges,
            owned(&[
                ("neo4j_7", "neo4j_node_#3:5", false),
                ("neo4j_u1", "neo4j_7", true),
                ("neo4j_u2", "neo4j_u1", true),
            ])
        );

        let per_label = GraphKey::parse("Test:uuid,File:path,Class:fqn").unwrap();
        let (ids, edges) = mapped(per_label, nodes, rels).await.unwrap();
        // The File:Test node is keyed by Test, listed first.
        assert_eq!(ids, ["neo4j_Class:a.K", "neo4j_File:a.py", "neo4j_Test:u2"]);
        assert_eq!(
            edges,
            owned(&[
                ("neo4j_Class:a.K", "neo4j_node_#3:5", false),
                ("neo4j_File:a.py", "neo4j_Class:a.K", true),
                ("neo4j_Test:u2", "neo4j_File:a.py", true),
            ])
        );

        // Without the property (missing or null), or without any listed label: refused, never defaulted.
        let lacking: &[(i64, &str, &[&str], &str)] = &[
            (10, "#1:0", &["File"], r#"{"path":"a.py"}"#),
            (11, "#1:1", &["File"], r#"{"path":null}"#),
            (13, "#1:2", &["File"], r#"{}"#),
            (12, "#2:0", &["Class"], r#"{"fqn":"a.K"}"#),
            (14, "#4:0", &["Module"], r#"{"path":"m"}"#),
        ];
        let e = mapped(
            GraphKey::parse("File:path,Class:fqn").unwrap(),
            lacking,
            &[],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("2 node(s) with label File have no property \"path\""),
            "{e}"
        );
        assert!(
            e.contains("1 node(s) labelled :Module have none of the labels"),
            "{e}"
        );
        let e = mapped(GraphKey::parse("fqn").unwrap(), lacking, &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 node(s) labelled :File have no property \"fqn\""),
            "{e}"
        );
        assert!(
            e.contains("1 node(s) labelled :Module have no property"),
            "{e}"
        );
        assert!(!e.contains("Class"), "{e}");
    }
}
