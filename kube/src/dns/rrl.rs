//! Response rate limiting (pure): a token bucket per client prefix, so KUBE cannot be used
//! to amplify traffic at a spoofed address. A limited response is dropped, or every
//! `slip`-th one is sent truncated so that a real client behind the prefix retries over TCP.
//!
//! Bounds: at most `MAX_PREFIXES` buckets in a fixed table, and O(1) work per response (one
//! hash lookup; for a new prefix in a full table, at most `EVICT_SCAN` slots looked at by a
//! clock hand). A bucket is replaced only once it has refilled, when forgetting it changes
//! nothing, so spoofing many prefixes can never reset one that is being limited. While the
//! slots under the hand are busy, new prefixes share one overflow bucket: together they get
//! `responses_per_second` (their real clients slip to TCP), so responses overall stay
//! within (`MAX_PREFIXES` + 1) × `responses_per_second` plus one burst each.

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

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            last: now,
            limited: 0,
        }
    }

    /// Whether the bucket is back to full at `now`: then it is the same as no bucket.
    fn refilled(&self, rate: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= rate
    }

    fn judge(&mut self, rate: f64, slip: u32, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Send;
        }
        self.limited = self.limited.wrapping_add(1);
        if slip > 0 && self.limited.is_multiple_of(slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// A client prefix: (IPv6, masked address bits).
type Prefix = (bool, u128);

/// Most prefixes with a bucket of their own.
const MAX_PREFIXES: usize = 65_536;

/// Most slots looked at to make room for a new prefix.
const EVICT_SCAN: usize = 8;

#[derive(Debug)]
struct Slot {
    prefix: Prefix,
    bucket: Bucket,
}

#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    slip: u32,
    v4: u8,
    v6: u8,
    /// At most `MAX_PREFIXES`; `index` maps each slot's prefix to its place.
    slots: Vec<Slot>,
    index: HashMap<Prefix, usize>,
    /// The next slot to look at for room (a clock hand).
    hand: usize,
    /// Shared by new prefixes while the table is full and the slots under the hand are busy.
    overflow: Option<Bucket>,
}

impl Rrl {
    pub fn new(cfg: &config::Rrl) -> Rrl {
        let rate = f64::from(cfg.responses_per_second.max(1));
        Rrl {
            rate,
            slip: cfg.slip,
            v4: cfg.ipv4_prefix.min(32),
            v6: cfg.ipv6_prefix.min(128),
            slots: Vec::new(),
            index: HashMap::new(),
            hand: 0,
            overflow: None,
        }
    }

    fn prefix(&self, ip: IpAddr) -> Prefix {
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
        let (rate, slip) = (self.rate, self.slip);
        if let Some(&i) = self.index.get(&key) {
            return self.slots[i].bucket.judge(rate, slip, now);
        }
        let slot = Slot {
            prefix: key,
            bucket: Bucket::full(rate, now),
        };
        let i = if self.slots.len() < MAX_PREFIXES {
            self.slots.push(slot);
            self.slots.len() - 1
        } else if let Some(i) = self.refilled_slot(now) {
            self.index.remove(&self.slots[i].prefix);
            self.slots[i] = slot;
            i
        } else {
            return self
                .overflow
                .get_or_insert_with(|| Bucket::full(rate, now))
                .judge(rate, slip, now);
        };
        self.index.insert(key, i);
        self.slots[i].bucket.judge(rate, slip, now)
    }

    /// A slot among the next `EVICT_SCAN` under the hand whose bucket has refilled.
    fn refilled_slot(&mut self, now: Instant) -> Option<usize> {
        for _ in 0..EVICT_SCAN.min(self.slots.len()) {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            if self.slots[i].bucket.refilled(self.rate, now) {
                return Some(i);
            }
        }
        None
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

    /// A spoofed flood of new prefixes must not free a prefix that is being limited.
    #[test]
    fn a_flood_of_new_prefixes_does_not_reset_a_limited_one() {
        let mut r = Rrl::new(&config::Rrl {
            responses_per_second: 5,
            slip: 0,
            ..config::Rrl::default()
        });
        let t = Instant::now();
        let victim: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(r.check(victim, t), Verdict::Send);
        }
        assert_eq!(r.check(victim, t), Verdict::Drop);
        // Twice the table's size of spoofed /24s, spread over the next 100 ms (not enough
        // for the victim to earn a token back: it would need 200 ms).
        let n = 2 * MAX_PREFIXES as u32;
        for i in 0..n {
            let at = t + Duration::from_millis(u64::from(i) * 100 / u64::from(n));
            r.check(IpAddr::from(((i + 1) << 8).to_be_bytes()), at);
            if i % 4096 == 0 {
                assert_eq!(r.check(victim, at), Verdict::Drop, "after {i} prefixes");
            }
        }
        let end = t + Duration::from_millis(100);
        assert_eq!(r.check(victim, end), Verdict::Drop, "still limited");
        assert!(r.slots.len() <= MAX_PREFIXES && r.index.len() == r.slots.len());
    }

    /// Refilled buckets make room for new prefixes; a limited one never does.
    #[test]
    fn only_refilled_buckets_make_room() {
        let mut r = Rrl::new(&config::Rrl {
            responses_per_second: 5,
            slip: 0,
            ..config::Rrl::default()
        });
        let t = Instant::now();
        let victim: IpAddr = "198.51.100.7".parse().unwrap();
        // Three tables' worth of spoofed /24s over 900 ms, one response each (a bucket
        // refills 200 ms later), the victim's prefix asked all along.
        let n = 3 * MAX_PREFIXES as u32;
        let mut victim_sent = 0;
        let mut spoofed_sent = 0;
        for i in 0..n {
            let at = t + Duration::from_micros(u64::from(i) * 900_000 / u64::from(n));
            if r.check(IpAddr::from(((i + 1) << 8).to_be_bytes()), at) == Verdict::Send {
                spoofed_sent += 1;
            }
            if i % 16 == 0 && r.check(victim, at) == Verdict::Send {
                victim_sent += 1;
            }
        }
        // A burst of 5, then 5 a second.
        assert!(victim_sent <= 10, "victim answered {victim_sent} times");
        assert_eq!(spoofed_sent, n, "every spoofed prefix found room");
        assert!(r.slots.len() <= MAX_PREFIXES && r.index.len() == r.slots.len());
    }

    /// While every bucket is busy, new prefixes share one limit; once buckets refill, a new
    /// prefix has its own again.
    #[test]
    fn a_full_table_of_busy_buckets_limits_new_prefixes_together() {
        let mut r = Rrl::new(&config::Rrl {
            responses_per_second: 5,
            slip: 0,
            ..config::Rrl::default()
        });
        let t = Instant::now();
        for i in 0..MAX_PREFIXES as u32 {
            assert_eq!(
                r.check(IpAddr::from(((i + 1) << 8).to_be_bytes()), t),
                Verdict::Send
            );
        }
        let newcomers: Vec<Verdict> = (0..100u32)
            .map(|i| r.check(IpAddr::from((0xC000_0000 + (i << 8)).to_be_bytes()), t))
            .collect();
        assert_eq!(
            newcomers.iter().filter(|v| **v == Verdict::Send).count(),
            5,
            "one shared burst"
        );
        let later = t + Duration::from_secs(1);
        let fresh: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(r.check(fresh, later), Verdict::Send);
        }
        assert_eq!(r.check(fresh, later), Verdict::Drop);
        assert!(
            r.index.contains_key(&r.prefix(fresh)),
            "a bucket of its own"
        );
        assert_eq!(r.slots.len(), MAX_PREFIXES);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut r = Rrl::new(&config::Rrl::default());
        let t = Instant::now();
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            r.check(IpAddr::from((i << 8).to_be_bytes()), t);
        }
        assert!(r.slots.len() <= MAX_PREFIXES && r.index.len() == r.slots.len());
    }
}
