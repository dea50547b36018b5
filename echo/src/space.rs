//! How ECHO reads the documents of a space (PROTOCOL.md §2): a root document holding the
//! space's HALO credentials and the index of its objects, and one document per object.

use std::collections::BTreeMap;

use automerge::{AutoSerde, Automerge};
use halo::credential::Credential;
use serde_json::Value;

/// What a root document says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Root {
    pub space: String,
    /// Every entry of `credentials` that parses as a credential, in key order, duplicates
    /// removed. Not judged here: an entry may claim another's id, so nothing is keyed by
    /// the id it claims; validation judges each by its own proof.
    pub credentials: Vec<Credential>,
    /// The `credentials` map as written: entry key → value.
    pub entries: BTreeMap<String, Value>,
    /// documentId → type.
    pub objects: BTreeMap<String, String>,
}

/// Checks one entry of a root's `credentials` map as a new entry must be (PROTOCOL.md §3):
/// a credential in halo's JSON, under its own id, whose id is the hash of its signed bytes
/// and whose proof verifies.
pub fn check_entry(key: &str, v: &Value) -> Result<Credential, String> {
    let c = match v {
        Value::String(s) => Credential::from_json(s),
        other => Credential::from_json_value(other),
    }
    .map_err(|e| format!("credential entry {key:?} is not a credential: {e}"))?;
    if c.id != key {
        return Err(format!("credential entry {key:?} claims the id {}", c.id));
    }
    c.verify_proof()
        .map_err(|e| format!("credential {key}: {e}"))?;
    Ok(c)
}

/// Whether `new` may follow `old` as the same space's root: the space stays, every existing
/// credential entry stays byte for byte (a credential can be added, never changed or
/// removed, so no revocation can be hidden or genesis displaced), and every added entry
/// passes [`check_entry`]. Returns the added credentials.
pub fn root_change(old: &Root, new: &Root) -> Result<Vec<Credential>, String> {
    if new.space != old.space {
        return Err("a root's space may not change".into());
    }
    for (k, v) in &old.entries {
        match new.entries.get(k) {
            None => return Err(format!("credential {k} may not be removed")),
            Some(n) if n != v => return Err(format!("credential {k} may not be changed")),
            Some(_) => {}
        }
    }
    new.entries
        .iter()
        .filter(|(k, _)| !old.entries.contains_key(*k))
        .map(|(k, v)| check_entry(k, v))
        .collect()
}

/// The document as JSON (Automerge text becomes a string).
pub fn to_json(doc: &Automerge) -> Value {
    serde_json::to_value(AutoSerde::from(doc)).unwrap_or(Value::Null)
}

/// Reads `doc` as a space root: `None` unless it carries the `kube: "space"` marker and a
/// space key.
pub fn read_root(doc: &Automerge) -> Option<Root> {
    root_from_json(&to_json(doc))
}

pub fn root_from_json(v: &Value) -> Option<Root> {
    if v.get("kube")?.as_str()? != "space" {
        return None;
    }
    let space = v.get("space")?.as_str()?.to_owned();
    halo::PublicKey::from_did(&space).ok()?;
    let mut root = Root {
        space,
        ..Root::default()
    };
    if let Some(creds) = v.get("credentials").and_then(Value::as_object) {
        let mut seen = std::collections::HashSet::new();
        for (k, c) in creds {
            root.entries.insert(k.clone(), c.clone());
            let parsed = match c {
                Value::String(s) => Credential::from_json(s).ok(),
                other => Credential::from_json_value(other).ok(),
            };
            if let Some(cred) = parsed
                && seen.insert((cred.id.clone(), cred.proof.signature.clone()))
            {
                root.credentials.push(cred);
            }
        }
    }
    if let Some(objects) = v.get("objects").and_then(Value::as_object) {
        for (id, o) in objects {
            if crate::wire::valid_doc_id(id) {
                let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
                root.objects.insert(id.clone(), ty.to_owned());
            }
        }
    }
    Some(root)
}

/// The space an object document names (untrusted: only a hint where to look).
pub fn object_space(doc: &Automerge) -> Option<String> {
    to_json(doc).get("space")?.as_str().map(str::to_owned)
}

/// Whether an object (as JSON) matches a query: its `type`, and each `prop=value` against
/// `props` (a value compares as its JSON text or, for strings, as the string itself).
pub fn matches(object: &Value, ty: &str, wheres: &[(String, String)]) -> bool {
    if object.get("type").and_then(Value::as_str) != Some(ty) {
        return false;
    }
    wheres.iter().all(
        |(k, want)| match object.get("props").and_then(|p| p.get(k)) {
            Some(Value::String(s)) => s == want,
            Some(other) => serde_json::from_str::<Value>(want).ok().as_ref() == Some(other),
            None => false,
        },
    )
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};

    use super::*;

    #[test]
    fn reads_a_root_and_ignores_other_documents() {
        let space = halo::did(&halo::SigningKey::from_bytes(&[3; 32]));
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "kube", "space").unwrap();
        tx.put(ROOT, "space", space.as_str()).unwrap();
        tx.put_object(ROOT, "credentials", ObjType::Map).unwrap();
        let objects = tx.put_object(ROOT, "objects", ObjType::Map).unwrap();
        let o = tx
            .put_object(&objects, "2j9knpCseyhnK8izDmLpGP5WMdZQ", ObjType::Map)
            .unwrap();
        tx.put(&o, "type", "task").unwrap();
        tx.put_object(&objects, "../x", ObjType::Map).unwrap();
        tx.commit();
        let root = read_root(&doc).unwrap();
        assert_eq!(root.space, space);
        assert_eq!(
            root.objects.into_iter().collect::<Vec<_>>(),
            vec![("2j9knpCseyhnK8izDmLpGP5WMdZQ".into(), "task".into())]
        );
        assert!(read_root(&Automerge::new()).is_none());
    }

    #[test]
    fn queries_match_type_and_props() {
        let o = serde_json::json!({"type": "task", "props": {"done": false, "title": "a"}});
        assert!(matches(&o, "task", &[]));
        assert!(matches(&o, "task", &[("done".into(), "false".into())]));
        assert!(matches(&o, "task", &[("title".into(), "a".into())]));
        assert!(!matches(&o, "task", &[("title".into(), "b".into())]));
        assert!(!matches(&o, "note", &[]));
    }
}
