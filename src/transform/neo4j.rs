//! The mapping of a graph snapshot (nodes, relationships): sql/neo4j.sql with its placeholders filled in from the
//! flags. The result is plain DataFusion SQL, written to `<work>/mapping.sql` like the generic mapping, so a user
//! can copy it, edit it and run the copy with `--sql FILE`.

use super::generic::lit;

pub const TEMPLATE: &str = include_str!("../../sql/neo4j.sql");

/// Properties whose values make the text to embed, before the configured ones.
pub const DEFAULT_TEXT_PROPERTIES: &[&str] = &["name", "title", "description", "content"];
/// Creation-time properties looked for, in order, when none is configured.
pub const DEFAULT_TIME_PROPERTIES: &[&str] = &["created_at", "createdAt", "created"];

#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphMapping {
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

pub fn generate(m: &GraphMapping) -> String {
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
    }
}
