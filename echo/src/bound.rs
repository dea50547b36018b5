//! How much a peer's Automerge bytes would inflate to, found before Automerge parses them
//! (pure). Automerge inflates DEFLATE-compressed chunks and columns without a bound, so one
//! small frame (a compressed change of zeros) could make it allocate gigabytes. ECHO walks
//! the chunk headers and column metadata itself, inflates each compressed part into a
//! counter that stops at the limit, and refuses the message before Automerge sees it.
//!
//! Chunk layout (the Automerge binary format): `magic(4) checksum(4) type(1) len(uleb)`
//! then `len` bytes. Type 0 (document): actors, heads, change column metadata, op column
//! metadata, change data, op data, head indices. Type 1 (change): never has compressed
//! columns (Automerge refuses them). Type 2: a whole change, DEFLATE-compressed. Type 3
//! (bundle): deps, actors, change column metadata and data, op column metadata and data. A
//! column's spec has bit 3 set when its data is DEFLATE-compressed.

use std::io::Read;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const HASH: usize = 32;
const DEFLATE_BIT: u64 = 0b1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoundError {
    #[error("compressed data inflates to more than {0} bytes")]
    TooLarge(u64),
    #[error(
        "a Bloom filter with {bits} bits per entry and {probes} probes (at most {MAX_BLOOM} each, and at least 1)"
    )]
    Bloom { bits: u64, probes: u64 },
    #[error("malformed Automerge chunk: {0}")]
    Malformed(&'static str),
    #[error("the columns declare more than {0} values (operations and changes)")]
    TooManyValues(u64),
}

/// Checks a sequence of chunks (a sync message's changes, or a saved document): their
/// compressed parts together inflate to at most `limit` bytes.
pub fn check<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limit: u64) -> Result<(), BoundError> {
    check_with(chunks, limit, u64::MAX)
}

/// [`check`], and the values all chunks' columns declare (operations, changes) add up to
/// at most `max_values`.
pub fn check_with<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    limit: u64,
    max_values: u64,
) -> Result<(), BoundError> {
    let mut budget = Budget {
        left: limit,
        limit,
        values: 0,
        max_values,
    };
    for bytes in chunks {
        let mut r = Reader(bytes);
        while !r.0.is_empty() {
            chunk(&mut r, &mut budget)?;
        }
    }
    Ok(())
}

/// The most bits per entry and probes a sync message's Bloom filter may ask for. Automerge
/// makes 10 and 7; it trusts the peer's numbers, allocating 4 bytes per probe for every
/// change it looks up (2^32 probes: 16 GiB, an abort) and dividing by the filter's size (0
/// bits: a panic).
pub const MAX_BLOOM: u64 = 64;

/// Checks the Bloom filters of a sync message's `have` entries (each as
/// `BloomFilter::to_bytes`: entries, bits per entry, probes as LEB128, then the bits).
pub fn check_blooms(blooms: impl IntoIterator<Item = Vec<u8>>) -> Result<(), BoundError> {
    for b in blooms {
        let mut r = Reader(&b);
        if r.0.is_empty() {
            continue; // empty filter: no entries
        }
        let entries = r.uleb()?;
        let bits = r.uleb()?;
        let probes = r.uleb()?;
        let ok = |v: u64| (1..=MAX_BLOOM).contains(&v);
        if entries > 0 && !(ok(bits) && ok(probes)) {
            return Err(BoundError::Bloom { bits, probes });
        }
    }
    Ok(())
}

struct Budget {
    left: u64,
    limit: u64,
    /// Values the columns seen so far declare (their run lengths added up), and the most
    /// allowed.
    values: u64,
    max_values: u64,
}

impl Budget {
    /// Inflates `data`, at most what is left of the budget.
    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, BoundError> {
        let decoder = flate2::bufread::DeflateDecoder::new(data);
        let mut out = Vec::new();
        // One byte past the budget tells "over" from "exactly at".
        let n = decoder
            .take(self.left.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|_| BoundError::Malformed("bad DEFLATE data"))? as u64;
        if n > self.left {
            return Err(BoundError::TooLarge(self.limit));
        }
        self.left -= n;
        Ok(out)
    }

    /// Counts what one chunk's columns declare: Automerge walks every value a run length
    /// claims, so a few bytes of runs can stand for billions of operations.
    fn count(&mut self, n: u64) -> Result<(), BoundError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.max_values {
            return Err(BoundError::TooManyValues(self.max_values));
        }
        Ok(())
    }
}

/// The values a column declares, by its type (the spec's low 3 bits): run-length encoded
/// integers and strings (0, 1, 2, 3, 5, 6), booleans as alternating run lengths (4), raw
/// bytes (7: counted by their length, which the message already bounds).
fn column_values(kind: u64, data: &[u8]) -> Result<u64, BoundError> {
    let mut r = Reader(data);
    let mut n: u64 = 0;
    match kind {
        4 => {
            while !r.0.is_empty() {
                n = n.saturating_add(r.uleb()?);
            }
        }
        7 => {}
        _ => {
            while !r.0.is_empty() {
                let run = r.sleb()?;
                if run > 0 {
                    r.value(kind)?;
                    n = n.saturating_add(run.unsigned_abs());
                } else if run < 0 {
                    for _ in 0..run.unsigned_abs() {
                        r.value(kind)?;
                    }
                    n = n.saturating_add(run.unsigned_abs());
                } else {
                    n = n.saturating_add(r.uleb()?); // nulls
                }
            }
        }
    }
    Ok(n)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], BoundError> {
        let n = usize::try_from(n).map_err(|_| BoundError::Malformed("length"))?;
        if n > self.0.len() {
            return Err(BoundError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn uleb(&mut self) -> Result<u64, BoundError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let [b, ..] = *self.take(1)? else {
                return Err(BoundError::Malformed("truncated"));
            };
            v |= u64::from(b & 0x7f)
                .checked_shl(7 * i)
                .ok_or(BoundError::Malformed("LEB128 overflow"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BoundError::Malformed("LEB128 too long"))
    }

    fn sleb(&mut self) -> Result<i64, BoundError> {
        let mut v: i64 = 0;
        let mut shift = 0;
        loop {
            let [b, ..] = *self.take(1)? else {
                return Err(BoundError::Malformed("truncated"));
            };
            if shift >= 64 {
                return Err(BoundError::Malformed("LEB128 too long"));
            }
            v |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1 << shift;
                }
                return Ok(v);
            }
        }
    }

    /// One value of a run-length encoded column of type `kind`.
    fn value(&mut self, kind: u64) -> Result<(), BoundError> {
        match kind {
            3 => self.sleb().map(|_| ()),
            5 => {
                let len = self.uleb()?;
                self.take(len).map(|_| ())
            }
            _ => self.uleb().map(|_| ()),
        }
    }

    /// A count-prefixed list of length-prefixed byte strings (actor ids).
    fn skip_actors(&mut self) -> Result<(), BoundError> {
        let n = self.uleb()?;
        for _ in 0..n {
            let len = self.uleb()?;
            self.take(len)?;
        }
        Ok(())
    }

    /// A count-prefixed list of change hashes.
    fn skip_hashes(&mut self) -> Result<(), BoundError> {
        let n = self.uleb()?;
        self.take(
            n.checked_mul(HASH as u64)
                .ok_or(BoundError::Malformed("count"))?,
        )?;
        Ok(())
    }

    /// Column metadata: (spec, length) pairs.
    fn columns(&mut self) -> Result<Vec<(u64, u64)>, BoundError> {
        let n = self.uleb()?;
        let mut cols = Vec::new();
        for _ in 0..n {
            let spec = self.uleb()?;
            let len = self.uleb()?;
            cols.push((spec, len));
        }
        Ok(cols)
    }

    /// The columns' data, each compressed one inflated into `budget`; returns the most
    /// values any one column declares (the chunk's operations or changes).
    fn column_data(&mut self, cols: &[(u64, u64)], budget: &mut Budget) -> Result<u64, BoundError> {
        let mut most = 0;
        for (spec, len) in cols {
            let data = self.take(*len)?;
            let n = if spec & DEFLATE_BIT != 0 {
                column_values(spec & 0b111, &budget.inflate(data)?)?
            } else {
                column_values(spec & 0b111, data)?
            };
            most = most.max(n);
        }
        Ok(most)
    }
}

fn chunk(r: &mut Reader<'_>, budget: &mut Budget) -> Result<(), BoundError> {
    if r.take(4)? != MAGIC {
        return Err(BoundError::Malformed("not an Automerge chunk"));
    }
    r.take(4)?; // checksum
    let kind = r.take(1)?[0];
    let len = r.uleb()?;
    let mut body = Reader(r.take(len)?);
    match kind {
        0 => {
            body.skip_actors()?;
            body.skip_hashes()?;
            let changes = body.columns()?;
            let ops = body.columns()?;
            let n = body.column_data(&changes, budget)?;
            budget.count(n)?;
            let n = body.column_data(&ops, budget)?;
            budget.count(n)?;
        }
        1 => change(&mut body, budget)?,
        2 => {
            let inflated = budget.inflate(body.0)?;
            change(&mut Reader(&inflated), budget)?;
        }
        3 => {
            body.skip_hashes()?;
            body.skip_actors()?;
            let changes = body.columns()?;
            let n = body.column_data(&changes, budget)?;
            budget.count(n)?;
            let ops = body.columns()?;
            let n = body.column_data(&ops, budget)?;
            budget.count(n)?;
        }
        _ => return Err(BoundError::Malformed("unknown chunk type")),
    }
    Ok(())
}

/// A change chunk's body (after its header): deps, actor, seq, start op, time, message,
/// other actors, then its op columns.
fn change(body: &mut Reader<'_>, budget: &mut Budget) -> Result<(), BoundError> {
    body.skip_hashes()?;
    let actor = body.uleb()?;
    body.take(actor)?;
    body.uleb()?; // seq
    body.uleb()?; // start op
    body.sleb()?; // time
    let message = body.uleb()?;
    body.take(message)?;
    body.skip_actors()?;
    let ops = body.columns()?;
    let n = body.column_data(&ops, budget)?;
    budget.count(n)
}

/// A DEFLATE stream that inflates to `mib` MiB of zeros in about `mib` KiB: a block that
/// ends on a byte boundary (a sync flush), repeated, then an empty final block. For tests.
pub fn zeros_bomb(mib: usize) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut block, flate2::FlushCompress::Sync)
        .expect("compressing into a large enough buffer");
    let mut out = Vec::with_capacity(block.len() * mib + 2);
    for _ in 0..mib {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&[0x03, 0x00]); // final fixed-Huffman block, end of block
    out
}

/// A compressed-change chunk (type 2) around `deflated` (a bad checksum: Automerge
/// inflates before it checks). For tests.
pub fn compressed_chunk(deflated: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[0; 4]);
    out.push(2);
    let mut n = deflated.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(deflated);
    out
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    use super::*;

    #[test]
    fn a_bomb_is_refused_without_inflating_it() {
        let bomb = compressed_chunk(&zeros_bomb(64));
        assert!(bomb.len() < 200 << 10, "{} bytes", bomb.len());
        let start = std::time::Instant::now();
        assert_eq!(
            check([&bomb[..]], 1 << 20),
            Err(BoundError::TooLarge(1 << 20))
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // The bytes inflate exactly as claimed (so Automerge would have inflated them).
        assert_eq!(check([&bomb[..]], 64 << 20), Ok(()));
        assert_eq!(
            check([&bomb[..]], (64 << 20) - 1),
            Err(BoundError::TooLarge((64 << 20) - 1))
        );
    }

    #[test]
    fn real_documents_and_sync_messages_pass_and_are_counted() {
        let mut doc = Automerge::new();
        for i in 0..200 {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("key{i}"), "a value that repeats ".repeat(20))
                .unwrap();
            tx.commit();
        }
        let saved = doc.save(); // compressed columns
        assert_eq!(check([&saved[..]], 1 << 20), Ok(()));
        assert!(matches!(
            check([&saved[..]], 10),
            Err(BoundError::TooLarge(10))
        ));
        let mut state = automerge::sync::State::new();
        use automerge::sync::SyncDoc;
        let mut all = Vec::new();
        while let Some(m) = doc.generate_sync_message(&mut state) {
            all.extend(m.changes.iter().map(<[u8]>::to_vec));
            let mut peer = Automerge::new();
            let mut ps = automerge::sync::State::new();
            peer.receive_sync_message(&mut ps, m).unwrap();
            match peer.generate_sync_message(&mut ps) {
                Some(back) => doc.receive_sync_message(&mut state, back).unwrap(),
                None => break,
            }
        }
        assert_eq!(check(all.iter().map(Vec::as_slice), 1 << 20), Ok(()));
        let one_change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert_eq!(check([&one_change[..]], 0), Ok(()));
    }

    #[test]
    fn bloom_filters_must_ask_for_sane_probes() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", "v").unwrap();
        tx.commit();
        let mut st = automerge::sync::State::new();
        use automerge::sync::SyncDoc;
        let m = doc.generate_sync_message(&mut st).unwrap();
        assert_eq!(
            check_blooms(m.have.iter().map(|h| h.bloom.to_bytes())),
            Ok(())
        );
        assert_eq!(check_blooms([vec![1, 10, 7, 0, 0]]), Ok(()));
        assert!(check_blooms([vec![1, 10, 0xff, 0xff, 0xff, 0xff, 0x0f]]).is_err());
        assert!(check_blooms([vec![1, 0, 7]]).is_err());
        assert!(check_blooms([vec![1, 10, 0]]).is_err());
        assert_eq!(check_blooms([vec![]]), Ok(()));
    }

    /// A change chunk (type 1) of an empty change whose one op column is `column`.
    fn change_chunk(spec: u8, column: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 1, 0xaa, 1, 1, 0, 0, 0, 1, spec];
        body.push(column.len() as u8);
        body.extend_from_slice(column);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[0; 4]);
        out.push(1);
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
        out
    }

    /// From the review of issue 14: a run length of 2^50 in a few bytes stands for 2^50
    /// operations Automerge would walk. Counted, and refused past the limit.
    #[test]
    fn run_lengths_are_counted_before_automerge_walks_them() {
        // sleb(2^50) then the value 1: one run in 9 bytes.
        let run = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0x01];
        let bomb = change_chunk(0x42, &run); // column 4, type 2 (uleb RLE)
        assert_eq!(
            check_with([&bomb[..]], 1 << 20, 1 << 20),
            Err(BoundError::TooManyValues(1 << 20))
        );
        assert_eq!(check_with([&bomb[..]], 1 << 20, 1 << 50), Ok(()));
        // Booleans are runs too; literal runs and nulls count one each.
        let bools = change_chunk(0x44, &[0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(check_with([&bools[..]], 1 << 20, 1 << 20).is_err());
        let literals = change_chunk(0x42, &[0x7d, 1, 2, 3, 0, 5]); // -3: 1 2 3, then 5 nulls
        assert_eq!(check_with([&literals[..]], 1 << 20, 8), Ok(()));
        assert_eq!(
            check_with([&literals[..]], 1 << 20, 7),
            Err(BoundError::TooManyValues(7))
        );
    }

    #[test]
    fn real_changes_count_their_operations() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let text = tx
            .put_object(ROOT, "text", automerge::ObjType::Text)
            .unwrap();
        tx.splice_text(&text, 0, 0, &"x".repeat(5000)).unwrap();
        tx.commit();
        let mut tx = doc.transaction();
        tx.splice_text(&text, 0, 4000, "").unwrap(); // 4000 deletions in few bytes
        tx.commit();
        let changes: Vec<Vec<u8>> = doc
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let all = changes.iter().map(Vec::as_slice);
        assert_eq!(check_with(all.clone(), 1 << 20, 20_000), Ok(()));
        assert!(matches!(
            check_with(all, 1 << 20, 5000),
            Err(BoundError::TooManyValues(5000))
        ));
        let saved = doc.save();
        assert_eq!(check_with([&saved[..]], 1 << 20, 20_000), Ok(()));
        assert!(check_with([&saved[..]], 1 << 20, 4000).is_err());
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bytes in [
            &b"\x85\x6f\x4a\x83"[..],
            b"xxxx",
            &[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 0, 0xff],
        ] {
            assert!(matches!(
                check([bytes], 1 << 20),
                Err(BoundError::Malformed(_))
            ));
        }
    }
}
