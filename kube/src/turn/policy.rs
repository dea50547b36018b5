//! Who the relay may talk to (pure). By default no peer in a loopback, private, link-local,
//! shared, documentation, reserved or multicast range, in an IPv4-mapped or NAT64 form of
//! one, or at KUBE's own addresses: a TURN allocation must not become a way into the
//! operator's network (SSRF). `turn.allow_peers` opens ranges on purpose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("64:ff9b::/96", "nat64"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
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
        // Judge the address an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) form
        // really reaches, as well as the form itself.
        let forms = [Some(peer), embedded_v4(peer).map(IpAddr::V4)];
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

fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let nat64: Ipv6Addr = "64:ff9b::".parse().expect("valid literal");
    let s = v6.segments();
    if s[..6] == nat64.segments()[..6] {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
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
