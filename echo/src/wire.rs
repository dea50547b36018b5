//! automerge-repo's network messages (protocol version "1"): CBOR maps with a `type`, as the
//! JavaScript `cbor-x` encoder writes them (`Uint8Array` as a plain byte string). Decoding is
//! total: any byte string gives a message or an error, never a panic.

use ciborium::Value;

/// A message from a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Join {
        sender: String,
        versions: Vec<String>,
    },
    /// `sync` (or `request`: the sender does not have the document).
    Sync {
        sender: String,
        doc: String,
        data: Vec<u8>,
        request: bool,
    },
    DocUnavailable {
        sender: String,
        doc: String,
    },
    Ephemeral {
        sender: String,
        doc: String,
        session: String,
        count: u64,
        data: Vec<u8>,
    },
    /// Messages KUBE does not act on (remote-heads gossip, subscriptions).
    Ignored {
        sender: String,
        kind: String,
    },
}

impl Incoming {
    pub fn sender(&self) -> &str {
        match self {
            Incoming::Join { sender, .. }
            | Incoming::Sync { sender, .. }
            | Incoming::DocUnavailable { sender, .. }
            | Incoming::Ephemeral { sender, .. }
            | Incoming::Ignored { sender, .. } => sender,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not CBOR: {0}")]
    Cbor(String),
    #[error("not a CBOR map")]
    NotAMap,
    #[error("missing or mistyped field `{0}`")]
    Field(&'static str),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("bad document id")]
    BadDocumentId,
}

/// The largest document id KUBE accepts (automerge-repo's are 16 bytes in base58check, ~28).
const MAX_DOC_ID: usize = 64;

/// Whether `id` is a plausible automerge-repo documentId: base58 characters only, so it is
/// also a safe file name.
pub fn valid_doc_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DOC_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
}

fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn text(map: &[(Value, Value)], key: &'static str) -> Result<String, DecodeError> {
    field(map, key)
        .and_then(Value::as_text)
        .map(str::to_owned)
        .ok_or(DecodeError::Field(key))
}

fn bytes(map: &[(Value, Value)], key: &'static str) -> Result<Vec<u8>, DecodeError> {
    field(map, key)
        .and_then(Value::as_bytes)
        .cloned()
        .ok_or(DecodeError::Field(key))
}

fn doc_id(map: &[(Value, Value)]) -> Result<String, DecodeError> {
    let id = text(map, "documentId")?;
    if valid_doc_id(&id) {
        Ok(id)
    } else {
        Err(DecodeError::BadDocumentId)
    }
}

/// What a frame is about, read without decoding the rest of it: whether it is a `sync` or
/// `request` (which may need the document read), and the documentId it names (`sync`,
/// `request`, `doc-unavailable`, `ephemeral`).
#[derive(Debug, PartialEq)]
pub struct Head {
    pub sync: bool,
    pub doc: String,
}

/// The [`Head`] of a frame that names a valid documentId.
pub fn head(frame: &[u8]) -> Option<Head> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: String,
        #[serde(rename = "documentId")]
        doc: Option<String>,
    }
    let raw: Raw = ciborium::from_reader(frame).ok()?;
    let sync = match raw.kind.as_str() {
        "sync" | "request" => true,
        "doc-unavailable" | "ephemeral" => false,
        _ => return None,
    };
    let doc = raw.doc.filter(|d| valid_doc_id(d))?;
    Some(Head { sync, doc })
}

/// Decodes one frame.
pub fn decode(frame: &[u8]) -> Result<Incoming, DecodeError> {
    let value: Value =
        ciborium::from_reader(frame).map_err(|e| DecodeError::Cbor(e.to_string()))?;
    let Value::Map(map) = value else {
        return Err(DecodeError::NotAMap);
    };
    let kind = text(&map, "type")?;
    let sender = text(&map, "senderId")?;
    Ok(match kind.as_str() {
        "join" => Incoming::Join {
            sender,
            versions: field(&map, "supportedProtocolVersions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_text().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        },
        "sync" | "request" => Incoming::Sync {
            sender,
            doc: doc_id(&map)?,
            data: bytes(&map, "data")?,
            request: kind == "request",
        },
        "doc-unavailable" => Incoming::DocUnavailable {
            sender,
            doc: doc_id(&map)?,
        },
        "ephemeral" => Incoming::Ephemeral {
            sender,
            doc: doc_id(&map)?,
            session: text(&map, "sessionId")?,
            count: field(&map, "count")
                .and_then(|v| v.as_integer())
                .and_then(|i| u64::try_from(i).ok())
                .ok_or(DecodeError::Field("count"))?,
            data: bytes(&map, "data")?,
        },
        // `error` is what a KUBE tells a peer; over a link another KUBE tells it to this one,
        // which logs nothing and acts on its doc-unavailable instead.
        "remote-subscription-change" | "remote-heads-changed" | "error" => {
            Incoming::Ignored { sender, kind }
        }
        _ => return Err(DecodeError::UnknownType(kind)),
    })
}

/// A message to a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing<'a> {
    Peer {
        storage_id: &'a str,
    },
    Sync {
        doc: &'a str,
        data: Vec<u8>,
    },
    DocUnavailable {
        doc: &'a str,
    },
    Ephemeral {
        sender: &'a str,
        doc: &'a str,
        session: &'a str,
        count: u64,
        data: &'a [u8],
    },
    Error {
        message: &'a str,
    },
}

fn t(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The `join` a KUBE sends when it links to another KUBE (as any client joins).
pub fn join(me: &str) -> Vec<u8> {
    let map = vec![
        (t("type"), t("join")),
        (t("senderId"), t(me)),
        (
            t("peerMetadata"),
            Value::Map(vec![(t("isEphemeral"), Value::Bool(false))]),
        ),
        (t("supportedProtocolVersions"), Value::Array(vec![t("1")])),
    ];
    let mut out = Vec::new();
    let _ = ciborium::into_writer(&Value::Map(map), &mut out);
    out
}

/// The sender of a `peer` message addressed to `me` (the answer to [`join`]).
pub fn peer_answer(frame: &[u8], me: &str) -> Option<String> {
    let Value::Map(map) = ciborium::from_reader::<Value, _>(frame).ok()? else {
        return None;
    };
    let is_peer = text(&map, "type").ok()? == "peer";
    let to_me = text(&map, "targetId").ok()? == me;
    let version = field(&map, "selectedProtocolVersion").and_then(Value::as_text) == Some("1");
    (is_peer && to_me && version)
        .then(|| text(&map, "senderId").ok())
        .flatten()
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

/// Encodes `msg` from `me` to `to`.
pub fn encode(me: &str, to: &str, msg: &Outgoing<'_>) -> Vec<u8> {
    let mut map = vec![];
    let mut put = |k: &str, v: Value| map.push((t(k), v));
    match msg {
        Outgoing::Peer { storage_id } => {
            put("type", t("peer"));
            put("senderId", t(me));
            put("targetId", t(to));
            put("selectedProtocolVersion", t("1"));
            put(
                "peerMetadata",
                Value::Map(vec![
                    (t("storageId"), t(storage_id)),
                    (t("isEphemeral"), Value::Bool(false)),
                ]),
            );
        }
        Outgoing::Sync { doc, data } => {
            put("type", t("sync"));
            put("senderId", t(me));
            put("targetId", t(to));
            put("documentId", t(doc));
            put("data", Value::Bytes(data.clone()));
        }
        Outgoing::DocUnavailable { doc } => {
            put("type", t("doc-unavailable"));
            put("senderId", t(me));
            put("targetId", t(to));
            put("documentId", t(doc));
        }
        Outgoing::Ephemeral {
            sender,
            doc,
            session,
            count,
            data,
        } => {
            put("type", t("ephemeral"));
            put("senderId", t(sender));
            put("targetId", t(to));
            put("documentId", t(doc));
            put("sessionId", t(session));
            put("count", Value::Integer((*count).into()));
            put("data", Value::Bytes(data.to_vec()));
        }
        Outgoing::Error { message } => {
            put("type", t("error"));
            put("senderId", t(me));
            put("targetId", t(to));
            put("message", t(message));
        }
    }
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(&Value::Map(map), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(pairs: Vec<(&str, Value)>) -> Vec<u8> {
        let map = pairs.into_iter().map(|(k, v)| (t(k), v)).collect();
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
        out
    }

    #[test]
    fn decodes_what_the_js_client_sends() {
        let join = frame(vec![
            ("type", t("join")),
            ("senderId", t("alice")),
            ("peerMetadata", Value::Map(vec![])),
            ("supportedProtocolVersions", Value::Array(vec![t("1")])),
        ]);
        assert_eq!(
            decode(&join).unwrap(),
            Incoming::Join {
                sender: "alice".into(),
                versions: vec!["1".into()]
            }
        );
        let req = frame(vec![
            ("type", t("request")),
            ("senderId", t("alice")),
            ("targetId", t("kube")),
            ("documentId", t("2j9knpCseyhnK8izDmLpGP5WMdZQ")),
            ("data", Value::Bytes(vec![0x42, 1])),
        ]);
        assert!(
            matches!(decode(&req).unwrap(), Incoming::Sync { request: true, ref data, .. } if data == &[0x42, 1])
        );
    }

    #[test]
    fn a_frames_head_names_its_document_without_the_rest() {
        let req = frame(vec![
            ("type", t("request")),
            ("senderId", t("alice")),
            ("documentId", t("2j9knpCseyhnK8izDmLpGP5WMdZQ")),
            ("data", Value::Bytes(vec![7; 1000])),
        ]);
        assert_eq!(
            head(&req),
            Some(Head {
                sync: true,
                doc: "2j9knpCseyhnK8izDmLpGP5WMdZQ".into()
            })
        );
        let gone = frame(vec![
            ("type", t("doc-unavailable")),
            ("senderId", t("alice")),
            ("documentId", t("2j9knpCseyhnK8izDmLpGP5WMdZQ")),
        ]);
        assert_eq!(head(&gone).map(|h| h.sync), Some(false));
        let join = frame(vec![("type", t("join")), ("senderId", t("alice"))]);
        assert_eq!(head(&join), None);
        let bad = frame(vec![("type", t("sync")), ("documentId", t("../x"))]);
        assert_eq!(head(&bad), None);
        assert_eq!(head(b"\xff\x00"), None);
    }

    #[test]
    fn refuses_bad_frames() {
        assert!(matches!(decode(b"\xff\x00"), Err(DecodeError::Cbor(_))));
        assert_eq!(
            decode(&frame(vec![("type", t("sync"))])),
            Err(DecodeError::Field("senderId"))
        );
        let traversal = frame(vec![
            ("type", t("sync")),
            ("senderId", t("a")),
            ("documentId", t("../../etc")),
            ("data", Value::Bytes(vec![])),
        ]);
        assert_eq!(decode(&traversal), Err(DecodeError::BadDocumentId));
        let unknown = frame(vec![("type", t("boom")), ("senderId", t("a"))]);
        assert_eq!(
            decode(&unknown),
            Err(DecodeError::UnknownType("boom".into()))
        );
        let mut list = Vec::new();
        ciborium::into_writer(&Value::Array(vec![]), &mut list).unwrap();
        assert_eq!(decode(&list), Err(DecodeError::NotAMap));
    }

    #[test]
    fn encodes_what_the_js_client_reads() {
        let bytes = encode(
            "kube",
            "alice",
            &Outgoing::Sync {
                doc: "abc",
                data: vec![1, 2],
            },
        );
        let v: Value = ciborium::from_reader(&bytes[..]).unwrap();
        let map = v.as_map().unwrap();
        assert_eq!(field(map, "type").unwrap().as_text(), Some("sync"));
        assert_eq!(field(map, "targetId").unwrap().as_text(), Some("alice"));
        assert_eq!(
            field(map, "data").unwrap().as_bytes().unwrap().as_slice(),
            &[1, 2]
        );
    }

    proptest! {
        // The decoder is total: arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        // Well-formed CBOR maps with arbitrary (often wrong) fields never panic either, and a
        // decoded sync message always carries a safe document id.
        #[test]
        fn arbitrary_maps_never_panic(
            kind in prop_oneof![Just("join".to_owned()), Just("sync".to_owned()), Just("request".to_owned()), Just("ephemeral".to_owned()), Just("doc-unavailable".to_owned()), ".*"],
            doc in ".{0,80}",
            data in proptest::collection::vec(any::<u8>(), 0..64),
            count in any::<i64>(),
        ) {
            let f = frame(vec![
                ("type", t(&kind)),
                ("senderId", t("p")),
                ("documentId", t(&doc)),
                ("sessionId", t("s")),
                ("count", Value::Integer(count.into())),
                ("data", Value::Bytes(data)),
            ]);
            if let Ok(Incoming::Sync { doc, .. }) = decode(&f) {
                prop_assert!(valid_doc_id(&doc));
                prop_assert!(!doc.contains('/') && !doc.contains('.'));
            }
        }
    }
}
