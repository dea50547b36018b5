//! Records written by people (in `kube.yml` or through the admin API) turned into wire
//! records (pure). The zone-file parser of hickory-proto reads the value, so every form a
//! zone file accepts for these types is accepted here.

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use serde::{Deserialize, Serialize};

/// Types an operator or a service may add.
pub const ALLOWED: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::TXT,
    RecordType::MX,
    RecordType::SRV,
    RecordType::CAA,
];

/// A record as people write it: owner relative to the zone (`@` for the apex), type, value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

impl From<&config::DnsRecord> for RecordSpec {
    fn from(r: &config::DnsRecord) -> RecordSpec {
        RecordSpec {
            name: r.name.clone(),
            kind: r.kind.clone(),
            value: r.value.clone(),
            ttl: r.ttl,
        }
    }
}

/// Why a record cannot be served. `field` is the key at fault: `name`, `type` or `value`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    pub field: &'static str,
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError {
        field,
        reason: reason.into(),
    }
}

/// The owner name of `name` inside `origin`: `@` is the apex, a trailing dot means absolute.
pub fn owner(name: &str, origin: &Name) -> Result<Name, RecordError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(err("name", "is required (use @ for the apex)"));
    }
    let owner = if name == "@" {
        origin.clone()
    } else if name.ends_with('.') {
        Name::from_ascii(name).map_err(|e| err("name", e.to_string()))?
    } else {
        Name::from_ascii(name)
            .and_then(|n| n.append_domain(origin))
            .map_err(|e| err("name", e.to_string()))?
    };
    if !origin.zone_of(&owner) {
        return Err(err("name", format!("{owner} is outside the zone {origin}")));
    }
    Ok(owner)
}

/// Parses one record for the zone `origin`; relative names in the value are completed
/// with the origin, as in a zone file.
pub fn parse(spec: &RecordSpec, origin: &Name, default_ttl: u32) -> Result<Record, RecordError> {
    let kind: RecordType = spec
        .kind
        .trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| err("type", format!("{:?} is not a record type", spec.kind)))?;
    if !ALLOWED.contains(&kind) {
        let names: Vec<String> = ALLOWED.iter().map(|t| t.to_string()).collect();
        return Err(err(
            "type",
            format!("{kind} cannot be added; use one of {}", names.join(", ")),
        ));
    }
    let owner = owner(&spec.name, origin)?;
    // One line of zone file: nothing may start another line or a directive.
    if spec.value.chars().any(|c| c.is_control()) {
        return Err(err("value", "must be one line without control characters"));
    }
    if spec.value.trim().is_empty() {
        return Err(err("value", "is required"));
    }
    let ttl = spec.ttl.unwrap_or(default_ttl);
    let line = format!("{owner} {ttl} IN {kind} {}\n", spec.value.trim());
    let (_, sets) = Parser::new(line, None, Some(origin.clone()))
        .parse()
        .map_err(|e| err("value", first_line(&e.to_string())))?;
    let mut records = sets
        .into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>());
    let record = records
        .next()
        .ok_or_else(|| err("value", format!("no {kind} data in {:?}", spec.value)))?;
    if records.next().is_some() {
        return Err(err("value", "holds more than one record"));
    }
    if record.record_type() != kind {
        return Err(err("value", format!("is not {kind} data")));
    }
    Ok(record)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: &str, value: &str) -> RecordSpec {
        RecordSpec {
            name: name.into(),
            kind: kind.into(),
            value: value.into(),
            ttl: None,
        }
    }

    #[test]
    fn every_allowed_type_parses() {
        let origin = Name::from_ascii("example.com.").unwrap();
        for (k, v) in [
            ("A", "192.0.2.1"),
            ("AAAA", "2001:db8::1"),
            ("CNAME", "target"),
            ("TXT", "\"hello world\" \"second\""),
            ("MX", "10 mail.example.com."),
            ("SRV", "0 5 5060 sip"),
            ("CAA", "0 issue \"letsencrypt.org\""),
        ] {
            let r =
                parse(&spec("www", k, v), &origin, 60).unwrap_or_else(|e| panic!("{k} {v}: {e}"));
            assert_eq!(r.name.to_string(), "www.example.com.");
            assert_eq!(r.ttl, 60);
            assert_eq!(r.record_type().to_string(), k);
        }
        let cname = parse(&spec("@", "cname", "target"), &origin, 60).unwrap();
        assert_eq!(
            &cname.data.to_string(),
            "target.example.com.",
            "relative names are completed"
        );
    }

    #[test]
    fn bad_records_name_the_field() {
        let origin = Name::from_ascii("example.com.").unwrap();
        assert_eq!(
            parse(&spec("www", "A", "not-an-ip"), &origin, 60)
                .unwrap_err()
                .field,
            "value"
        );
        assert_eq!(
            parse(&spec("www", "NS", "ns1"), &origin, 60)
                .unwrap_err()
                .field,
            "type"
        );
        assert_eq!(
            parse(&spec("www", "BOGUS", "x"), &origin, 60)
                .unwrap_err()
                .field,
            "type"
        );
        assert_eq!(
            parse(&spec("www.other.org.", "A", "192.0.2.1"), &origin, 60)
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            parse(&spec("", "A", "192.0.2.1"), &origin, 60)
                .unwrap_err()
                .field,
            "name"
        );
        let inj = parse(
            &spec("www", "TXT", "\"x\"\n$INCLUDE /etc/passwd"),
            &origin,
            60,
        )
        .unwrap_err();
        assert_eq!(inj.field, "value");
    }
}
