//! The zone KUBE is authoritative for (pure): built from the `dns` section, the published
//! apps and the run-time records, and looked up per RFC 1034 §4.3.2 with wildcards
//! (RFC 4592) and empty non-terminals (RFC 8020: NODATA, not NXDOMAIN).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::records::{self, RecordError, RecordSpec};

/// Everything a zone is made of.
#[derive(Clone, Debug)]
pub struct ZoneInput<'a> {
    pub domain: &'a str,
    pub section: &'a config::Dns,
    pub apps: &'a [String],
    pub runtime: &'a [RecordSpec],
    pub serial: u32,
}

/// One record of the zone as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub ttl: u32,
    pub value: String,
}

/// A built zone, immutable; a change builds a new one.
#[derive(Debug)]
pub struct Zone {
    origin: LowerName,
    soa: Record,
    nodes: HashMap<LowerName, Vec<Record>>,
    /// Every owner and each of its ancestors inside the zone.
    existing: HashSet<LowerName>,
    records: usize,
    /// A secondary's zone with nothing transferred (or expired): SERVFAIL.
    pending: bool,
}

/// The result of a lookup.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NoData,
    NxDomain,
    /// Not in this zone: KUBE is no resolver.
    Refused,
}

/// A problem building the zone, with the config key at fault (`dns.records[2].value`).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ZoneError {
    pub path: String,
    pub reason: String,
}

impl Zone {
    pub fn build(input: &ZoneInput) -> Result<Zone, ZoneError> {
        let s = input.section;
        let zerr = |path: String, reason: String| ZoneError { path, reason };
        let origin_name = Name::from_ascii(format!("{}.", input.domain.trim_end_matches('.')))
            .map_err(|e| zerr("domain".into(), e.to_string()))?
            .to_lowercase();
        let ttl = s.ttl;
        let mut recs: Vec<Record> = Vec::new();

        let addresses: Vec<IpAddr> =
            if s.addresses.is_empty() && config::is_local_domain(input.domain) {
                vec![
                    IpAddr::from([127, 0, 0, 1]),
                    IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ]
            } else {
                s.addresses.clone()
            };
        let address_records = |owner: &Name, recs: &mut Vec<Record>| {
            for ip in &addresses {
                let data = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                recs.push(Record::from_rdata(owner.clone(), ttl, data));
            }
        };

        let mut nameservers = Vec::new();
        if s.nameservers.is_empty() {
            nameservers.push(
                Name::from_ascii("ns1")
                    .and_then(|n| n.append_domain(&origin_name))
                    .map_err(|e| zerr("dns.nameservers".into(), e.to_string()))?,
            );
        }
        for (i, ns) in s.nameservers.iter().enumerate() {
            let n = if ns.ends_with('.') {
                Name::from_ascii(ns)
            } else {
                Name::from_ascii(format!("{ns}."))
            }
            .map_err(|e| zerr(format!("dns.nameservers[{i}]"), e.to_string()))?;
            nameservers.push(n);
        }
        for ns in &nameservers {
            recs.push(Record::from_rdata(
                origin_name.clone(),
                ttl,
                RData::NS(NS(ns.clone())),
            ));
        }

        let contact = if s.contact.is_empty() {
            format!("hostmaster@{}", input.domain)
        } else {
            s.contact.clone()
        };
        let rname = contact_to_rname(&contact).map_err(|e| zerr("dns.contact".into(), e))?;
        // RFC 2308 §4: the SOA minimum is the negative-caching TTL.
        let soa = Record::from_rdata(
            origin_name.clone(),
            ttl,
            RData::SOA(SOA::new(
                nameservers[0].clone(),
                rname,
                input.serial,
                3600,
                900,
                1_209_600,
                ttl.min(300),
            )),
        );
        recs.push(soa.clone());

        address_records(&origin_name, &mut recs);
        match s.app_hosts {
            config::AppHosts::Wildcard => {
                let wild = Name::from_ascii("*")
                    .and_then(|n| n.append_domain(&origin_name))
                    .map_err(|e| zerr("dns.app_hosts".into(), e.to_string()))?;
                address_records(&wild, &mut recs);
            }
            config::AppHosts::PerApp => {
                for app in input.apps {
                    if let Ok(host) =
                        Name::from_ascii(app).and_then(|n| n.append_domain(&origin_name))
                    {
                        address_records(&host, &mut recs);
                    }
                }
            }
        }
        for (i, ca) in s.caa.iter().enumerate() {
            let issuer =
                Name::from_ascii(ca).map_err(|e| zerr(format!("dns.caa[{i}]"), e.to_string()))?;
            recs.push(Record::from_rdata(
                origin_name.clone(),
                ttl,
                RData::CAA(CAA::new_issue(false, Some(issuer), Vec::new())),
            ));
        }
        // In-zone name servers get glue from the KUBE's addresses unless records name them.
        let explicit: HashSet<LowerName> = s
            .records
            .iter()
            .filter_map(|r| records::owner(&r.name, &origin_name).ok())
            .map(|n| LowerName::new(&n))
            .collect();
        for ns in &nameservers {
            if origin_name.zone_of(ns)
                && !explicit.contains(&LowerName::new(ns))
                && ns != &origin_name
            {
                address_records(ns, &mut recs);
            }
        }
        for (i, r) in s.records.iter().enumerate() {
            let rec = records::parse(&RecordSpec::from(r), &origin_name, ttl).map_err(
                |e: RecordError| ZoneError {
                    path: format!(
                        "dns.records[{i}].{}",
                        if e.field == "type" { "type" } else { e.field }
                    ),
                    reason: e.reason,
                },
            )?;
            recs.push(rec);
        }
        for r in input.runtime {
            // Run-time records were checked when added; one that no longer parses (the domain
            // changed) is skipped rather than taking the zone down.
            match records::parse(r, &origin_name, ttl) {
                Ok(rec) => recs.push(rec),
                Err(e) => tracing::warn!(name = %r.name, error = %e, "run-time record skipped"),
            }
        }

        Ok(Zone::assemble(&origin_name, soa, recs))
    }

    /// A zone as a primary transferred it (a secondary's, `dns.primary`): `records` as
    /// they came, the SOA first (the closing copy of it left out). Every record must be
    /// inside `origin`.
    pub fn transferred(origin: &Name, records: Vec<Record>) -> Result<Zone, String> {
        let origin_name = origin.to_lowercase();
        let Some(soa) = records.first().cloned() else {
            return Err("no records".into());
        };
        if soa.record_type() != RecordType::SOA || soa.name.to_lowercase() != origin_name {
            return Err(format!("the first record is not the SOA of {origin_name}"));
        }
        if let Some(r) = records.iter().find(|r| !origin_name.zone_of(&r.name)) {
            return Err(format!("{} is outside the zone", r.name));
        }
        let mut zone = Zone::assemble(&origin_name, soa, records);
        zone.pending = false;
        Ok(zone)
    }

    /// A secondary's zone before its first transfer: it answers SERVFAIL for its names.
    pub fn pending(origin: &Name) -> Zone {
        let origin_name = origin.to_lowercase();
        let soa = Record::from_rdata(
            origin_name.clone(),
            0,
            RData::SOA(SOA::new(
                origin_name.clone(),
                origin_name.clone(),
                0,
                3600,
                900,
                1_209_600,
                0,
            )),
        );
        let mut zone = Zone::assemble(&origin_name, soa, Vec::new());
        zone.pending = true;
        zone
    }

    /// Whether this zone is a secondary's that has nothing to serve yet (or expired).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    fn assemble(origin_name: &Name, soa: Record, recs: Vec<Record>) -> Zone {
        let origin = LowerName::new(origin_name);
        let mut nodes: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let mut existing = HashSet::new();
        let records = recs.len();
        for mut r in recs {
            let owner = r.name.to_lowercase();
            r.name = owner.clone();
            let mut n = LowerName::new(&owner);
            nodes.entry(n.clone()).or_default().push(r);
            while origin.zone_of(&n) && existing.insert(n.clone()) && n != origin {
                n = n.base_name();
            }
        }
        for set in nodes.values_mut() {
            // Identical records (same data) count once.
            let mut seen = HashSet::new();
            set.retain(|r| seen.insert((r.record_type(), r.data.to_string())));
        }
        Zone {
            origin,
            soa,
            nodes,
            existing,
            records,
            pending: false,
        }
    }

    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }

    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    /// Every record of the zone, the SOA included, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.nodes.values().flatten()
    }

    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Every record of the zone in presentation form, sorted by name and type (the SOA
    /// first), for the admin API.
    pub fn listing(&self) -> Vec<Listed> {
        let mut out: Vec<Listed> = std::iter::once(&self.soa)
            .chain(
                self.nodes
                    .values()
                    .flatten()
                    .filter(|r| r.record_type() != RecordType::SOA),
            )
            .map(|r| Listed {
                name: r.name.to_string(),
                kind: r.record_type().to_string(),
                ttl: r.ttl,
                value: r.data.to_string(),
            })
            .collect();
        out[1..].sort_by(|a, b| (&a.name, &a.kind, &a.value).cmp(&(&b.name, &b.kind, &b.value)));
        out
    }

    /// Looks `qname`/`qtype` up.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Lookup {
        if !self.origin.zone_of(qname) {
            return Lookup::Refused;
        }
        if let Some(set) = self.nodes.get(qname) {
            return self.answer_node(set, qname, qtype, true);
        }
        if self.existing.contains(qname) {
            return Lookup::NoData;
        }
        // RFC 4592 §3.3.1: the source of synthesis is `*.` under the closest encloser.
        let mut encloser = qname.base_name();
        while !self.existing.contains(&encloser) && encloser != self.origin {
            encloser = encloser.base_name();
        }
        let wildcard = Name::from(&encloser)
            .prepend_label("*")
            .ok()
            .map(|n| LowerName::new(&n));
        match wildcard.and_then(|w| self.nodes.get(&w)) {
            Some(set) => {
                let owner = Name::from(qname);
                let synthesized: Vec<Record> = set
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r.name = owner.clone();
                        r
                    })
                    .collect();
                self.answer_node(&synthesized, qname, qtype, true)
            }
            None => Lookup::NxDomain,
        }
    }

    fn answer_node(
        &self,
        set: &[Record],
        qname: &LowerName,
        qtype: RecordType,
        chase: bool,
    ) -> Lookup {
        let answers: Vec<Record> = if qtype == RecordType::ANY {
            // RFC 8482 §4.2: answer ANY with one RRset, not everything.
            match set.first() {
                Some(first) => set
                    .iter()
                    .filter(|r| r.record_type() == first.record_type())
                    .cloned()
                    .collect(),
                None => Vec::new(),
            }
        } else {
            set.iter()
                .filter(|r| r.record_type() == qtype)
                .cloned()
                .collect()
        };
        let mut additionals = Vec::new();
        if !answers.is_empty() {
            if qtype == RecordType::NS {
                for r in &answers {
                    if let RData::NS(NS(target)) = &r.data
                        && let Some(glue) = self.nodes.get(&LowerName::new(target))
                    {
                        additionals.extend(
                            glue.iter()
                                .filter(|g| {
                                    matches!(g.record_type(), RecordType::A | RecordType::AAAA)
                                })
                                .cloned(),
                        );
                    }
                }
            }
            return Lookup::Answer {
                answers,
                additionals,
            };
        }
        if let Some(cname) = set.iter().find(|r| r.record_type() == RecordType::CNAME) {
            let mut answers = vec![cname.clone()];
            // One step of in-zone chasing (RFC 1034 §4.3.2 step 3a); no loops possible.
            if chase && let RData::CNAME(target) = &cname.data {
                let target = LowerName::new(&target.0);
                if &target != qname
                    && let Lookup::Answer { answers: more, .. } =
                        self.lookup_no_chase(&target, qtype)
                {
                    answers.extend(more);
                }
            }
            return Lookup::Answer {
                answers,
                additionals,
            };
        }
        Lookup::NoData
    }

    fn lookup_no_chase(&self, qname: &LowerName, qtype: RecordType) -> Lookup {
        match self.nodes.get(qname) {
            Some(set) if self.origin.zone_of(qname) => self.answer_node(set, qname, qtype, false),
            _ => Lookup::NoData,
        }
    }
}

/// `hostmaster@example.com` → `hostmaster.example.com.` (RFC 1035 §8; dots in the local
/// part are escaped).
fn contact_to_rname(email: &str) -> Result<Name, String> {
    let (local, domain) = email
        .split_once('@')
        .ok_or_else(|| format!("{email:?} is not an e-mail address"))?;
    let local = local.replace('.', "\\.");
    Name::from_ascii(format!("{local}.{}.", domain.trim_end_matches('.')))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(section: &config::Dns, apps: &[String], runtime: &[RecordSpec]) -> Zone {
        Zone::build(&ZoneInput {
            domain: "example.com",
            section,
            apps,
            runtime,
            serial: 7,
        })
        .unwrap()
    }

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn section() -> config::Dns {
        let mut s = config::Dns {
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            caa: vec!["letsencrypt.org".into()],
            ..config::Dns::default()
        };
        s.records.push(config::DnsRecord {
            name: "www".into(),
            kind: "CNAME".into(),
            value: "example.com.".into(),
            ttl: None,
        });
        s.records.push(config::DnsRecord {
            name: "_sip._tcp.voice".into(),
            kind: "SRV".into(),
            value: "0 5 5060 sip".into(),
            ttl: Some(60),
        });
        s
    }

    fn answers(l: Lookup) -> Vec<String> {
        match l {
            Lookup::Answer { answers, .. } => answers
                .iter()
                .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
                .collect(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn apex_wildcard_cname_and_negative_answers() {
        let z = zone(&section(), &[], &[]);
        assert_eq!(z.serial(), 7);
        assert_eq!(
            answers(z.lookup(&name("EXAMPLE.com."), RecordType::A)),
            vec!["example.com. A 192.0.2.1"]
        );
        assert_eq!(
            answers(z.lookup(&name("notes.example.com."), RecordType::AAAA)),
            vec!["notes.example.com. AAAA 2001:db8::1"]
        );
        assert_eq!(
            answers(z.lookup(&name("example.com."), RecordType::CAA)).len(),
            1
        );
        let www = answers(z.lookup(&name("www.example.com."), RecordType::A));
        assert_eq!(
            www,
            vec![
                "www.example.com. CNAME example.com.",
                "example.com. A 192.0.2.1"
            ]
        );
        assert_eq!(
            z.lookup(&name("example.com."), RecordType::MX),
            Lookup::NoData
        );
        // voice.example.com and _tcp.voice.example.com exist only as ancestors: NODATA.
        assert_eq!(
            z.lookup(&name("_tcp.voice.example.com."), RecordType::A),
            Lookup::NoData
        );
        // Below an existing name, the wildcard at the apex does not apply (RFC 4592).
        assert_eq!(
            z.lookup(&name("x._tcp.voice.example.com."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(&name("example.org."), RecordType::A),
            Lookup::Refused
        );
        assert_eq!(z.lookup(&name("com."), RecordType::A), Lookup::Refused);
        let any = answers(z.lookup(&name("example.com."), RecordType::ANY));
        assert!(
            !any.is_empty() && any.iter().all(|a| a.contains(" NS ")),
            "one RRset for ANY: {any:?}"
        );
        match z.lookup(&name("example.com."), RecordType::NS) {
            Lookup::Answer { additionals, .. } => assert_eq!(additionals.len(), 2, "glue for ns1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_app_hosts_and_runtime_records() {
        let mut s = section();
        s.app_hosts = config::AppHosts::PerApp;
        let rt = vec![RecordSpec {
            name: "_acme-challenge".into(),
            kind: "TXT".into(),
            value: "\"token\"".into(),
            ttl: Some(10),
        }];
        let z = zone(&s, &["notes".to_string()], &rt);
        assert_eq!(
            answers(z.lookup(&name("notes.example.com."), RecordType::A)).len(),
            1
        );
        assert_eq!(
            z.lookup(&name("other.example.com."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            answers(z.lookup(&name("_acme-challenge.example.com."), RecordType::TXT)),
            vec!["_acme-challenge.example.com. TXT token"]
        );
    }

    #[test]
    fn bad_config_records_name_their_key() {
        let mut s = section();
        s.records[1].value = "not srv data".into();
        let e = Zone::build(&ZoneInput {
            domain: "example.com",
            section: &s,
            apps: &[],
            runtime: &[],
            serial: 1,
        })
        .unwrap_err();
        assert_eq!(e.path, "dns.records[1].value");
    }
}
