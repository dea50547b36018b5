//! Zone transfers to the secondaries in `dns.secondaries` (pure): AXFR (RFC 5936), IXFR
//! (RFC 1995) from a journal of the last serial steps (the whole zone when the journal does
//! not reach the asked serial, as §4 allows), and NOTIFY (RFC 1996), every message
//! authenticated with TSIG (RFC 8945).
//!
//! A transfer is given only to a listed secondary's address, and only when the request is
//! signed with that secondary's key within the key's time window; anything else is
//! refused (REFUSED unsigned, or NOTAUTH with the TSIG error RFC 8945 §5.2 names).

use std::net::IpAddr;

use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigAlgorithm, TsigError, make_tsig_record};
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType};
use hickory_proto::rr::{TSigResponseContext, TSigner};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::zone::Zone;

/// Seconds a signed message's time may be off ours (RFC 8945 §10 recommends 300).
pub const FUDGE: u16 = 300;
/// Bytes of records per transfer message before a new one starts (well under the 64 KiB a
/// TCP message may hold, as other servers do).
const MESSAGE_BYTES: usize = 16 << 10;

/// The keys of `dns.tsig_keys`.
#[derive(Clone, Default)]
pub struct Keys {
    signers: Vec<TSigner>,
}

/// The algorithm named in config (`hmac-sha256`, `hmac-sha384`, `hmac-sha512`).
pub fn algorithm(name: &str) -> Option<TsigAlgorithm> {
    match name.to_ascii_lowercase().as_str() {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

/// A key's secret: base64 of at least 16 bytes.
pub fn secret(b64: &str) -> Result<Vec<u8>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if bytes.len() < 16 {
        return Err(format!(
            "{} bytes; a TSIG secret needs at least 16 (make one with `openssl rand -base64 32`)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A key's name as a DNS name.
pub fn key_name(name: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map(|n| n.to_lowercase())
        .map_err(|e| format!("not a DNS name: {e}"))
}

impl Keys {
    /// The keys, or why one is not usable (config names the key).
    pub fn new(keys: &[config::TsigKey]) -> Result<Keys, (usize, &'static str, String)> {
        let mut signers = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let name = key_name(&k.name).map_err(|e| (i, "name", e))?;
            let alg = algorithm(&k.algorithm).ok_or((
                i,
                "algorithm",
                format!(
                    "{:?} is not one of hmac-sha256, hmac-sha384, hmac-sha512",
                    k.algorithm
                ),
            ))?;
            let secret = secret(&k.secret).map_err(|e| (i, "secret", e))?;
            let signer = TSigner::new(secret, alg, name, FUDGE)
                .map_err(|e| (i, "algorithm", e.to_string()))?;
            if signers
                .iter()
                .any(|s: &TSigner| s.signer_name() == signer.signer_name())
            {
                return Err((i, "name", "another key has this name".into()));
            }
            signers.push(signer);
        }
        Ok(Keys { signers })
    }

    pub fn get(&self, name: &Name) -> Option<&TSigner> {
        let name = name.to_lowercase();
        self.signers.iter().find(|s| *s.signer_name() == name)
    }
}

/// A secondary as transfers need it: where it may ask from, and its key.
#[derive(Clone, Debug)]
pub struct Allowed {
    pub ip: IpAddr,
    pub key: Name,
}

/// What KUBE does with a packet that asks for a transfer.
#[derive(Debug, PartialEq)]
pub enum Transfer {
    /// Not a transfer request for this zone: answered as any other query.
    NotOne,
    /// The zone, in messages to send in order.
    Zone(Vec<Vec<u8>>),
    /// A refusal (REFUSED or NOTAUTH, signed when the key is known).
    Refused(Vec<u8>, &'static str),
}

/// Whether `packet` is a query for a zone transfer (AXFR or IXFR), of any zone.
pub fn asks(packet: &[u8]) -> bool {
    Message::from_vec(packet).is_ok_and(|m| {
        m.queries
            .iter()
            .any(|q| matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR))
    })
}

/// Answers an AXFR or IXFR request `packet` from `peer` for `zone`, at Unix time `now`.
pub fn transfer(
    zone: &Zone,
    journal: &Journal,
    packet: &[u8],
    peer: IpAddr,
    allowed: &[Allowed],
    keys: &Keys,
    now: u64,
) -> Transfer {
    let Ok(req) = Message::from_vec(packet) else {
        return Transfer::NotOne;
    };
    let [query] = req.queries.as_slice() else {
        return Transfer::NotOne;
    };
    let is_transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
    if req.metadata.message_type != MessageType::Query
        || req.metadata.op_code != OpCode::Query
        || !is_transfer
        || LowerName::new(query.name()) != *zone.origin()
        || query.query_class() != DNSClass::IN
    {
        return Transfer::NotOne;
    }
    let id = req.metadata.id;
    let refuse = |code: ResponseCode, tsig: Option<TSigResponseContext>, why| {
        let mut resp = Message::response(id, OpCode::Query);
        resp.add_query(query.clone());
        resp.metadata.response_code = code;
        Transfer::Refused(sign(resp, tsig).unwrap_or_default(), why)
    };
    let Some(sig) = &req.signature else {
        return refuse(ResponseCode::Refused, None, "unsigned");
    };
    let (signer, request_mac) = match check_signed(packet, id, &sig.name, |n| keys.get(n), now) {
        Checked::Valid { signer, mac } => (signer, mac),
        Checked::Invalid(ctx, why) => return refuse(ResponseCode::NotAuth, Some(ctx), why),
    };
    let listed = allowed
        .iter()
        .any(|a| a.ip == peer && a.key == *signer.signer_name());
    if !listed {
        let ctx = TSigResponseContext::new(id, now, signer.clone(), request_mac, None);
        return refuse(ResponseCode::Refused, Some(ctx), "not a listed secondary");
    }
    // An IXFR names the serial the secondary has in its authority section's SOA.
    let theirs = req.authorities.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(s) => Some(s.serial),
        _ => None,
    });
    let records = transfer_records(zone, journal, query, theirs);
    if zone.is_pending() {
        // A secondary with nothing transferred (or an expired zone) has nothing to give.
        let ctx = TSigResponseContext::new(id, now, signer.clone(), request_mac, None);
        return refuse(ResponseCode::ServFail, Some(ctx), "no zone to transfer yet");
    }
    match zone_messages(records, id, query, signer, request_mac, now) {
        Ok(m) => Transfer::Zone(m),
        Err(_) => refuse(ResponseCode::ServFail, None, "encoding"),
    }
}

/// The answer to a TSIG-signed query (an SOA query from a secondary, say): signed with
/// the query's key when the query verifies (RFC 8945 §5.3), else NOTAUTH with the TSIG
/// error (§5.2). `answer` is the unsigned answer, `key` the key the query names.
pub fn sign_answer(
    packet: &[u8],
    mut answer: Message,
    key: &Name,
    keys: &Keys,
    now: u64,
) -> Option<Vec<u8>> {
    let id = answer.metadata.id;
    let ctx = match check_signed(packet, id, key, |n| keys.get(n), now) {
        Checked::Valid { signer, mac } => {
            TSigResponseContext::new(id, now, signer.clone(), mac, None)
        }
        Checked::Invalid(ctx, _) => {
            answer.metadata.response_code = ResponseCode::NotAuth;
            strip(&mut answer);
            ctx
        }
    };
    sign(answer, Some(ctx))
}

/// A TSIG-signed request (`packet`, id `id`, naming key `key`) as RFC 8945 §5.2 checks it.
pub(super) enum Checked<'k> {
    /// Verified and within its time window: the answer is signed over `mac` with `signer`.
    Valid { signer: &'k TSigner, mac: Vec<u8> },
    /// Not: the answer is NOTAUTH, signed with this context (the TSIG error), and why.
    Invalid(TSigResponseContext, &'static str),
}

/// Checks a signed request: `find` gives the key of that name, if it is one KUBE knows.
pub(super) fn check_signed<'k>(
    packet: &[u8],
    id: u16,
    key: &Name,
    find: impl Fn(&Name) -> Option<&'k TSigner>,
    now: u64,
) -> Checked<'k> {
    let Some(signer) = find(key) else {
        return Checked::Invalid(
            TSigResponseContext::unknown_key(id, now, key.clone()),
            "unknown key",
        );
    };
    match signer.verify_message_byte(packet, None, true) {
        Err(_) => Checked::Invalid(
            TSigResponseContext::bad_signature(id, now, signer.clone()),
            "bad signature",
        ),
        Ok((mac, _, window)) if !window.contains(&now) => Checked::Invalid(
            TSigResponseContext::new(id, now, signer.clone(), mac, Some(TsigError::BadTime)),
            "time outside the window",
        ),
        Ok((mac, _, _)) => Checked::Valid { signer, mac },
    }
}

/// A refusal carries no records.
fn strip(m: &mut Message) {
    m.answers.clear();
    m.authorities.clear();
    m.additionals.clear();
}

pub(super) fn sign(mut msg: Message, ctx: Option<TSigResponseContext>) -> Option<Vec<u8>> {
    if let Some(ctx) = ctx {
        let unsigned = msg.to_vec().ok()?;
        msg.set_signature(ctx.sign(&unsigned).ok()?);
    }
    msg.to_vec().ok()
}

/// Changes between the zones published, for IXFR (RFC 1995): the last [`JOURNAL_STEPS`]
/// serial steps, each the records it removed and added. Kept in memory: after a restart
/// (which publishes a new serial) a secondary takes the whole zone once.
#[derive(Debug, Default)]
pub struct Journal {
    steps: std::collections::VecDeque<Step>,
}

/// One serial step of the journal.
#[derive(Debug)]
struct Step {
    from: Record,
    to: Record,
    removed: Vec<Record>,
    added: Vec<Record>,
}

/// Steps the journal keeps, and records in all of them (beyond either, the oldest go).
pub const JOURNAL_STEPS: usize = 64;
const JOURNAL_RECORDS: usize = 20_000;

fn serial_of(soa: &Record) -> u32 {
    match &soa.data {
        hickory_proto::rr::RData::SOA(s) => s.serial,
        _ => 0,
    }
}

impl Journal {
    /// Notes the step from `old` to `new` (zones of the same origin).
    pub fn record(&mut self, old: &Zone, new: &Zone) {
        if old.is_pending() || new.is_pending() || old.origin() != new.origin() {
            self.steps.clear();
            return;
        }
        let key = |r: &Record| {
            (
                r.name.to_lowercase(),
                r.record_type(),
                r.ttl,
                r.data.to_string(),
            )
        };
        let plain = |z: &Zone| -> std::collections::HashMap<_, Record> {
            z.records()
                .filter(|r| r.record_type() != RecordType::SOA)
                .map(|r| (key(r), r.clone()))
                .collect()
        };
        let (before, after) = (plain(old), plain(new));
        let removed = before
            .iter()
            .filter(|(k, _)| !after.contains_key(*k))
            .map(|(_, r)| r.clone())
            .collect();
        let added = after
            .iter()
            .filter(|(k, _)| !before.contains_key(*k))
            .map(|(_, r)| r.clone())
            .collect();
        self.steps.push_back(Step {
            from: old.soa().clone(),
            to: new.soa().clone(),
            removed,
            added,
        });
        let size = |j: &Journal| -> usize {
            j.steps
                .iter()
                .map(|s| s.removed.len() + s.added.len())
                .sum()
        };
        while self.steps.len() > JOURNAL_STEPS
            || (self.steps.len() > 1 && size(self) > JOURNAL_RECORDS)
        {
            self.steps.pop_front();
        }
    }

    /// Forgets every step.
    pub fn clear(&mut self) {
        self.steps.clear();
    }

    /// The steps from serial `from` to `to`, if the journal holds all of them.
    fn since(&self, from: u32, to: u32) -> Option<Vec<&Step>> {
        let start = self.steps.iter().position(|s| serial_of(&s.from) == from)?;
        let mut out = Vec::new();
        let mut at = from;
        for s in self.steps.iter().skip(start) {
            if serial_of(&s.from) != at {
                return None;
            }
            out.push(s);
            at = serial_of(&s.to);
            if at == to {
                return Some(out);
            }
        }
        None
    }
}

/// The records answering a transfer: for an IXFR whose serial the journal reaches, the
/// differences (RFC 1995 §4: the new SOA, then per step the old SOA, what it removed, the
/// new SOA, what it added, and the new SOA to close); for an IXFR already current, the
/// SOA alone; otherwise the whole zone (the SOA, every other record, the SOA again, RFC
/// 5936 §2.2), which RFC 1995 allows as an IXFR answer too.
fn transfer_records<'a>(
    zone: &'a Zone,
    journal: &'a Journal,
    query: &Query,
    theirs: Option<u32>,
) -> Vec<&'a Record> {
    let current = zone.serial();
    if query.query_type() == RecordType::IXFR
        && let Some(theirs) = theirs
    {
        if theirs == current {
            return vec![zone.soa()];
        }
        if let Some(steps) = journal.since(theirs, current) {
            let mut out = vec![zone.soa()];
            for s in steps {
                out.push(&s.from);
                out.extend(s.removed.iter());
                out.push(&s.to);
                out.extend(s.added.iter());
            }
            out.push(zone.soa());
            return out;
        }
    }
    std::iter::once(zone.soa())
        .chain(
            zone.records()
                .filter(|r| r.record_type() != RecordType::SOA),
        )
        .chain(std::iter::once(zone.soa()))
        .collect()
}

/// `records` as transfer messages of about [`MESSAGE_BYTES`] each. The first is signed
/// over the request's MAC, each later one over the previous message's MAC with the TSIG
/// timers only (RFC 8945 §5.3.1).
fn zone_messages(
    records: Vec<&Record>,
    id: u16,
    query: &Query,
    signer: &TSigner,
    request_mac: Vec<u8>,
    now: u64,
) -> Result<Vec<Vec<u8>>, hickory_proto::ProtoError> {
    let mut groups: Vec<Vec<&Record>> = vec![Vec::new()];
    let mut size = 0;
    for r in records {
        let n = r.to_bytes()?.len();
        if size + n > MESSAGE_BYTES && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        if let Some(g) = groups.last_mut() {
            g.push(r);
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut previous_mac = request_mac;
    for (i, group) in groups.into_iter().enumerate() {
        let mut msg = Message::response(id, OpCode::Query);
        msg.metadata.authoritative = true;
        if i == 0 {
            msg.add_query(query.clone());
        }
        msg.add_answers(group.into_iter().cloned());
        let unsigned = msg.to_vec()?;
        let (tsig, mac) = if i == 0 {
            let ctx = TSigResponseContext::new(id, now, signer.clone(), previous_mac, None);
            let rec = ctx.sign(&unsigned)?;
            let mac = rec.data.mac.clone();
            (rec, mac)
        } else {
            let stub = TSIG::new(
                signer.algorithm().clone(),
                now,
                signer.fudge(),
                Vec::new(),
                id,
                None,
                Vec::new(),
            );
            let mut tbs = Vec::with_capacity(previous_mac.len() + unsigned.len() + 10);
            {
                let mut e = BinEncoder::new(&mut tbs);
                e.emit_u16(previous_mac.len() as u16)?;
                e.emit_vec(&previous_mac)?;
                e.emit_vec(&unsigned)?;
                // TSIG timers: time signed (48 bits), then fudge.
                e.emit_u16((now >> 32) as u16)?;
                e.emit_u32(now as u32)?;
                e.emit_u16(signer.fudge())?;
            }
            let mac = signer
                .sign(&tbs)
                .map_err(|e| hickory_proto::ProtoError::from(e.to_string()))?;
            let rec = make_tsig_record(signer.signer_name().clone(), stub.set_mac(mac.clone()));
            (Box::new(rec), mac)
        };
        msg.set_signature(tsig);
        out.push(msg.to_vec()?);
        previous_mac = mac;
    }
    Ok(out)
}

/// A NOTIFY for `zone` (its SOA in the answer, RFC 1996 §3.7), signed with `signer`.
pub fn notify(zone: &Zone, id: u16, signer: &TSigner, now: u64) -> Option<Vec<u8>> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.op_code = OpCode::Notify;
    msg.metadata.authoritative = true;
    let mut q = Query::query(Name::from(zone.origin().clone()), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.add_answer(zone.soa().clone());
    msg.finalize(signer, now).ok()?;
    msg.to_vec().ok()
}

/// A plain query for the SOA of `origin` (a secondary's serial, asked before DNS-01).
pub fn soa_query(origin: &Name, id: u16) -> Option<Vec<u8>> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    let mut q = Query::query(origin.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.to_vec().ok()
}

/// The serial in an answer to [`soa_query`] `id` for `origin`.
pub fn soa_serial(packet: &[u8], id: u16, origin: &Name) -> Option<u32> {
    let m = Message::from_vec(packet).ok()?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    m.answers.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(s) if r.name.to_lowercase() == origin.to_lowercase() => {
            Some(s.serial)
        }
        _ => None,
    })
}

/// Whether `packet` acknowledges the NOTIFY `id`.
pub fn notify_acknowledged(packet: &[u8], id: u16) -> bool {
    Message::from_vec(packet).is_ok_and(|m| {
        m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
            && m.metadata.op_code == OpCode::Notify
            && m.metadata.response_code == ResponseCode::NoError
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dns::zone::ZoneInput;

    /// `example.test` with `extra` TXT records of 200 bytes, at `serial`.
    pub(crate) fn zone_at(extra: usize, serial: u32) -> Zone {
        let mut section = config::Dns::default();
        for i in 0..extra {
            section.records.push(config::DnsRecord {
                name: format!("r{i}"),
                kind: "TXT".into(),
                value: format!("\"{}\"", "t".repeat(200)),
                ttl: None,
            });
        }
        Zone::build(&ZoneInput {
            domain: "example.test",
            section: &section,
            apps: &[],
            runtime: &[],
            serial,
        })
        .unwrap()
    }

    fn zone(extra: usize) -> Zone {
        zone_at(extra, 7)
    }

    /// The key `xfr` with a secret of 32 bytes of `secret`.
    pub(crate) fn keys_with(secret: u8) -> Keys {
        Keys::new(&[config::TsigKey {
            name: "xfr".into(),
            algorithm: "hmac-sha256".into(),
            secret: base64::engine::general_purpose::STANDARD.encode([secret; 32]),
        }])
        .unwrap()
    }

    fn keys() -> Keys {
        keys_with(7)
    }

    fn request(signer: Option<&TSigner>, now: u64) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 42;
        msg.add_query(Query::query(
            Name::from_ascii("example.test.").unwrap(),
            RecordType::AXFR,
        ));
        if let Some(s) = signer {
            msg.finalize(s, now).unwrap();
        }
        msg.to_vec().unwrap()
    }

    pub(crate) const NOW: u64 = 1_800_000_000;
    pub(crate) const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// The one secondary: loopback, key `xfr`.
    pub(crate) fn allowed() -> Vec<Allowed> {
        vec![Allowed {
            ip: PEER,
            key: key_name("xfr").unwrap(),
        }]
    }

    fn rcode(bytes: &[u8]) -> ResponseCode {
        Message::from_vec(bytes).unwrap().metadata.response_code
    }

    #[test]
    fn a_signed_request_from_a_listed_secondary_gets_the_zone_in_a_verified_chain() {
        let z = zone(300); // about 70 KiB of TXT records: several messages
        let k = keys();
        let signer = k.get(&key_name("xfr").unwrap()).unwrap().clone();
        let req = request(Some(&signer), NOW);
        let Transfer::Zone(msgs) =
            transfer(&z, &Journal::default(), &req, PEER, &allowed(), &k, NOW)
        else {
            panic!("refused")
        };
        assert!(msgs.len() > 2, "{} messages", msgs.len());
        // The chain verifies as a client does (hickory's verifier checks every message).
        let (_, verifier) = {
            let mut m = Message::from_vec(&req).unwrap();
            m.signature = None;
            signer.sign_message(&m, NOW).unwrap()
        };
        let mut verifier = verifier.unwrap();
        let mut records = Vec::new();
        for m in &msgs {
            let resp = verifier.verify(m).expect("each message verifies");
            records.extend(resp.answers.clone());
        }
        assert_eq!(records.first().unwrap().record_type(), RecordType::SOA);
        assert_eq!(records.last().unwrap().record_type(), RecordType::SOA);
        assert_eq!(records.len(), z.record_count() + 1);
    }

    #[test]
    fn unsigned_unknown_forged_stale_or_unlisted_requests_are_refused() {
        let z = zone(0);
        let k = keys();
        let signer = k.get(&key_name("xfr").unwrap()).unwrap().clone();
        // The request from `from`, which must be refused: its rcode and why.
        let refused = |req: &[u8], from: IpAddr| match transfer(
            &z,
            &Journal::default(),
            req,
            from,
            &allowed(),
            &k,
            NOW,
        ) {
            Transfer::Refused(bytes, why) => (rcode(&bytes), why),
            other => panic!("not refused: {other:?}"),
        };
        // A key of this name with a secret the server does not have.
        let stranger = |name: &str| {
            TSigner::new(
                vec![1; 32],
                TsigAlgorithm::HmacSha256,
                key_name(name).unwrap(),
                FUDGE,
            )
            .unwrap()
        };
        assert_eq!(
            refused(&request(None, NOW), PEER),
            (ResponseCode::Refused, "unsigned")
        );
        assert_eq!(
            refused(&request(Some(&stranger("other")), NOW), PEER).0,
            ResponseCode::NotAuth
        );
        assert_eq!(
            refused(&request(Some(&stranger("xfr")), NOW), PEER),
            (ResponseCode::NotAuth, "bad signature")
        );
        assert_eq!(
            refused(&request(Some(&signer), NOW - 1000), PEER),
            (ResponseCode::NotAuth, "time outside the window")
        );
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            refused(&request(Some(&signer), NOW), elsewhere),
            (ResponseCode::Refused, "not a listed secondary")
        );
        // Garbage and plain queries are not transfers.
        assert_eq!(
            transfer(
                &z,
                &Journal::default(),
                b"\x00\x01garbage",
                PEER,
                &allowed(),
                &k,
                NOW
            ),
            Transfer::NotOne
        );
    }

    #[test]
    fn a_notify_is_signed_and_its_answer_recognised() {
        let z = zone(0);
        let k = keys();
        let signer = k.get(&key_name("xfr").unwrap()).unwrap();
        let n = notify(&z, 9, signer, NOW).unwrap();
        let (mac, _, _) = signer.verify_message_byte(&n, None, true).unwrap();
        assert!(!mac.is_empty());
        let m = Message::from_vec(&n).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        let mut ack = Message::response(9, OpCode::Notify);
        ack.add_query(m.queries[0].clone());
        assert!(notify_acknowledged(&ack.to_vec().unwrap(), 9));
        assert!(!notify_acknowledged(&ack.to_vec().unwrap(), 10));
    }

    fn versions() -> Vec<Zone> {
        let build = |records: &[(&str, &str)], serial| {
            let mut section = config::Dns::default();
            for (name, value) in records {
                section.records.push(config::DnsRecord {
                    name: (*name).into(),
                    kind: "A".into(),
                    value: (*value).into(),
                    ttl: None,
                });
            }
            Zone::build(&ZoneInput {
                domain: "example.test",
                section: &section,
                apps: &[],
                runtime: &[],
                serial,
            })
            .unwrap()
        };
        vec![
            build(&[("a", "192.0.2.1")], 10),
            build(&[("a", "192.0.2.1"), ("b", "192.0.2.2")], 11),
            build(&[("b", "192.0.2.2")], 12),
        ]
    }

    fn ixfr(signer: &TSigner, serial: u32) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 43;
        msg.add_query(Query::query(
            Name::from_ascii("example.test.").unwrap(),
            RecordType::IXFR,
        ));
        let mut soa = versions()[0].soa().clone();
        if let hickory_proto::rr::RData::SOA(s) = &mut soa.data {
            s.serial = serial;
        }
        msg.add_authority(soa);
        msg.finalize(signer, NOW).unwrap();
        msg.to_vec().unwrap()
    }

    fn answers(msgs: &[Vec<u8>]) -> Vec<String> {
        msgs.iter()
            .flat_map(|m| Message::from_vec(m).unwrap().answers)
            .map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(s) => format!("SOA {}", s.serial),
                d => format!("{} {d}", r.name),
            })
            .collect()
    }

    #[test]
    fn an_ixfr_gets_the_steps_from_its_serial() {
        let v = versions();
        let mut journal = Journal::default();
        journal.record(&v[0], &v[1]);
        journal.record(&v[1], &v[2]);
        let k = keys();
        let signer = k.get(&key_name("xfr").unwrap()).unwrap().clone();
        let got = |serial| {
            let Transfer::Zone(m) = transfer(
                &v[2],
                &journal,
                &ixfr(&signer, serial),
                PEER,
                &allowed(),
                &k,
                NOW,
            ) else {
                panic!("refused")
            };
            answers(&m)
        };
        assert_eq!(
            got(10),
            [
                "SOA 12",
                "SOA 10",
                "SOA 11",
                "b.example.test. 192.0.2.2",
                "SOA 11",
                "a.example.test. 192.0.2.1",
                "SOA 12",
                "SOA 12"
            ]
        );
        assert_eq!(
            got(11),
            [
                "SOA 12",
                "SOA 11",
                "a.example.test. 192.0.2.1",
                "SOA 12",
                "SOA 12"
            ]
        );
        assert_eq!(got(12), ["SOA 12"], "already current: the SOA alone");
        let whole = got(5);
        assert_eq!(whole.first().map(String::as_str), Some("SOA 12"));
        assert_eq!(
            whole.len(),
            v[2].record_count() + 1,
            "not in the journal: the whole zone"
        );
    }

    #[test]
    fn a_secondary_with_no_zone_yet_transfers_nothing() {
        let k = keys();
        let signer = k.get(&key_name("xfr").unwrap()).unwrap().clone();
        let pending = Zone::pending(&Name::from_ascii("example.test.").unwrap());
        let t = transfer(
            &pending,
            &Journal::default(),
            &request(Some(&signer), NOW),
            PEER,
            &allowed(),
            &k,
            NOW,
        );
        let Transfer::Refused(bytes, why) = t else {
            panic!("transferred a pending zone")
        };
        assert_eq!(why, "no zone to transfer yet");
        assert_eq!(
            Message::from_vec(&bytes).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }

    #[test]
    fn the_journal_keeps_the_last_steps() {
        let v = versions();
        let mut journal = Journal::default();
        for _ in 0..JOURNAL_STEPS + 10 {
            journal.record(&v[0], &v[1]);
        }
        assert_eq!(journal.steps.len(), JOURNAL_STEPS);
    }
}
