//! Response rate limiting (pure): a token bucket per client prefix, so KUBE cannot be used
//! to amplify traffic at a spoofed address. A limited response is dropped, or every
//! `slip`-th one is sent truncated so that a real client behind the prefix retries over TCP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Drop,
    Slip,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u32,
}

/// Buckets for at most `MAX_PREFIXES` prefixes; past that, idle ones are forgotten.
const MAX_PREFIXES: usize = 65_536;

#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    slip: u32,
    v4: u8,
    v6: u8,
    buckets: HashMap<(bool, u128), Bucket>,
}

impl Rrl {
    pub fn new(cfg: &config::Rrl) -> Rrl {
        Rrl {
            rate: f64::from(cfg.responses_per_second.max(1)),
            slip: cfg.slip,
            v4: cfg.ipv4_prefix.min(32),
            v6: cfg.ipv6_prefix.min(128),
            buckets: HashMap::new(),
        }
    }

    fn prefix(&self, ip: IpAddr) -> (bool, u128) {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = if self.v4 == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.v4))
                };
                (false, u128::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if self.v6 == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.v6))
                };
                (true, bits & mask)
            }
        }
    }

    /// Judges one response to `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let key = self.prefix(ip);
        if self.buckets.len() >= MAX_PREFIXES && !self.buckets.contains_key(&key) {
            let rate = self.rate;
            // A bucket that has refilled is the same as no bucket.
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < rate
            });
            if self.buckets.len() >= MAX_PREFIXES {
                self.buckets.clear();
            }
        }
        let rate = self.rate;
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            last: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        if self.slip > 0 && b.limited.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_limited_with_slip_per_prefix() {
        let mut r = Rrl::new(&config::Rrl {
            responses_per_second: 5,
            slip: 2,
            ..config::Rrl::default()
        });
        let t = Instant::now();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let same_24: IpAddr = "198.51.100.200".parse().unwrap();
        let other: IpAddr = "203.0.113.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| r.check(if i % 2 == 0 { a } else { same_24 }, t))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 5);
        assert_eq!(
            &verdicts[5..],
            &[
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop
            ]
        );
        assert_eq!(
            r.check(other, t),
            Verdict::Send,
            "another prefix is not limited"
        );
        assert_eq!(
            r.check(a, t + Duration::from_secs(1)),
            Verdict::Send,
            "tokens refill"
        );
        let v6a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:0:ff::1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(r.check(v6a, t), Verdict::Send);
        }
        assert_ne!(r.check(v6b, t), Verdict::Send, "same /56");
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut r = Rrl::new(&config::Rrl::default());
        let t = Instant::now();
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            r.check(IpAddr::from((i << 8).to_be_bytes()), t);
        }
        assert!(r.buckets.len() <= MAX_PREFIXES);
    }
}
