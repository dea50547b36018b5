//! Answers remembered per zone (pure): a query in its plain form (one question, at most an
//! EDNS OPT record, no name compression) is recognised without a full parse, and the answer
//! computed for the same name, type, class and size limit is sent again with the query's
//! id, RD and CD bits and the exact spelling of its name. A new zone starts an empty cache,
//! so an answer can never outlive the records it came from.

use std::collections::HashMap;
use std::sync::RwLock;

use super::answer::Transport;

/// What makes two plain queries get the same answer (bar id, flags and name case).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The question name in wire form, lowercased.
    name: Vec<u8>,
    qtype: u16,
    qclass: u16,
    edns: bool,
    limit: usize,
}

/// The parts of a plain query an answer is fitted to.
#[derive(Debug)]
pub struct Plain {
    pub key: Key,
    id: [u8; 2],
    rd: bool,
    cd: bool,
    /// The question name as the client spelled it.
    name: Vec<u8>,
}

/// Whether an OPT record's options are ones the full path reads the same way: none, or
/// well-framed DNS COOKIEs (RFC 7873 §4: 8, or 16 to 40 bytes), which `dig` sends by
/// default. Anything else (a malformed option, found by fuzzing) takes the full path, which
/// refuses what it cannot parse instead of answering it from the cache.
fn plain_options(mut rdata: &[u8]) -> bool {
    while !rdata.is_empty() {
        let Some(h) = rdata.get(..4) else {
            return false;
        };
        let (code, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]) as usize,
        );
        if code != 10 || !(len == 8 || (16..=40).contains(&len)) || rdata.len() < 4 + len {
            return false;
        }
        rdata = &rdata[4 + len..];
    }
    true
}

/// Recognises a plain query, or None (the full path handles everything else).
pub fn plain(packet: &[u8], transport: Transport, max_udp: u16) -> Option<Plain> {
    let header = packet.get(..12)?;
    // QR=0, opcode QUERY, TC=0; one question, no answer or authority, at most one additional.
    if header[2] & 0xFA != 0 || header[3] & 0x40 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *packet.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        // A pointer or an extended label type: not plain.
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - 12 > 255 {
            return None;
        }
    }
    let name = packet.get(12..at)?.to_vec();
    let q = packet.get(at..at + 4)?;
    let (qtype, qclass) = (
        u16::from_be_bytes([q[0], q[1]]),
        u16::from_be_bytes([q[2], q[3]]),
    );
    at += 4;
    let mut edns = None;
    if count(10) == 1 {
        // The OPT pseudo-record (RFC 6891 §6.1.2): root owner, type 41, class = payload size,
        // TTL = extended rcode, version, flags.
        let opt = packet.get(at..at + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != 41 || opt[6] != 0 {
            return None;
        }
        let payload = u16::from_be_bytes([opt[3], opt[4]]);
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
        if !plain_options(packet.get(at + 11..at + 11 + rdlen)?) {
            return None;
        }
        at += 11 + rdlen;
        edns = Some(payload);
    }
    if at != packet.len() {
        return None;
    }
    let max_udp = max_udp.max(512);
    let limit = match (transport, edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, Some(p)) => p.clamp(512, max_udp) as usize,
        (Transport::Udp, None) => 512,
    };
    Some(Plain {
        key: Key {
            name: name.to_ascii_lowercase(),
            qtype,
            qclass,
            edns: edns.is_some(),
            limit,
        },
        id: [header[0], header[1]],
        rd: header[2] & 0x01 != 0,
        cd: header[3] & 0x10 != 0,
        name,
    })
}

/// A remembered answer: its encoding, the truncated encoding (for RRL's slip), and the
/// metrics counter it counts under.
#[derive(Debug)]
pub struct Entry<C> {
    full: Vec<u8>,
    truncated: Vec<u8>,
    pub counter: C,
}

impl<C> Entry<C> {
    pub fn new(full: Vec<u8>, truncated: Vec<u8>, counter: C) -> Entry<C> {
        Entry {
            full,
            truncated,
            counter,
        }
    }

    /// The answer for `q`: id, RD, CD and the question's spelling taken from the query.
    pub fn answer(&self, q: &Plain, truncated: bool) -> Vec<u8> {
        let mut out = if truncated {
            self.truncated.clone()
        } else {
            self.full.clone()
        };
        if out.len() >= 12 + q.name.len() {
            out[0] = q.id[0];
            out[1] = q.id[1];
            out[2] = (out[2] & !0x01) | u8::from(q.rd);
            out[3] = (out[3] & !0x10) | if q.cd { 0x10 } else { 0 };
            // The question starts at byte 12 and spells the same name, maybe in other case.
            out[12..12 + q.name.len()].copy_from_slice(&q.name);
        }
        out
    }
}

/// Entries for one zone, bounded: when full it starts over.
#[derive(Debug)]
pub struct Cache<C> {
    entries: RwLock<HashMap<Key, std::sync::Arc<Entry<C>>>>,
}

const MAX_ENTRIES: usize = 16_384;

impl<C> Default for Cache<C> {
    fn default() -> Self {
        Cache {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<C> Cache<C> {
    pub fn get(&self, key: &Key) -> Option<std::sync::Arc<Entry<C>>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn insert(&self, key: Key, entry: Entry<C>) {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if e.len() >= MAX_ENTRIES {
            e.clear();
        }
        e.insert(key, std::sync::Arc::new(entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::answer::answer;
    use crate::dns::zone::{Zone, ZoneInput};
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str, rd: bool, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = rd;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// Found by fuzzing (SECURITY.md, dns-cache-malformed): a query whose EDNS option runs
    /// past its record was answered from the cache though the full path refuses it.
    #[test]
    fn malformed_or_unknown_options_are_not_plain() {
        let head = |rdata: &[u8]| {
            let mut q = vec![0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
            q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
            q.extend_from_slice(&[0, 0, 0x29, 0x04, 0xd0, 0, 0, 0, 0]);
            q.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            q.extend_from_slice(rdata);
            q
        };
        let overrun = [0, 10, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(plain(&head(&overrun), Transport::Udp, 1232).is_none());
        let subnet = [0, 8, 0, 4, 0, 1, 0, 0];
        assert!(plain(&head(&subnet), Transport::Udp, 1232).is_none());
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(plain(&head(&cookie), Transport::Udp, 1232).is_some());
        assert!(plain(&head(&[]), Transport::Udp, 1232).is_some());
    }

    #[test]
    fn a_cached_answer_equals_a_computed_one() {
        let section = config::Dns {
            addresses: vec!["192.0.2.1".parse().unwrap()],
            ..config::Dns::default()
        };
        let zone = Zone::build(&ZoneInput {
            domain: "example.com",
            section: &section,
            apps: &[],
            runtime: &[],
            serial: 1,
        })
        .unwrap();
        let cache: Cache<()> = Cache::default();
        let first = query(1, "app.example.com.", false, Some(4096));
        let p = plain(&first, Transport::Udp, 1232).expect("plain");
        let a = answer(&zone, &first, Transport::Udp, 1232).unwrap();
        cache.insert(
            p.key,
            Entry::new(a.encode().unwrap(), a.encode_truncated().unwrap(), ()),
        );
        for (id, name, rd) in [
            (7, "APP.Example.com.", true),
            (9, "app.example.com.", false),
        ] {
            let q = query(id, name, rd, Some(1400));
            let p = plain(&q, Transport::Udp, 1232).unwrap();
            let hit = cache
                .get(&p.key)
                .expect("same key: payloads clamp to the same limit");
            let computed = answer(&zone, &q, Transport::Udp, 1232)
                .unwrap()
                .encode()
                .unwrap();
            let cached = hit.answer(&p, false);
            // Equal as DNS messages (names compare without case); the cached answer may
            // compress the owner into the question, spelled as the client spelled it.
            assert_eq!(
                Message::from_vec(&cached).unwrap(),
                Message::from_vec(&computed).unwrap(),
                "{name}"
            );
            assert_eq!(
                &cached[12..12 + p.name.len()],
                &q[12..12 + p.name.len()],
                "question spelled as asked"
            );
        }
        let no_edns = plain(
            &query(1, "app.example.com.", false, None),
            Transport::Udp,
            1232,
        )
        .unwrap();
        assert!(
            cache.get(&no_edns.key).is_none(),
            "another limit, another answer"
        );
    }

    #[test]
    fn only_plain_queries() {
        let q = query(1, "example.com.", false, None);
        assert!(plain(&q, Transport::Udp, 1232).is_some());
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(plain(&resp, Transport::Udp, 1232).is_none(), "responses");
        let mut longer = q.clone();
        longer.push(0);
        assert!(
            plain(&longer, Transport::Udp, 1232).is_none(),
            "trailing bytes"
        );
        assert!(
            plain(&q[..q.len() - 1], Transport::Udp, 1232).is_none(),
            "short"
        );
        let mut notify = q.clone();
        notify[2] |= 4 << 3;
        assert!(
            plain(&notify, Transport::Udp, 1232).is_none(),
            "other opcodes"
        );
    }
}
