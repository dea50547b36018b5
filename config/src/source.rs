//! Reading `kube.yml` and `KUBE_*` variables into a JSON tree that remembers where every key
//! came from, so that any error found later can name file:line:column (or the variable).

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A position in the config file (1-based line and column).
    File {
        file: String,
        line: u64,
        column: u64,
    },
    /// An environment variable.
    Env(String),
}

/// A YAML node with the position of each value, as serde-saphyr reports it.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Uint(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    entries.push((key, value));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

fn origin_of(file: &str, loc: &serde_saphyr::Location) -> Origin {
    Origin::File {
        file: file.to_owned(),
        line: loc.line(),
        column: loc.column(),
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Origin::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// The merged tree, with an origin for every key path (`http.listen`, `processes[0].command`).
#[derive(Debug, Default)]
pub struct Tree {
    file: String,
    pub value: Value,
    origins: HashMap<String, Origin>,
}

/// A YAML syntax error: position and message.
#[derive(Debug)]
pub struct SyntaxError {
    pub origin: Option<Origin>,
    pub message: String,
}

impl Tree {
    /// Parses YAML text. An empty document is an empty mapping.
    pub fn parse(file: &str, text: &str) -> Result<Tree, SyntaxError> {
        let mut tree = Tree {
            file: file.to_owned(),
            value: Value::Object(Map::new()),
            origins: HashMap::new(),
        };
        if text.trim().is_empty() {
            return Ok(tree);
        }
        let node: Spanned<Node> = serde_saphyr::from_str(text).map_err(|e| SyntaxError {
            origin: e.location().map(|l| origin_of(file, &l)),
            message: first_line(&e.to_string()),
        })?;
        match node.value {
            Node::Null => {}
            Node::Map(_) => tree.value = tree.convert(String::new(), node),
            _ => {
                return Err(SyntaxError {
                    origin: Some(origin_of(file, &node.referenced)),
                    message: "the top level of kube.yml must be a mapping of sections".into(),
                });
            }
        }
        Ok(tree)
    }

    fn convert(&mut self, path: String, node: Spanned<Node>) -> Value {
        let origin = origin_of(&self.file, &node.referenced);
        self.origins.insert(path.clone(), origin);
        match node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::from(i),
            Node::Uint(u) => Value::from(u),
            Node::Float(f) => Value::from(f),
            Node::Str(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(format!("{path}[{i}]"), item))
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    let child = join(&path, &key.value);
                    // The key's own position, so "unknown key" points at the key.
                    self.origins.insert(
                        format!("{child}#key"),
                        origin_of(&self.file, &key.referenced),
                    );
                    let v = self.convert(child, value);
                    map.insert(key.value, v);
                }
                Value::Object(map)
            }
        }
    }

    /// Sets `section.key` (or a top-level `key` when `section` is None) from an environment
    /// variable; the value is read as a YAML scalar so `KUBE_APPS_KEEP_VERSIONS=3` is a number.
    pub fn set_from_env(&mut self, section: Option<&str>, key: &str, raw: &str, var: &str) {
        let value = match serde_saphyr::from_str::<Node>(raw) {
            Ok(Node::Bool(b)) => Value::Bool(b),
            Ok(Node::Int(i)) => Value::from(i),
            Ok(Node::Uint(u)) => Value::from(u),
            Ok(Node::Float(f)) => Value::from(f),
            Ok(Node::Null) if raw.trim().is_empty() => Value::String(String::new()),
            _ => Value::String(raw.to_owned()),
        };
        let root = match &mut self.value {
            Value::Object(m) => m,
            other => {
                *other = Value::Object(Map::new());
                match other {
                    Value::Object(m) => m,
                    _ => unreachable!("just set to an object"),
                }
            }
        };
        let (target, path) = match section {
            None => (root, key.to_owned()),
            Some(s) => {
                let entry = root
                    .entry(s.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let Value::Object(m) = entry else {
                    unreachable!("just made an object")
                };
                (m, format!("{s}.{key}"))
            }
        };
        target.insert(key.to_owned(), value);
        self.origins
            .insert(path.clone(), Origin::Env(var.to_owned()));
        self.origins
            .insert(format!("{path}#key"), Origin::Env(var.to_owned()));
    }

    /// The origin of a key path, or of its nearest ancestor that has one.
    pub fn origin(&self, path: &str) -> Option<Origin> {
        let mut p = path.to_owned();
        loop {
            if let Some(o) = self.origins.get(&p) {
                return Some(o.clone());
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.origins.get("").cloned(),
            }
        }
    }

    /// The origin of a key itself (where it is written), falling back to its value.
    pub fn key_origin(&self, path: &str) -> Option<Origin> {
        self.origins
            .get(&format!("{path}#key"))
            .cloned()
            .or_else(|| self.origin(path))
    }
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}
