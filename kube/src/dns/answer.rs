//! One DNS query in, one response out (pure): parse with hickory-proto, answer from the
//! zone, encode within the size the transport allows. Responses are never answered (no
//! loops between servers), recursion is never offered (RA clear), names outside the zone
//! are REFUSED.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RecordType};

use super::zone::{Lookup, Zone};

/// How a query arrived: UDP answers are bounded by EDNS (RFC 6891 §6.2.5), TCP ones are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A response ready to encode, with what metrics need.
#[derive(Debug)]
pub struct Answer {
    pub message: Message,
    pub qtype: Option<RecordType>,
    /// Largest encoding allowed on this transport.
    pub limit: usize,
    /// The TSIG key the query was signed with: the answer must be signed too.
    pub tsig_key: Option<hickory_proto::rr::Name>,
}

impl Answer {
    pub fn rcode(&self) -> ResponseCode {
        self.message.metadata.response_code
    }

    /// The wire form; truncated (TC, question only) when over the limit.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let bytes = self.message.to_vec().ok()?;
        if bytes.len() <= self.limit {
            return Some(bytes);
        }
        self.encode_truncated()
    }

    /// The truncated form, for a client told to retry over TCP (also RRL's slip).
    pub fn encode_truncated(&self) -> Option<Vec<u8>> {
        let mut t = self.message.truncate();
        t.metadata.id = self.message.metadata.id;
        t.to_vec().ok()
    }
}

/// Why a packet gets no answer at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("malformed message")]
    Malformed,
    #[error("a response, not a query")]
    NotAQuery,
}

/// Answers `packet` from `zone`.
pub fn answer(
    zone: &Zone,
    packet: &[u8],
    transport: Transport,
    max_udp: u16,
) -> Result<Answer, Dropped> {
    let req = Message::from_vec(packet).map_err(|_| Dropped::Malformed)?;
    if req.metadata.message_type != MessageType::Query {
        return Err(Dropped::NotAQuery);
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.recursion_available = false;
    resp.add_queries(req.queries.iter().cloned());
    let max_udp = max_udp.max(512);
    let limit = match (transport, &req.edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, Some(edns)) => edns.max_payload().clamp(512, max_udp) as usize,
        (Transport::Udp, None) => 512,
    };
    if let Some(edns) = &req.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(max_udp).set_version(0);
        resp.set_edns(ours);
        if edns.version() > 0 {
            // RFC 6891 §6.1.3: only version 0 exists.
            resp.metadata.response_code = ResponseCode::BADVERS;
            return Ok(Answer {
                message: resp,
                qtype: None,
                limit,
                tsig_key: None,
            });
        }
    }
    let qtype = req.queries.first().map(|q| q.query_type());
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Ok(Answer {
            message: resp,
            qtype,
            limit,
            tsig_key: None,
        });
    }
    let [query] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Ok(Answer {
            message: resp,
            qtype,
            limit,
            tsig_key: None,
        });
    };
    let qname = LowerName::new(query.name());
    if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
        resp.metadata.response_code = ResponseCode::Refused;
        return Ok(Answer {
            message: resp,
            qtype,
            limit,
            tsig_key: None,
        });
    }
    match query.query_type() {
        // Zone transfers are not offered; IXFR/AXFR/OPT/… as a question are refused.
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT => {
            resp.metadata.response_code = ResponseCode::Refused;
            return Ok(Answer {
                message: resp,
                qtype,
                limit,
                tsig_key: None,
            });
        }
        _ => {}
    }
    if zone.is_pending() && zone.origin().zone_of(&qname) {
        // A secondary with no transfer yet (or an expired one) has nothing to vouch for.
        resp.metadata.response_code = ResponseCode::ServFail;
        return Ok(Answer {
            message: resp,
            qtype,
            limit,
            tsig_key: None,
        });
    }
    match zone.lookup(&qname, query.query_type()) {
        Lookup::Refused => resp.metadata.response_code = ResponseCode::Refused,
        Lookup::Answer {
            answers,
            additionals,
        } => {
            resp.metadata.authoritative = true;
            resp.add_answers(answers);
            resp.add_additionals(additionals);
        }
        Lookup::NoData => {
            resp.metadata.authoritative = true;
            resp.add_authority(zone.soa().clone());
        }
        Lookup::NxDomain => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(zone.soa().clone());
        }
    }
    Ok(Answer {
        message: resp,
        qtype,
        limit,
        tsig_key: req.signature.as_ref().map(|s| s.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::ZoneInput;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn zone() -> Zone {
        let mut section = config::Dns {
            addresses: vec!["192.0.2.1".parse().unwrap()],
            ..config::Dns::default()
        };
        for i in 0..40 {
            section.records.push(config::DnsRecord {
                name: "big".into(),
                kind: "TXT".into(),
                value: format!("\"{i:02}-{}\"", "x".repeat(60)),
                ttl: None,
            });
        }
        Zone::build(&ZoneInput {
            domain: "example.com",
            section: &section,
            apps: &[],
            runtime: &[],
            serial: 1,
        })
        .unwrap()
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap()
    }

    #[test]
    fn flags_rcodes_and_authority() {
        let z = zone();
        let a = answer(
            &z,
            &query("example.com.", RecordType::A, None),
            Transport::Udp,
            1232,
        )
        .unwrap();
        let m = parse(&a.encode().unwrap());
        assert!(
            m.metadata.authoritative
                && !m.metadata.recursion_available
                && m.metadata.recursion_desired
        );
        assert_eq!(m.answers.len(), 1);
        let nx = parse(
            &answer(
                &z,
                &query("a.b.nope.big.example.com.", RecordType::A, None),
                Transport::Udp,
                1232,
            )
            .unwrap()
            .encode()
            .unwrap(),
        );
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = parse(
            &answer(
                &z,
                &query("example.com.", RecordType::MX, None),
                Transport::Udp,
                1232,
            )
            .unwrap()
            .encode()
            .unwrap(),
        );
        assert_eq!(
            (nodata.metadata.response_code, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        let refused = parse(
            &answer(
                &z,
                &query("example.org.", RecordType::A, None),
                Transport::Udp,
                1232,
            )
            .unwrap()
            .encode()
            .unwrap(),
        );
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);
    }

    #[test]
    fn udp_truncates_tcp_does_not() {
        let z = zone();
        let q = query("big.example.com.", RecordType::TXT, None);
        let udp = parse(
            &answer(&z, &q, Transport::Udp, 1232)
                .unwrap()
                .encode()
                .unwrap(),
        );
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let q = query("big.example.com.", RecordType::TXT, Some(4096));
        let bytes = answer(&z, &q, Transport::Udp, 1232)
            .unwrap()
            .encode()
            .unwrap();
        assert!(bytes.len() <= 1232, "EDNS payload is capped by ours");
        assert!(parse(&bytes).metadata.truncation);
        let tcp = parse(
            &answer(&z, &q, Transport::Tcp, 1232)
                .unwrap()
                .encode()
                .unwrap(),
        );
        assert!(!tcp.metadata.truncation && tcp.answers.len() == 40);
        assert_eq!(tcp.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    }

    #[test]
    fn responses_and_garbage_are_dropped() {
        let z = zone();
        let mut resp = parse(&query("example.com.", RecordType::A, None));
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(
            answer(&z, &resp.to_vec().unwrap(), Transport::Udp, 1232).unwrap_err(),
            Dropped::NotAQuery
        );
        assert_eq!(
            answer(&z, b"\x00\x01", Transport::Udp, 1232).unwrap_err(),
            Dropped::Malformed
        );
    }

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let z = zone();
        let seed = query("example.com.", RecordType::A, Some(1232));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut p = if i % 2 == 0 {
                seed.clone()
            } else {
                (0..(next() % 300)).map(|_| next() as u8).collect()
            };
            if !p.is_empty() {
                for _ in 0..(next() % 4) {
                    let at = (next() as usize) % p.len();
                    p[at] ^= 1 << (next() % 8);
                }
                if next() % 5 == 0 {
                    p.truncate((next() as usize) % p.len());
                }
            }
            if let Ok(a) = answer(
                &z,
                &p,
                if i % 3 == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                1232,
            ) {
                let _ = a.encode();
            }
        }
    }
}
