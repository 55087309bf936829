//! A span-only view of a YAML document, used to turn positions into key paths and key paths
//! into positions.
//!
//! serde errors carry a line and a column but no key, and some (those raised inside internally
//! tagged enums) carry no position at all. Validation of typed config finds a problem by key
//! (`serving.max_body_bytes`) but not its line. This tree answers both questions. It keeps no
//! scalar values: only the shape of the document and where each key and node starts.

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// The shape of a YAML document with the position of every key and node.
#[derive(Debug)]
pub(crate) struct YamlTree {
    root: YamlNode,
}

/// One node: where it starts and what it holds.
#[derive(Debug)]
struct YamlNode {
    line: u32,
    column: u32,
    content: NodeContent,
}

#[derive(Debug)]
enum NodeContent {
    Scalar,
    Sequence(Vec<YamlNode>),
    Mapping(Vec<MappingEntry>),
}

#[derive(Debug)]
struct MappingEntry {
    key: String,
    key_line: u32,
    key_column: u32,
    value: YamlNode,
}

/// A position found in the tree, with the key path that leads to it (`a.b[0].c`; empty for
/// the document root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundPosition {
    pub(crate) key_path: String,
    pub(crate) line: u32,
    pub(crate) column: u32,
}

impl YamlTree {
    /// Parses a document; `None` when it is not valid YAML or is empty.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let root: Option<YamlNode> = serde_saphyr::from_str(text).ok()?;
        root.map(|root| Self { root })
    }

    /// The position of the value under a path of mapping keys.
    pub(crate) fn value_position(&self, keys: &[&str]) -> Option<FoundPosition> {
        let mut node = &self.root;
        for key in keys {
            let NodeContent::Mapping(entries) = &node.content else {
                return None;
            };
            node = &entries.iter().find(|entry| entry.key == *key)?.value;
        }
        Some(FoundPosition {
            key_path: keys.join("."),
            line: node.line,
            column: node.column,
        })
    }

    /// The key path of the key or node that starts exactly at a position.
    pub(crate) fn key_path_at(&self, line: u32, column: u32) -> Option<String> {
        key_path_at_node(&self.root, "", line, column)
    }

    /// The mapping that has a key starting exactly at a position: its key path and where it
    /// starts. serde reports a missing field at the last key of the mapping that lacks it.
    pub(crate) fn mapping_with_key_at(&self, line: u32, column: u32) -> Option<FoundPosition> {
        mapping_with_key_at_node(&self.root, "", line, column)
    }

    /// The only mapping key of that name inside the node that starts at a position (or inside
    /// the value of the key that starts there). serde reports errors raised inside internally
    /// tagged enums at the key that holds the enum.
    pub(crate) fn unique_key_named_below(
        &self,
        line: u32,
        column: u32,
        key: &str,
    ) -> Option<FoundPosition> {
        let (path, node) = node_at(&self.root, "", line, column)?;
        let mut found = Vec::new();
        collect_keys_named(node, &path, key, &mut found);
        if found.len() == 1 { found.pop() } else { None }
    }

    /// The only mapping key of that name anywhere in the document (`None` when there are
    /// none or several).
    pub(crate) fn unique_key_named(&self, key: &str) -> Option<FoundPosition> {
        let mut found = Vec::new();
        collect_keys_named(&self.root, "", key, &mut found);
        if found.len() == 1 { found.pop() } else { None }
    }
}

/// The line and column of a serde-saphyr location, as `u32` (saturating).
pub(crate) fn line_and_column(location: &serde_saphyr::Location) -> (u32, u32) {
    let narrow = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
    (narrow(location.line()), narrow(location.column()))
}

fn join_key(parent_path: &str, key: &str) -> String {
    if parent_path.is_empty() {
        key.to_string()
    } else {
        format!("{parent_path}.{key}")
    }
}

fn join_index(parent_path: &str, index: usize) -> String {
    let mut path = parent_path.to_string();
    let _ = write!(path, "[{index}]");
    path
}

fn key_path_at_node(node: &YamlNode, path: &str, line: u32, column: u32) -> Option<String> {
    match &node.content {
        NodeContent::Scalar => None,
        NodeContent::Sequence(elements) => {
            elements.iter().enumerate().find_map(|(index, element)| {
                let element_path = join_index(path, index);
                key_path_at_node(element, &element_path, line, column).or_else(|| {
                    (element.line == line && element.column == column).then_some(element_path)
                })
            })
        }
        NodeContent::Mapping(entries) => entries.iter().find_map(|entry| {
            let entry_path = join_key(path, &entry.key);
            if entry.key_line == line && entry.key_column == column {
                return Some(entry_path);
            }
            key_path_at_node(&entry.value, &entry_path, line, column).or_else(|| {
                (entry.value.line == line && entry.value.column == column).then_some(entry_path)
            })
        }),
    }
}

/// The node that starts at a position, or the value of the key that starts there, with its
/// key path.
fn node_at<'a>(
    node: &'a YamlNode,
    path: &str,
    line: u32,
    column: u32,
) -> Option<(String, &'a YamlNode)> {
    match &node.content {
        NodeContent::Scalar => None,
        NodeContent::Sequence(elements) => {
            elements.iter().enumerate().find_map(|(index, element)| {
                let element_path = join_index(path, index);
                if element.line == line && element.column == column {
                    return Some((element_path, element));
                }
                node_at(element, &element_path, line, column)
            })
        }
        NodeContent::Mapping(entries) => entries.iter().find_map(|entry| {
            let entry_path = join_key(path, &entry.key);
            if entry.key_line == line && entry.key_column == column {
                return Some((entry_path, &entry.value));
            }
            node_at(&entry.value, &entry_path, line, column)
        }),
    }
}

fn mapping_with_key_at_node(
    node: &YamlNode,
    path: &str,
    line: u32,
    column: u32,
) -> Option<FoundPosition> {
    match &node.content {
        NodeContent::Scalar => None,
        NodeContent::Sequence(elements) => {
            elements.iter().enumerate().find_map(|(index, element)| {
                mapping_with_key_at_node(element, &join_index(path, index), line, column)
            })
        }
        NodeContent::Mapping(entries) => {
            if entries
                .iter()
                .any(|entry| entry.key_line == line && entry.key_column == column)
            {
                let (start_line, start_column) =
                    entries.first().map_or((node.line, node.column), |entry| {
                        (entry.key_line, entry.key_column)
                    });
                return Some(FoundPosition {
                    key_path: path.to_string(),
                    line: start_line,
                    column: start_column,
                });
            }
            entries.iter().find_map(|entry| {
                mapping_with_key_at_node(&entry.value, &join_key(path, &entry.key), line, column)
            })
        }
    }
}

fn collect_keys_named(node: &YamlNode, path: &str, key: &str, found: &mut Vec<FoundPosition>) {
    match &node.content {
        NodeContent::Scalar => {}
        NodeContent::Sequence(elements) => {
            for (index, element) in elements.iter().enumerate() {
                collect_keys_named(element, &join_index(path, index), key, found);
            }
        }
        NodeContent::Mapping(entries) => {
            for entry in entries {
                let entry_path = join_key(path, &entry.key);
                if entry.key == key {
                    found.push(FoundPosition {
                        key_path: entry_path.clone(),
                        line: entry.key_line,
                        column: entry.key_column,
                    });
                }
                collect_keys_named(&entry.value, &entry_path, key, found);
            }
        }
    }
}

impl<'de> Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<NodeContent>::deserialize(deserializer)?;
        let (line, column) = line_and_column(&spanned.referenced);
        Ok(Self {
            line,
            column,
            content: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for NodeContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeContentVisitor)
    }
}

struct NodeContentVisitor;

impl<'de> Visitor<'de> for NodeContentVisitor {
    type Value = NodeContent;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_i128<E: de::Error>(self, _value: i128) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_u128<E: de::Error>(self, _value: u128) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_bytes<E: de::Error>(self, _value: &[u8]) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(NodeContent::Scalar)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(NodeContentVisitor)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(NodeContentVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = sequence.next_element::<YamlNode>()? {
            elements.push(element);
        }
        Ok(NodeContent::Sequence(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut mapping: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = mapping.next_key::<Spanned<KeyText>>()? {
            let value = mapping.next_value::<YamlNode>()?;
            let (key_line, key_column) = line_and_column(&key.referenced);
            entries.push(MappingEntry {
                key: key.value.0,
                key_line,
                key_column,
                value,
            });
        }
        Ok(NodeContent::Mapping(entries))
    }
}

/// A mapping key as text, whatever scalar type YAML gave it.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyTextVisitor)
    }
}

struct KeyTextVisitor;

impl Visitor<'_> for KeyTextVisitor {
    type Value = KeyText;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a scalar mapping key")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(KeyText(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(KeyText(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(KeyText(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(KeyText(value.to_string()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(KeyText(value.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(KeyText("null".to_string()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(KeyText("null".to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DOCUMENT: &str = "\
feature_views:
  - name: v
    version: 1
    features:
      - {name: age, dtype: int64}
serving:
  port: 80
";

    #[test]
    fn finds_values_by_key_path() {
        let tree = YamlTree::parse(DOCUMENT).expect("valid yaml");
        let port = tree.value_position(&["serving", "port"]).expect("port");
        assert_eq!((port.line, port.column), (7, 9));
        assert!(tree.value_position(&["serving", "host"]).is_none());
    }

    #[test]
    fn finds_key_paths_by_position() {
        let tree = YamlTree::parse(DOCUMENT).expect("valid yaml");
        assert_eq!(
            tree.key_path_at(3, 5).as_deref(),
            Some("feature_views[0].version")
        );
        assert_eq!(
            tree.key_path_at(3, 14).as_deref(),
            Some("feature_views[0].version")
        );
        assert_eq!(
            tree.key_path_at(5, 28).as_deref(),
            Some("feature_views[0].features[0].dtype")
        );
        let mapping = tree.mapping_with_key_at(4, 5).expect("mapping");
        assert_eq!(
            (mapping.key_path.as_str(), mapping.line, mapping.column),
            ("feature_views[0]", 2, 5)
        );
        let unique = tree.unique_key_named("port").expect("port key");
        assert_eq!((unique.key_path.as_str(), unique.line), ("serving.port", 7));
        assert!(
            tree.unique_key_named("name").is_none(),
            "two keys are called name"
        );
    }
}
