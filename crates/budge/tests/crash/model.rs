//! The crash tests' model of a store: the operations a worker performs, the
//! content every written byte must have, and what the table and every byte
//! of every region must be after each committed operation.
//!
//! Content: a byte at region position `p` written by the write with version
//! `v` is `content(v, p)`, never 0; bytes never written (or beyond a length
//! the region was shrunk to and grown back from) are 0. Versions are unique
//! over a whole test run, so a byte that ends up in the wrong region or at
//! the wrong offset is caught.

use std::collections::BTreeMap;
use std::fmt;

use budge::store::Store;

/// A small deterministic PRNG (splitmix64), so runs are reproducible from a
/// seed without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed ^ 0x5EED))
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Log-uniform in `lo..=hi` (`lo >= 1`): as many small values as large.
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
        let x = a + (b - a) * (self.below(1 << 30) as f64 / f64::from(1u32 << 30));
        (x.exp() as u64).clamp(lo, hi)
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Fills `out` with the content of version `ver` from region position `pos`.
pub fn fill(ver: u64, pos: u64, out: &mut [u8]) {
    let key = splitmix(ver);
    let mut p = pos;
    let mut i = 0;
    while i < out.len() {
        let w = splitmix(key ^ (p / 8)).to_le_bytes();
        let k = (p % 8) as usize;
        let n = (8 - k).min(out.len() - i);
        for j in 0..n {
            out[i + j] = w[k + j].max(1);
        }
        i += n;
        p += n as u64;
    }
}

/// One operation of a worker's stream. Printed in the `begin` line and
/// parsed back by the parent, which keeps the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Store::add(name, len, 0)`.
    Add { name: String, len: u64 },
    /// `Store::resize(name, len)`.
    Resize { name: String, len: u64 },
    /// `Store::remove(name)`.
    Remove { name: String },
    /// `Store::rename(from, to)`.
    Rename { from: String, to: String },
    /// Writes `[start, end)` of the region through `bytes_mut` with version
    /// `ver`, then `commit()`.
    Write {
        name: String,
        start: u64,
        end: u64,
        ver: u64,
    },
    /// Writes `chunk` bytes every `stride` bytes of `[start, end)` (leaving
    /// what is between alone, so a sparse region gets one extent per chunk),
    /// then `commit()`.
    Stripe {
        name: String,
        start: u64,
        end: u64,
        stride: u64,
        chunk: u64,
        ver: u64,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Add { name, len } => write!(f, "add {name} {len}"),
            Op::Resize { name, len } => write!(f, "resize {name} {len}"),
            Op::Remove { name } => write!(f, "remove {name}"),
            Op::Rename { from, to } => write!(f, "rename {from} {to}"),
            Op::Write { .. } | Op::Stripe { .. } => {
                let w = self.span().unwrap();
                let (name, start, end, ver) = (w.name, w.start, w.end, w.ver);
                match w.stripe {
                    None => write!(f, "write {name} {start} {end} {ver}"),
                    Some((stride, chunk)) => {
                        write!(f, "stripe {name} {start} {end} {stride} {chunk} {ver}")
                    }
                }
            }
        }
    }
}

impl Op {
    pub fn parse(s: &str) -> Result<Op, String> {
        let w: Vec<&str> = s.split_whitespace().collect();
        let num = |i: usize| -> Result<u64, String> {
            w.get(i)
                .ok_or_else(|| format!("{s:?}: missing field {i}"))?
                .parse()
                .map_err(|e| format!("{s:?}: field {i}: {e}"))
        };
        let name = |i: usize| -> Result<String, String> {
            w.get(i)
                .map(|x| x.to_string())
                .ok_or_else(|| format!("{s:?}: missing name"))
        };
        Ok(match w.first().copied() {
            Some("add") => Op::Add {
                name: name(1)?,
                len: num(2)?,
            },
            Some("resize") => Op::Resize {
                name: name(1)?,
                len: num(2)?,
            },
            Some("remove") => Op::Remove { name: name(1)? },
            Some("rename") => Op::Rename {
                from: name(1)?,
                to: name(2)?,
            },
            Some("write") => Op::Write {
                name: name(1)?,
                start: num(2)?,
                end: num(3)?,
                ver: num(4)?,
            },
            Some("stripe") => Op::Stripe {
                name: name(1)?,
                start: num(2)?,
                end: num(3)?,
                stride: num(4)?,
                chunk: num(5)?,
                ver: num(6)?,
            },
            _ => return Err(format!("unknown op {s:?}")),
        })
    }

    /// Whether the op writes region bytes (an interrupted one may leave
    /// each byte old or new).
    pub fn writes_bytes(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Stripe { .. })
    }

    /// The version a write or stripe writes.
    pub fn version(&self) -> Option<u64> {
        match self {
            Op::Write { ver, .. } | Op::Stripe { ver, .. } => Some(*ver),
            _ => None,
        }
    }

    /// The op's kind, for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Resize { .. } => "resize",
            Op::Remove { .. } => "remove",
            Op::Rename { .. } => "rename",
            Op::Write { .. } => "write",
            Op::Stripe { .. } => "stripe",
        }
    }

    /// A write's or a stripe's fields.
    pub fn span(&self) -> Option<Span<'_>> {
        let (name, start, end, ver, stripe) = match self {
            Op::Write {
                name,
                start,
                end,
                ver,
            } => (name, *start, *end, *ver, None),
            Op::Stripe {
                name,
                start,
                end,
                stride,
                chunk,
                ver,
            } => (name, *start, *end, *ver, Some((*stride, *chunk))),
            _ => return None,
        };
        Some(Span {
            name,
            start,
            end,
            ver,
            stripe,
        })
    }

    /// The chunks `[a, b)` a stripe writes.
    pub fn stripe_chunks(start: u64, end: u64, stride: u64, chunk: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        let mut a = start;
        while a < end {
            v.push((a, (a + chunk).min(end)));
            a += stride.max(1);
        }
        v
    }

    /// Performs the op on a store.
    pub fn run(&self, s: &mut Store) -> budge::Result<()> {
        match self {
            Op::Add { name, len } => s.add(name, *len, 0).map(drop),
            Op::Resize { name, len } => s.resize(name, *len).map(drop),
            Op::Remove { name } => s.remove(name).map(drop),
            Op::Rename { from, to } => s.rename(from, to),
            Op::Write { .. } | Op::Stripe { .. } => {
                let w = self.span().unwrap();
                let b = s.bytes_mut(w.name)?;
                // Top down: on XFS a write past the last extent gets
                // speculative preallocation that would fill a stripe's
                // holes.
                for (a, e) in w.chunks().into_iter().rev() {
                    fill(w.ver, a, &mut b[a as usize..e as usize]);
                }
                s.commit()
            }
        }
    }
}

/// What a write or a stripe writes.
pub struct Span<'a> {
    pub name: &'a str,
    pub start: u64,
    pub end: u64,
    pub ver: u64,
    /// A stripe's `(stride, chunk)`.
    pub stripe: Option<(u64, u64)>,
}

impl Span<'_> {
    /// The chunks `[a, b)` it writes (a write's range is one chunk).
    pub fn chunks(&self) -> Vec<(u64, u64)> {
        match self.stripe {
            Some((stride, chunk)) => Op::stripe_chunks(self.start, self.end, stride, chunk),
            None => vec![(self.start, self.end)],
        }
    }
}

/// One region of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reg {
    pub name: String,
    pub len: u64,
    /// Written intervals: start -> (end, version), disjoint.
    pub data: BTreeMap<u64, (u64, u64)>,
}

impl Reg {
    fn write(&mut self, a: u64, b: u64, ver: u64) {
        if a >= b {
            return;
        }
        let hit: Vec<u64> = self
            .data
            .range(..b)
            .rev()
            .take_while(|(_, (e, _))| *e > a)
            .map(|(&k, _)| k)
            .collect();
        for k in hit {
            let (e, v) = self.data.remove(&k).unwrap();
            if k < a {
                self.data.insert(k, (a, v));
            }
            if e > b {
                self.data.insert(b, (e, v));
            }
        }
        self.data.insert(a, (b, ver));
    }

    fn truncate(&mut self, len: u64) {
        let gone: Vec<u64> = self.data.range(len..).map(|(&k, _)| k).collect();
        for k in gone {
            self.data.remove(&k);
        }
        if let Some((_, (e, _))) = self.data.range_mut(..len).next_back() {
            if *e > len {
                *e = len;
            }
        }
    }

    /// The bytes the region must hold.
    pub fn expected(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        for (&a, &(b, ver)) in &self.data {
            fill(ver, a, &mut v[a as usize..b as usize]);
        }
        v
    }
}

/// The store as the worker's committed operations left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub align: u64,
    pub regions: Vec<Reg>,
}

impl Model {
    pub fn new(align: u64) -> Model {
        Model {
            align,
            regions: Vec::new(),
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    fn get(&mut self, name: &str) -> Result<&mut Reg, String> {
        let i = self
            .find(name)
            .ok_or_else(|| format!("no region {name:?} in the model"))?;
        Ok(&mut self.regions[i])
    }

    /// Names and lengths in file order.
    pub fn table(&self) -> Vec<(String, u64)> {
        self.regions
            .iter()
            .map(|r| (r.name.clone(), r.len))
            .collect()
    }

    pub fn capacity(&self, len: u64) -> u64 {
        len.div_ceil(self.align) * self.align
    }

    /// Total capacity (the file size minus the header).
    pub fn total(&self) -> u64 {
        self.regions.iter().map(|r| self.capacity(r.len)).sum()
    }

    /// Whether `op` changes a capacity (shifts the file).
    pub fn is_structural(&self, op: &Op) -> bool {
        match op {
            Op::Add { len, .. } => *len > 0,
            Op::Remove { name } => self.find(name).is_some_and(|i| self.regions[i].len > 0),
            Op::Resize { name, len } => self
                .find(name)
                .is_some_and(|i| self.capacity(self.regions[i].len) != self.capacity(*len)),
            _ => false,
        }
    }

    /// How many regions a structural `op` moves (0 for anything else, and
    /// for a change to the last region, which only changes the file size).
    pub fn moves(&self, op: &Op) -> usize {
        if !self.is_structural(op) {
            return 0;
        }
        match op {
            Op::Resize { name, .. } | Op::Remove { name } => {
                self.find(name).map_or(0, |i| self.regions.len() - 1 - i)
            }
            _ => 0,
        }
    }

    /// The model after `op`.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Add { name, len } => {
                if self.find(name).is_some() {
                    return Err(format!("add: {name:?} exists"));
                }
                self.regions.push(Reg {
                    name: name.clone(),
                    len: *len,
                    data: BTreeMap::new(),
                });
            }
            Op::Resize { name, len } => {
                let r = self.get(name)?;
                r.truncate(*len);
                r.len = *len;
            }
            Op::Remove { name } => {
                let i = self
                    .find(name)
                    .ok_or_else(|| format!("remove: no {name:?}"))?;
                self.regions.remove(i);
            }
            Op::Rename { from, to } => {
                if self.find(to).is_some() {
                    return Err(format!("rename: {to:?} exists"));
                }
                self.get(from)?.name = to.clone();
            }
            Op::Write { .. } | Op::Stripe { .. } => {
                let w = op.span().unwrap();
                let r = self.get(w.name)?;
                if w.end > r.len {
                    return Err(format!("{} past the end of {:?}", op.kind(), w.name));
                }
                for (a, b) in w.chunks() {
                    r.write(a, b, w.ver);
                }
            }
        }
        Ok(())
    }

    pub fn after(&self, op: &Op) -> Result<Model, String> {
        let mut m = self.clone();
        m.apply(op)?;
        Ok(m)
    }
}

/// How the workers choose operations.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Most regions.
    pub max_regions: usize,
    /// Longest region.
    pub max_len: u64,
    /// Most total capacity.
    pub max_total: u64,
    /// Percent of ops that write bytes (about 14% add, remove or rename;
    /// the rest are resizes, most of them across capacity).
    pub write: u64,
    /// Longest plain write.
    pub max_write: u64,
    /// Stripes: (stride range, chunk) for fragmenting writes.
    pub stripe: (u64, u64, u64),
    /// No stripes while the file has more extents than this (an intent
    /// journal holds at most `format::MAX_JOURNAL`).
    pub max_extents: usize,
    /// Resizes change lengths by a little (keeping the data, so the file
    /// stays fragmented) rather than anything from 0 to `max_len`.
    pub gentle: bool,
    /// Percent of writes that are stripes.
    pub stripe_pct: u64,
}

/// Chooses the next op for a store whose table is `m` (the worker keeps its
/// own model of the table only; the bytes need no tracking to choose ops).
pub fn choose(m: &Model, mix: &Mix, rng: &mut Rng, names: &mut u64, ver: &mut u64) -> Op {
    let a = m.align;
    let mut fresh = |prefix: &str| {
        *names += 1;
        format!("{prefix}{names}")
    };
    let n = m.regions.len();
    let roll = rng.below(100);
    if n < 2 || (roll < 6 && n < mix.max_regions) {
        let max = mix.max_len.min(mix.max_total.saturating_sub(m.total()));
        let len = if mix.gentle {
            rng.below(max / 4 + 1)
        } else {
            pick_len(rng, 0, 0, a, max)
        };
        return Op::Add {
            name: fresh("r"),
            len,
        };
    }
    let r = rng.pick(&m.regions).clone();
    if roll < 10 && n > 2 {
        return Op::Remove { name: r.name };
    }
    if roll < 14 {
        return Op::Rename {
            from: r.name,
            to: fresh("n"),
        };
    }
    if roll < 14 + mix.write && r.len > 0 {
        *ver += 1;
        if rng.chance(mix.stripe_pct) {
            let (lo, hi, chunk) = mix.stripe;
            let stride = rng.range(lo, hi) / a * a;
            let start = rng.below(r.len.min(stride.max(1)));
            return Op::Stripe {
                name: r.name,
                start,
                end: r.len,
                stride: stride.max(a),
                chunk: chunk.min(stride.max(a)),
                ver: *ver,
            };
        }
        let (start, end) = match rng.below(3) {
            0 if r.len <= mix.max_write => (0, r.len),
            1 => {
                let s = rng.below(r.len);
                (s, (s + rng.range(1, 4096)).min(r.len))
            }
            _ => {
                let s = rng.below(r.len);
                (s, (s + rng.log_range(1, mix.max_write)).min(r.len))
            }
        };
        return Op::Write {
            name: r.name,
            start,
            end,
            ver: *ver,
        };
    }
    let cap = m.capacity(r.len);
    let room = mix.max_total.saturating_sub(m.total()) + cap;
    let max = mix.max_len.min(room);
    let len = if mix.gentle {
        gentle_len(rng, r.len, cap, a, max)
    } else {
        pick_len(rng, r.len, cap, a, max)
    };
    Op::Resize { len, name: r.name }
}

/// A new length: within capacity, across it, shrinking, 0, odd and aligned
/// values, at most `max`.
fn pick_len(rng: &mut Rng, len: u64, cap: u64, a: u64, max: u64) -> u64 {
    let v = match rng.below(8) {
        0 if cap > 0 => rng.below(cap + 1),           // within capacity
        1 => 0,                                       // empty
        2 => len + rng.range(1, 4 * a),               // a little more
        3 => len.saturating_sub(rng.range(1, 8 * a)), // a little less
        4 => rng.below(len + 1),                      // shrink
        5 => len + rng.log_range(a, max.max(a)),      // a lot more
        6 => rng.log_range(1, max.max(1)) / a * a,    // aligned
        _ => rng.log_range(1, max.max(1)),            // anything
    };
    v.min(max)
}

/// A new length near the old one: within capacity, or across it by a few
/// blocks to a few MiB either way.
fn gentle_len(rng: &mut Rng, len: u64, cap: u64, a: u64, max: u64) -> u64 {
    let v = match rng.below(6) {
        0 if cap > 0 => rng.below(cap + 1),
        1 | 2 => len + rng.log_range(1, 64 * a),
        3 => len + rng.log_range(a, 4 << 20),
        4 => len.saturating_sub(rng.log_range(1, 64 * a)),
        _ => len.saturating_sub(rng.log_range(a, (len / 4).max(a))),
    };
    v.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_writes_and_truncates() {
        let mut r = Reg {
            name: "x".into(),
            len: 100,
            data: BTreeMap::new(),
        };
        r.write(10, 50, 1);
        r.write(20, 30, 2);
        r.write(45, 60, 3);
        let e = r.expected();
        let mut want = vec![0u8; 100];
        fill(1, 10, &mut want[10..50]);
        fill(2, 20, &mut want[20..30]);
        fill(3, 45, &mut want[45..60]);
        assert_eq!(e, want);
        r.truncate(25);
        r.len = 25;
        assert_eq!(r.expected(), want[..25].to_vec());
        assert!(want[10..60].iter().all(|&b| b != 0));
    }
}
