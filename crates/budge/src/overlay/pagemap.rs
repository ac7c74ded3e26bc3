//! The page map in memory: 2 bits per page, laid out exactly as the on-disk
//! blocks' payloads, with per-copy dirty tracking so a flush writes only the
//! blocks that differ from the copy it overwrites.

use super::format::{ENTRIES_PER_BLOCK, PAYLOAD};

/// What one page of the overlay holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Nothing: reads show the layer below.
    Absent,
    /// Copied up: reads come from the overlay's data.
    Present,
    /// Reads as zeros; no data stored.
    Zero,
}

impl PageState {
    fn bits(self) -> u8 {
        match self {
            PageState::Absent => 0,
            PageState::Present => 1,
            PageState::Zero => 2,
        }
    }

    fn from_bits(b: u8) -> Option<PageState> {
        match b {
            0 => Some(PageState::Absent),
            1 => Some(PageState::Present),
            2 => Some(PageState::Zero),
            _ => None,
        }
    }

    /// Four pages of this state in one byte.
    fn fill_byte(self) -> u8 {
        self.bits() * 0x55
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            PageState::Absent => "absent",
            PageState::Present => "data",
            PageState::Zero => "zero",
        }
    }
}

/// The map of `pages` pages.
#[derive(Clone, Debug)]
pub(crate) struct PageMap {
    pages: u64,
    bits: Vec<u8>,
    /// Per on-disk copy: blocks that differ from what that copy holds.
    dirty: [Vec<bool>; 2],
}

impl PageMap {
    /// All pages absent; both on-disk copies considered stale.
    pub fn new(pages: u64, blocks: u32) -> PageMap {
        let blocks = blocks as usize;
        PageMap {
            pages,
            bits: vec![0; blocks * PAYLOAD],
            dirty: [vec![true; blocks], vec![true; blocks]],
        }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn blocks(&self) -> usize {
        self.dirty[0].len()
    }

    /// Loads block `b` from disk; `Err(page)` names the first invalid entry.
    pub fn load_block(&mut self, b: usize, payload: &[u8]) -> Result<(), u64> {
        let start = b * PAYLOAD;
        self.bits[start..start + PAYLOAD].copy_from_slice(&payload[..PAYLOAD]);
        let first = b as u64 * ENTRIES_PER_BLOCK;
        for i in first..first + ENTRIES_PER_BLOCK {
            let raw = self.raw(i);
            if raw == 3 || (i >= self.pages && raw != 0) {
                return Err(i);
            }
        }
        Ok(())
    }

    /// Marks copy `slot` as holding exactly this map (after loading it).
    pub fn mark_clean(&mut self, slot: usize) {
        self.dirty[slot].iter_mut().for_each(|d| *d = false);
    }

    fn raw(&self, i: u64) -> u8 {
        (self.bits[(i / 4) as usize] >> ((i % 4) * 2)) & 3
    }

    pub fn get(&self, i: u64) -> PageState {
        PageState::from_bits(self.raw(i)).unwrap_or(PageState::Absent)
    }

    /// Sets pages `[start, end)`; returns how many changed.
    pub fn set(&mut self, start: u64, end: u64, state: PageState) -> u64 {
        let end = end.min(self.pages);
        let mut changed = 0;
        let mut i = start;
        let fill = state.fill_byte();
        while i < end {
            if i % 4 == 0 && end - i >= 4 {
                let byte = &mut self.bits[(i / 4) as usize];
                if *byte != fill {
                    changed += (0..4)
                        .filter(|k| (*byte >> (k * 2)) & 3 != state.bits())
                        .count() as u64;
                    *byte = fill;
                    self.touch(i);
                }
                i += 4;
                continue;
            }
            if self.raw(i) != state.bits() {
                let shift = (i % 4) * 2;
                let byte = &mut self.bits[(i / 4) as usize];
                *byte = (*byte & !(3 << shift)) | (state.bits() << shift);
                changed += 1;
                self.touch(i);
            }
            i += 1;
        }
        changed
    }

    fn touch(&mut self, page: u64) {
        let b = (page / ENTRIES_PER_BLOCK) as usize;
        self.dirty[0][b] = true;
        self.dirty[1][b] = true;
    }

    /// Blocks copy `slot` lacks.
    pub fn dirty_blocks(&self, slot: usize) -> Vec<usize> {
        (0..self.blocks())
            .filter(|&b| self.dirty[slot][b])
            .collect()
    }

    /// After block `b` of copy `slot` was written and synced.
    pub fn written(&mut self, slot: usize, b: usize) {
        self.dirty[slot][b] = false;
    }

    pub fn payload(&self, b: usize) -> &[u8] {
        &self.bits[b * PAYLOAD..(b + 1) * PAYLOAD]
    }

    /// Runs of equal state in pages `[start, end)`, in order:
    /// `(first page, end page, state)`.
    pub fn runs(&self, start: u64, end: u64) -> Runs<'_> {
        Runs {
            map: self,
            at: start,
            end: end.min(self.pages),
        }
    }

    /// Pages in each state: (present, zero).
    pub fn counts(&self) -> (u64, u64) {
        let (mut p, mut z) = (0, 0);
        for (s, e, st) in self.runs(0, self.pages) {
            match st {
                PageState::Present => p += e - s,
                PageState::Zero => z += e - s,
                PageState::Absent => {}
            }
        }
        (p, z)
    }
}

/// Iterator of [`PageMap::runs`].
pub(crate) struct Runs<'a> {
    map: &'a PageMap,
    at: u64,
    end: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64, PageState);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let start = self.at;
        let state = self.map.get(start);
        let fill = state.fill_byte();
        let mut i = start + 1;
        while i < self.end {
            if i % 4 == 0 && self.end - i >= 4 && self.map.bits[(i / 4) as usize] == fill {
                i += 4;
                continue;
            }
            if self.map.get(i) != state {
                break;
            }
            i += 1;
        }
        self.at = i;
        Some((start, i, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_vector_model(ops in proptest::collection::vec((0u64..40_000, 0u64..300, 0u8..3), 1..60)) {
            let pages = 33_000;
            let mut m = PageMap::new(pages, 3);
            let mut model = vec![PageState::Absent; pages as usize];
            for (s, n, st) in ops {
                let st = PageState::from_bits(st).unwrap();
                let e = (s + n).min(pages);
                let s = s.min(pages);
                let want = (s..e).filter(|&i| model[i as usize] != st).count() as u64;
                prop_assert_eq!(m.set(s, e, st), want);
                for i in s..e { model[i as usize] = st; }
            }
            let mut i = 0;
            for (s, e, st) in m.runs(0, pages) {
                prop_assert_eq!(s, i);
                prop_assert!(e > s);
                for k in s..e { prop_assert_eq!(model[k as usize], st); }
                if e < pages { prop_assert_ne!(model[e as usize], st); }
                i = e;
            }
            prop_assert_eq!(i, pages);
            let mut copy = PageMap::new(pages, 3);
            for b in 0..3 { copy.load_block(b, m.payload(b)).unwrap(); }
            for k in 0..pages { prop_assert_eq!(copy.get(k), model[k as usize]); }
        }
    }

    #[test]
    fn dirty_tracking_is_per_copy() {
        let mut m = PageMap::new(40_000, 3);
        m.mark_clean(0);
        m.mark_clean(1);
        m.set(16_320, 16_321, PageState::Present);
        assert_eq!(m.dirty_blocks(0), vec![1]);
        m.written(0, 1);
        assert_eq!(m.dirty_blocks(0), Vec::<usize>::new());
        assert_eq!(m.dirty_blocks(1), vec![1]);
    }

    #[test]
    fn invalid_entries_are_refused() {
        let mut m = PageMap::new(10, 1);
        let mut p = vec![0u8; PAYLOAD];
        p[0] = 3;
        assert_eq!(m.load_block(0, &p), Err(0));
        let mut p = vec![0u8; PAYLOAD];
        p[3] = 1; // page 12 is past the end
        assert_eq!(m.load_block(0, &p), Err(12));
    }
}
