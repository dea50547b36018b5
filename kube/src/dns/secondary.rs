//! KUBE as a secondary of another primary (`dns.primary`, RFC 5936 and RFC 1996): the
//! pure parts are here (signed queries, the check of each transfer message, serial
//! arithmetic, the NOTIFY check); `follow`, the driver, asks the primary over TCP.
//!
//! Every message is authenticated with the primary's TSIG key (RFC 8945): the SOA answer
//! and every message of a transfer must verify, in order, against the request; a NOTIFY
//! is taken only from the primary's address, signed with that key within the window.
//! What a primary can send is bounded ([`MAX_RECORDS`], [`MAX_MESSAGES`], a deadline).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{
    DNSClass, LowerName, Name, RData, Record, RecordType, TSigResponseContext, TSigVerifier,
    TSigner,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::DnsHandle;
use super::transfer::Checked;
use super::zone::Zone;

/// Most records a transfer may bring (a KUBE zone has a few hundred).
pub const MAX_RECORDS: usize = 200_000;
/// Most messages a transfer may take.
pub const MAX_MESSAGES: usize = 20_000;
/// How long one check of the primary (connect, SOA, transfer) may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the SOA says about keeping the zone (RFC 1035 §3.3.13).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Soa {
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
}

impl Soa {
    pub fn of(r: &Record) -> Option<Soa> {
        match &r.data {
            RData::SOA(s) => Some(Soa {
                serial: s.serial,
                refresh: s.refresh.max(0) as u32,
                retry: s.retry.max(0) as u32,
                expire: s.expire.max(0) as u32,
            }),
            _ => None,
        }
    }
}

/// RFC 1982: whether serial `a` is newer than `b`.
pub fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// A query for `origin`'s `qtype` (SOA or AXFR) signed with `signer`, and the verifier its
/// answer must pass.
pub fn query(
    origin: &Name,
    qtype: RecordType,
    id: u16,
    signer: &TSigner,
    now: u64,
) -> Result<(Vec<u8>, TSigVerifier), String> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    let mut q = Query::query(origin.clone(), qtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    let verifier = msg
        .finalize(signer, now)
        .map_err(|e| e.to_string())?
        .ok_or("the key gives no verifier")?;
    Ok((msg.to_vec().map_err(|e| e.to_string())?, verifier))
}

/// Checks an answer's header: ours, a response, NOERROR.
fn answer_of(verified: &Message, id: u16) -> Result<(), String> {
    if verified.metadata.id != id || verified.metadata.message_type != MessageType::Response {
        return Err("an answer to another question".into());
    }
    match verified.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        code => Err(format!("the primary answered {code}")),
    }
}

/// The SOA in the (verified) answer to a [`query`] for it.
pub fn soa_answer(
    verifier: &mut TSigVerifier,
    bytes: &[u8],
    id: u16,
    origin: &Name,
) -> Result<Soa, String> {
    let resp = verifier
        .verify(bytes)
        .map_err(|e| format!("its SOA answer does not verify: {e}"))?;
    answer_of(&resp, id)?;
    resp.answers
        .iter()
        .find(|r| r.record_type() == RecordType::SOA && r.name.to_lowercase() == *origin)
        .and_then(Soa::of)
        .ok_or_else(|| format!("no SOA for {origin} in its answer"))
}

/// An AXFR being received: every message verified in order, the records gathered from the
/// SOA until it comes again.
pub struct Axfr {
    verifier: TSigVerifier,
    id: u16,
    origin: Name,
    records: Vec<Record>,
    messages: usize,
}

impl Axfr {
    pub fn new(verifier: TSigVerifier, id: u16, origin: Name) -> Axfr {
        Axfr {
            verifier,
            id,
            origin,
            records: Vec::new(),
            messages: 0,
        }
    }

    /// Takes the next message; the zone's records (the SOA first, not again at the end)
    /// once it is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Vec<Record>>, String> {
        self.messages += 1;
        if self.messages > MAX_MESSAGES {
            return Err(format!("a transfer of more than {MAX_MESSAGES} messages"));
        }
        let resp = self
            .verifier
            .verify(bytes)
            .map_err(|e| format!("transfer message {} does not verify: {e}", self.messages))?;
        answer_of(&resp, self.id)?;
        let n = resp.answers.len();
        for (i, r) in resp.answers.iter().enumerate() {
            let is_soa = r.record_type() == RecordType::SOA;
            if self.records.is_empty() {
                if !is_soa || r.name.to_lowercase() != self.origin {
                    return Err(format!(
                        "the transfer does not begin with {}'s SOA",
                        self.origin
                    ));
                }
            } else if is_soa {
                // The closing SOA (RFC 5936 §2.2): the same serial, and nothing after it.
                let first = self.records.first().and_then(Soa::of).map(|s| s.serial);
                if Soa::of(r).map(|s| s.serial) != first || i + 1 != n {
                    return Err("the zone changed during the transfer".into());
                }
                return Ok(Some(std::mem::take(&mut self.records)));
            }
            if self.records.len() >= MAX_RECORDS {
                return Err(format!("a zone of more than {MAX_RECORDS} records"));
            }
            self.records.push(r.clone());
        }
        Ok(None)
    }
}

/// What to do with a packet that may be a NOTIFY (RFC 1996).
#[derive(Debug, PartialEq)]
pub enum Notified {
    /// Not a NOTIFY: answered as any query.
    NotOne,
    /// The primary's NOTIFY for the zone: this acknowledgement goes back (signed), and the
    /// serial is checked now.
    Accept(Vec<u8>),
    /// Anyone else's: refused (NOTAUTH, signed, when the key is ours but the signature or
    /// the time is wrong).
    Refuse(Vec<u8>, &'static str),
}

/// Checks a NOTIFY from `peer` against the primary's address and key.
pub fn notified(
    packet: &[u8],
    peer: IpAddr,
    primary: IpAddr,
    origin: &Name,
    signer: &TSigner,
    now: u64,
) -> Notified {
    let Ok(req) = Message::from_vec(packet) else {
        return Notified::NotOne;
    };
    if req.metadata.op_code != OpCode::Notify || req.metadata.message_type != MessageType::Query {
        return Notified::NotOne;
    }
    let id = req.metadata.id;
    let reply = |code: ResponseCode, ctx: Option<TSigResponseContext>| {
        let mut resp = Message::response(id, OpCode::Notify);
        resp.metadata.authoritative = true;
        resp.add_queries(req.queries.iter().cloned());
        resp.metadata.response_code = code;
        super::transfer::sign(resp, ctx).unwrap_or_default()
    };
    let for_zone =
        matches!(req.queries.as_slice(), [q] if LowerName::new(q.name()) == LowerName::new(origin));
    if !for_zone {
        return Notified::Refuse(reply(ResponseCode::Refused, None), "another zone");
    }
    if peer != primary {
        return Notified::Refuse(reply(ResponseCode::Refused, None), "not the primary");
    }
    let Some(sig) = &req.signature else {
        return Notified::Refuse(reply(ResponseCode::Refused, None), "unsigned");
    };
    // Only the primary's key is known here.
    let find = |n: &Name| (n.to_lowercase() == *signer.signer_name()).then_some(signer);
    match super::transfer::check_signed(packet, id, &sig.name, find, now) {
        Checked::Valid { signer, mac } => {
            let ctx = TSigResponseContext::new(id, now, signer.clone(), mac, None);
            Notified::Accept(reply(ResponseCode::NoError, Some(ctx)))
        }
        Checked::Invalid(ctx, why) => {
            Notified::Refuse(reply(ResponseCode::NotAuth, Some(ctx)), why)
        }
    }
}

/// Where and how this KUBE follows its primary.
#[derive(Clone)]
pub struct Follow {
    pub primary: SocketAddr,
    pub signer: TSigner,
    pub origin: Name,
}

/// Follows the primary: checks its serial now, then every SOA refresh (5 s to an hour)
/// and whenever `kick` fires (a verified NOTIFY); transfers the zone when the serial is
/// newer. A check that fails is tried again 1, 2, 4… s later (up to the SOA retry); once
/// no check has succeeded for the SOA expire, the zone is withdrawn (SERVFAIL) until one
/// does.
pub async fn follow(
    dns: DnsHandle,
    f: Follow,
    kick: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = 1u64;
    // The expire counts from the last successful check, across restarts.
    let mut last_ok = dns
        .since_checked()
        .and_then(|ago| Instant::now().checked_sub(ago))
        .unwrap_or_else(Instant::now);
    loop {
        let zone = dns.zone();
        let ours = (!zone.is_pending()).then(|| zone.serial());
        let kept = Soa::of(zone.soa()).filter(|_| ours.is_some());
        let checked = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(DEADLINE, check(&dns, &f, ours)) => {
                r.unwrap_or_else(|_| Err("the primary took too long".into()))
            }
        };
        let wait = match checked {
            Ok(soa) => {
                backoff = 1;
                last_ok = Instant::now();
                dns.checked();
                Duration::from_secs(u64::from(soa.refresh).clamp(5, 3600))
            }
            Err(e) => {
                tracing::warn!(primary = %f.primary, error = %e, "dns: checking the primary failed");
                if let Some(k) = kept
                    && last_ok.elapsed() > Duration::from_secs(u64::from(k.expire).max(60))
                {
                    tracing::error!(primary = %f.primary, "dns: the zone expired (no check succeeded for the SOA expire); answering SERVFAIL");
                    dns.withdraw(&f.origin);
                }
                let cap = kept.map_or(60, |k| u64::from(k.retry).clamp(1, 900));
                let w = backoff.min(cap);
                backoff = (backoff * 2).min(cap);
                Duration::from_secs(w)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = kick.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One check: the primary's SOA, and the zone when its serial is newer than `ours`.
async fn check(dns: &DnsHandle, f: &Follow, ours: Option<u32>) -> Result<Soa, String> {
    let mut s = TcpStream::connect(f.primary)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let now = crate::service::unix_now();
    let id = rand::random::<u16>();
    let (q, mut verifier) = query(&f.origin, RecordType::SOA, id, &f.signer, now)?;
    send(&mut s, &q).await?;
    let soa = soa_answer(&mut verifier, &receive(&mut s).await?, id, &f.origin)?;
    if ours.is_some_and(|o| !newer(soa.serial, o)) {
        return Ok(soa);
    }
    let id = rand::random::<u16>();
    let (q, verifier) = query(&f.origin, RecordType::AXFR, id, &f.signer, now)?;
    send(&mut s, &q).await?;
    let mut axfr = Axfr::new(verifier, id, f.origin.clone());
    let records = loop {
        if let Some(records) = axfr.feed(&receive(&mut s).await?)? {
            break records;
        }
    };
    let zone = Zone::transferred(&f.origin, records)?;
    let got = Soa::of(zone.soa()).ok_or("no SOA")?;
    let count = zone.record_count();
    dns.take_transfer(zone).map_err(|e| e.to_string())?;
    tracing::info!(primary = %f.primary, serial = got.serial, records = count, "dns: zone transferred from the primary");
    Ok(got)
}

async fn send(s: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    let len = u16::try_from(bytes.len()).map_err(|_| "a query over 64 KiB")?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed)
        .await
        .map_err(|e| format!("write: {e}"))
}

async fn receive(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::transfer::tests::{NOW, PEER, allowed, keys_with, zone_at};
    use crate::dns::transfer::{self, Keys, Transfer, key_name};

    fn keys(secret: u8) -> Keys {
        keys_with(secret)
    }

    fn signer(k: &Keys) -> TSigner {
        k.get(&key_name("xfr").unwrap()).unwrap().clone()
    }

    fn zone(extra: usize, serial: u32) -> Zone {
        zone_at(extra, serial)
    }

    fn origin() -> Name {
        Name::from_ascii("example.test.").unwrap()
    }

    /// What KUBE as a primary answers the transfer request `q` with.
    fn transferred(primary: &Zone, q: &[u8], k: &Keys) -> Vec<Vec<u8>> {
        let t = transfer::transfer(
            primary,
            &transfer::Journal::default(),
            q,
            PEER,
            &allowed(),
            k,
            NOW,
        );
        let Transfer::Zone(msgs) = t else {
            panic!("refused: {t:?}")
        };
        msgs
    }

    #[test]
    fn serials_compare_in_sequence_space() {
        assert!(newer(2, 1));
        assert!(!newer(1, 1));
        assert!(!newer(1, 2));
        assert!(newer(0, u32::MAX), "wraps");
        assert!(!newer(0x8000_0001, 1));
    }

    #[test]
    fn a_transfer_from_kube_is_taken_whole_and_verified() {
        let k = keys(7);
        let primary = zone(300, 9);
        let (q, verifier) = query(&origin(), RecordType::AXFR, 5, &signer(&k), NOW).unwrap();
        let msgs = transferred(&primary, &q, &k);
        assert!(msgs.len() > 2);
        let mut axfr = Axfr::new(verifier, 5, origin());
        let mut got = None;
        for (i, m) in msgs.iter().enumerate() {
            let r = axfr.feed(m).unwrap();
            assert_eq!(r.is_some(), i + 1 == msgs.len());
            got = r;
        }
        let z = Zone::transferred(&origin(), got.unwrap()).unwrap();
        assert_eq!(z.serial(), 9);
        assert_eq!(z.record_count(), primary.record_count());
        assert!(!z.is_pending());
    }

    #[test]
    fn a_forged_reordered_or_foreign_transfer_is_refused() {
        let k = keys(7);
        let primary = zone(300, 9);
        let (q, _) = query(&origin(), RecordType::AXFR, 5, &signer(&k), NOW).unwrap();
        let msgs = transferred(&primary, &q, &k);
        let fresh = || {
            query(&origin(), RecordType::AXFR, 5, &signer(&k), NOW)
                .unwrap()
                .1
        };
        // Signed with another secret.
        let other = keys(8);
        let mut axfr = Axfr::new(
            query(&origin(), RecordType::AXFR, 5, &signer(&other), NOW)
                .unwrap()
                .1,
            5,
            origin(),
        );
        assert!(axfr.feed(&msgs[0]).is_err());
        // A message left out, or one changed in flight.
        let mut axfr = Axfr::new(fresh(), 5, origin());
        axfr.feed(&msgs[0]).unwrap();
        assert!(axfr.feed(&msgs[2]).is_err());
        let mut axfr = Axfr::new(fresh(), 5, origin());
        let mut changed = msgs[0].clone();
        let n = changed.len();
        changed[n / 2] ^= 1;
        assert!(axfr.feed(&changed).is_err());
        // A zone that does not begin with its SOA, or names outside it.
        assert!(
            Zone::transferred(
                &origin(),
                primary
                    .records()
                    .filter(|r| r.record_type() != RecordType::SOA)
                    .cloned()
                    .collect()
            )
            .is_err()
        );
        let mut outside: Vec<Record> = vec![primary.soa().clone()];
        let mut r = primary.soa().clone();
        r.name = Name::from_ascii("example.org.").unwrap();
        r.data = RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1));
        outside.push(r);
        assert!(Zone::transferred(&origin(), outside).is_err());
    }

    #[test]
    fn only_the_primarys_signed_notify_is_taken() {
        let k = keys(7);
        let primary = zone(0, 9);
        let n = transfer::notify(&primary, 3, &signer(&k), NOW).unwrap();
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));
        let s = signer(&k);
        assert!(matches!(
            notified(&n, PEER, PEER, &origin(), &s, NOW),
            Notified::Accept(_)
        ));
        assert!(matches!(
            notified(&n, elsewhere, PEER, &origin(), &s, NOW),
            Notified::Refuse(_, "not the primary")
        ));
        assert!(matches!(
            notified(&n, PEER, PEER, &origin(), &signer(&keys(8)), NOW),
            Notified::Refuse(_, "bad signature")
        ));
        assert!(matches!(
            notified(&n, PEER, PEER, &origin(), &s, NOW + 3600),
            Notified::Refuse(_, "time outside the window")
        ));
        let unsigned = {
            let mut m = Message::from_vec(&n).unwrap();
            m.signature = None;
            m.to_vec().unwrap()
        };
        assert!(matches!(
            notified(&unsigned, PEER, PEER, &origin(), &s, NOW),
            Notified::Refuse(_, "unsigned")
        ));
        let soa_query = query(&origin(), RecordType::SOA, 1, &s, NOW).unwrap().0;
        assert_eq!(
            notified(&soa_query, PEER, PEER, &origin(), &s, NOW),
            Notified::NotOne
        );
    }
}
