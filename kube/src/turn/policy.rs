//! Who the relay may talk to (pure). By default no peer in a loopback, private, link-local,
//! shared, documentation, reserved or multicast range, in an IPv6 form that leads to one
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), or at KUBE's own addresses: a TURN
//! allocation must not become a way into the operator's network (SSRF). `turn.allow_peers`
//! opens ranges on purpose; opening an IPv6 form does not open the IPv4 hosts it leads to.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Ranges refused by default, each with the reason counted in metrics.
const DENIED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "protocol-assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4-relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    // The first range that holds an address names its reason: ::1 and :: before ::/96.
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("::/96", "ipv4-compatible"),
    ("64:ff9b::/96", "nat64"),
    ("64:ff9b:1::/48", "nat64-local"),
    ("2001::/32", "teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// The relay's peer policy.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    denied: Vec<(IpNet, &'static str)>,
    allowed: Vec<IpNet>,
    own: Vec<IpAddr>,
}

impl PeerPolicy {
    /// `allow` are CIDRs opened on purpose; `own` are KUBE's own addresses.
    pub fn new(allow: &[IpNet], own: &[IpAddr]) -> PeerPolicy {
        PeerPolicy {
            denied: DENIED
                .iter()
                .map(|(net, why)| {
                    (
                        net.parse().expect("the denied ranges are valid CIDRs"),
                        *why,
                    )
                })
                .collect(),
            allowed: allow.to_vec(),
            own: own.to_vec(),
        }
    }

    /// Why `peer` is refused, or None when the relay may reach it.
    pub fn refused(&self, peer: IpAddr) -> Option<&'static str> {
        // Judge the IPv4 hosts an IPv6 form really reaches, as well as the form itself.
        let [a, b] = embedded_v4(peer);
        let forms = [Some(peer), a.map(IpAddr::V4), b.map(IpAddr::V4)];
        let forms = forms.iter().flatten();
        if forms
            .clone()
            .all(|ip| self.allowed.iter().any(|n| n.contains(ip)))
        {
            return None;
        }
        for ip in forms {
            if self.allowed.iter().any(|n| n.contains(ip)) {
                continue;
            }
            if self.own.contains(ip) {
                return Some("own-address");
            }
            if let Some((_, why)) = self.denied.iter().find(|(n, _)| n.contains(ip)) {
                return Some(why);
            }
        }
        None
    }
}

/// The IPv4 hosts an IPv6 address leads to: the last 32 bits of an IPv4-mapped
/// (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, RFC 4291 §2.5.5) or NAT64
/// (64:ff9b::a.b.c.d, RFC 6052 §2.1) address; bits 16..48 of a 6to4 one (2002:AABB:CCDD::,
/// RFC 3056 §2); a Teredo one's server (bits 32..64) and client (the last 32 bits inverted,
/// RFC 4380 §4). The local-use NAT64 prefix (RFC 8215) embeds at a length only its operator
/// knows, so it is refused whole.
fn embedded_v4(ip: IpAddr) -> [Option<Ipv4Addr>; 2] {
    let IpAddr::V6(v6) = ip else {
        return [None, None];
    };
    let o = v6.octets();
    let v4 = |i: usize| Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3]);
    match v6.segments() {
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            [Some(v4(12)), None]
        }
        [0x2002, ..] => [Some(v4(2)), None],
        [0x2001, 0, ..] => [Some(v4(4)), Some(Ipv4Addr::from(!u32::from(v4(12))))],
        _ => [None, None],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_denied_range_and_its_mapped_form() {
        let p = PeerPolicy::new(&[], &[ip("203.0.114.9")]);
        for (addr, why) in [
            ("0.1.2.3", "this-network"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "protocol-assignments"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4-relay"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("239.1.1.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("64:ff9b::a00:1", "nat64"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("203.0.114.9", "own-address"),
        ] {
            assert_eq!(p.refused(ip(addr)), Some(why), "{addr}");
        }
        for addr in [
            "8.8.8.8",
            "2001:4860:4860::8888",
            "172.32.0.1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(p.refused(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn transition_and_special_ipv6_ranges() {
        let p = PeerPolicy::new(&[], &[]);
        for (addr, why) in [
            ("64:ff9b:1::1", "nat64-local"),
            ("64:ff9b:1:ffff::8.8.8.8", "nat64-local"),
            ("2002:808:808::1", "6to4"),
            ("2001::1", "teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
            ("fec0::1", "site-local"),
            ("feff::1", "site-local"),
            ("::8.8.8.8", "ipv4-compatible"),
            ("::127.0.0.1", "ipv4-compatible"),
            ("2001:db8::1", "documentation"),
            ("2001:db8:ffff::1", "documentation"),
        ] {
            assert_eq!(p.refused(ip(addr)), Some(why), "{addr}");
        }
        for addr in ["2001:1::1", "2003::1", "2001:db9::1", "64:ff9b:2::1"] {
            assert_eq!(p.refused(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_even_where_the_form_is_allowed() {
        // An operator who opens the 6to4, Teredo, NAT64 or IPv4-compatible forms still
        // does not open the IPv4 hosts they lead to.
        let p = PeerPolicy::new(
            &[
                "2002::/16".parse().unwrap(),
                "2001::/32".parse().unwrap(),
                "64:ff9b::/96".parse().unwrap(),
                "::/96".parse().unwrap(),
            ],
            &[],
        );
        for (addr, why) in [
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1:1::1", "private"),
            ("2002:a9fe:a9fe::", "link-local"),
            ("2002:c0a8:101:ffff::", "private"),
            // Teredo: the server in bits 32..64, the client inverted in the last 32.
            ("2001:0:7f00:1::f7f7:f7f7", "loopback"),
            ("2001:0:808:808::f5ff:fffe", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("::10.0.0.1", "private"),
        ] {
            assert_eq!(p.refused(ip(addr)), Some(why), "{addr}");
        }
        for addr in [
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
            "64:ff9b::808:808",
        ] {
            assert_eq!(p.refused(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn allow_opens_ranges_on_purpose() {
        let p = PeerPolicy::new(&["127.0.0.0/8".parse().unwrap()], &[]);
        assert_eq!(p.refused(ip("127.0.0.1")), None);
        assert_eq!(
            p.refused(ip("::ffff:127.0.0.1")),
            None,
            "the mapped form reaches an allowed address"
        );
        assert_eq!(p.refused(ip("10.0.0.1")), Some("private"));
    }
}
