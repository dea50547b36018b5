//! ACME decisions without I/O: which names to order, which challenge answers each, when to
//! renew, how long to back off, when to try the fallback directory.

use std::time::{Duration, SystemTime};

use config::Challenge;

/// The names of the certificate for `domain`. With DNS-01 the apex and `*.domain` cover
/// every app host; without it, each app host is named (RFC 8555 §7.1.3: wildcards need
/// DNS-01).
pub fn names(domain: &str, dns01: bool, apps: &[String]) -> Vec<String> {
    let mut names = vec![domain.to_owned()];
    if dns01 {
        names.push(format!("*.{domain}"));
    } else {
        names.extend(apps.iter().map(|a| format!("{a}.{domain}")));
    }
    names
}

/// Whether DNS-01 can be answered: KUBE's DNS runs and the operator allows it.
pub fn dns01_possible(order: &[Challenge], dns_running: bool) -> bool {
    dns_running && order.contains(&Challenge::Dns01)
}

/// The challenge to answer for `identifier`: the first of the operator's order that the
/// server offers and KUBE can answer. A wildcard can only be proven by DNS-01.
pub fn challenge_for(
    identifier: &str,
    order: &[Challenge],
    offered: &[Challenge],
    dns_running: bool,
) -> Option<Challenge> {
    let wildcard = identifier.starts_with("*.");
    order.iter().copied().find(|c| {
        offered.contains(c)
            && match c {
                Challenge::Dns01 => dns_running,
                Challenge::Http01 | Challenge::TlsAlpn01 => !wildcard,
            }
    })
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of its
/// lifetime, or earlier when the directory's renewal window (RFC 9773 §4.2) says so, at the
/// point `pick` (0..1, random) of that window.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    ari: Option<(SystemTime, SystemTime)>,
    pick: f64,
) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let two_thirds = not_before + life.mul_f64(2.0 / 3.0);
    match ari {
        Some((start, end)) if end >= start => {
            let span = end.duration_since(start).unwrap_or_default();
            let at = start + span.mul_f64(pick.clamp(0.0, 1.0));
            at.min(two_thirds)
        }
        _ => two_thirds,
    }
}

/// Wait after the `failures`-th failure in a row: exponential from a minute, with jitter
/// (`jitter` 0..1 spreads it over ±25%), never more than a day.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    const BASE: u64 = 60;
    const CAP: u64 = 24 * 3600;
    let exp = BASE.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    let d = Duration::from_secs(exp.min(CAP));
    d.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
        .min(Duration::from_secs(CAP))
}

/// After this many failures in a row the fallback directory (if any) is tried.
pub const FALLBACK_AFTER: u32 = 3;

/// The directory to use after `failures` failures in a row.
pub fn directory<'a>(primary: &'a str, fallback: Option<&'a str>, failures: u32) -> &'a str {
    match fallback {
        Some(f) if failures >= FALLBACK_AFTER && failures % 2 == 1 => f,
        _ => primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_challenges() {
        assert_eq!(
            names("ex.com", true, &["a".into()]),
            vec!["ex.com", "*.ex.com"]
        );
        assert_eq!(
            names("ex.com", false, &["a".into()]),
            vec!["ex.com", "a.ex.com"]
        );
        let all = [Challenge::Http01, Challenge::TlsAlpn01, Challenge::Dns01];
        let order = [Challenge::Dns01, Challenge::TlsAlpn01, Challenge::Http01];
        assert_eq!(
            challenge_for("*.ex.com", &order, &all, true),
            Some(Challenge::Dns01)
        );
        assert_eq!(
            challenge_for("*.ex.com", &[Challenge::Http01], &all, true),
            None
        );
        assert_eq!(
            challenge_for("ex.com", &order, &all, false),
            Some(Challenge::TlsAlpn01)
        );
        assert_eq!(
            challenge_for("ex.com", &order, &[Challenge::Http01], true),
            Some(Challenge::Http01)
        );
        assert!(!dns01_possible(&order, false));
    }

    #[test]
    fn renewal_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = t0 + Duration::from_secs(90);
        assert_eq!(renew_at(t0, end, None, 0.5), t0 + Duration::from_secs(60));
        // A window before two thirds (say, a revocation coming) is honoured...
        let w = (t0 + Duration::from_secs(10), t0 + Duration::from_secs(20));
        assert_eq!(
            renew_at(t0, end, Some(w), 0.5),
            t0 + Duration::from_secs(15)
        );
        // ...a later one does not delay the two-thirds renewal.
        let late = (t0 + Duration::from_secs(80), t0 + Duration::from_secs(85));
        assert_eq!(
            renew_at(t0, end, Some(late), 0.0),
            t0 + Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(120));
        assert!(
            backoff(3, 0.0) >= Duration::from_secs(180)
                && backoff(3, 1.0) <= Duration::from_secs(300)
        );
        assert_eq!(backoff(40, 1.0), Duration::from_secs(86_400));
        assert_eq!(directory("a", Some("b"), 2), "a");
        assert_eq!(directory("a", Some("b"), 3), "b");
        assert_eq!(
            directory("a", Some("b"), 4),
            "a",
            "alternates, so the primary is retried"
        );
        assert_eq!(directory("a", None, 9), "a");
    }
}
