//! Promotion: which read misses are worth a place in the cache.
//!
//! A fill costs a pmem write and an index insert now, and once the cache is
//! full it pushes out other data and gives GC work. For a random read over a
//! set larger than the cache most fills are never read again, and a read
//! served by a fast base costs more with the fill than without. So, as OCF's
//! "nhit" policy does, once the cache has filled a miss is cached only when
//! its block has missed `hits` times recently; while the cache has room,
//! every miss is cached.
//!
//! "Recently" is a fixed table of counters, one slot per block of the
//! cache's size, each holding a tag of the block it counts for. A block
//! that hashes to a slot another block holds starts the count again, so a
//! block is promoted only when it misses `hits` times before as many other
//! blocks' misses land in its slot: read again soon, relative to the cache's
//! size. The table is a heuristic: updates race without harm.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering::Relaxed};

use crate::error::{Error, Result};

/// When a read miss is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Every miss (as long as read caching is on).
    Always,
    /// Once the cache has filled, a miss whose block has missed `hits` times
    /// recently (2 or more).
    Nhit { hits: u8 },
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion::Nhit { hits: DEFAULT_HITS }
    }
}

/// OCF's default insertion threshold.
pub const DEFAULT_HITS: u8 = 3;
pub const MIN_HITS: u8 = 2;
/// The policies by the names hosts use.
pub const NAMES: [&str; 2] = ["always", "nhit"];

impl Promotion {
    /// The policy `name` (one of [`NAMES`]) with `hits` for nhit (its
    /// default if None).
    pub fn parse(name: &str, hits: Option<u64>) -> Result<Promotion> {
        match name {
            "always" if hits.is_none() => Ok(Promotion::Always),
            "always" => Err(Error::InvalidArgument("promotion_hits applies to promotion \"nhit\" only".into())),
            "nhit" => {
                let hits = hits.unwrap_or(DEFAULT_HITS as u64);
                if !(MIN_HITS as u64..=u8::MAX as u64).contains(&hits) {
                    return Err(Error::InvalidArgument(format!(
                        "promotion_hits {hits} is not between {MIN_HITS} and {}",
                        u8::MAX
                    )));
                }
                Ok(Promotion::Nhit { hits: hits as u8 })
            }
            other => Err(Error::InvalidArgument(format!(
                "promotion \"{other}\" is not one of {}",
                NAMES.map(|n| format!("\"{n}\"")).join(", ")
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Promotion::Always => NAMES[0],
            Promotion::Nhit { .. } => NAMES[1],
        }
    }

    /// Misses a block needs before it is cached (1: the first).
    pub fn hits(&self) -> u8 {
        match self {
            Promotion::Always => 1,
            Promotion::Nhit { hits } => *hits,
        }
    }
}

/// Granule the counters count (a block of the usual 4 KiB).
const BLOCK_SHIFT: u32 = 12;
const MIN_SLOTS: usize = 1 << 12;
const MAX_SLOTS: usize = 1 << 22;
/// A slot: 7 bits of the block's tag above a set bit (an empty slot is 0),
/// its count in the low byte. Two bytes, so that the table of a large cache
/// still stays mostly in the CPU's cache: every miss looks at it.
const COUNT_MASK: u16 = 0xff;

pub(crate) struct Promoter {
    /// Misses a block needs (1: always promote).
    hits: AtomicU8,
    slots: Box<[AtomicU16]>,
}

impl Promoter {
    /// A promoter for a cache of `cache_bytes` of data space.
    pub fn new(policy: Promotion, cache_bytes: u64) -> Self {
        let n = ((cache_bytes >> BLOCK_SHIFT) as usize).clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two();
        Promoter { hits: AtomicU8::new(policy.hits()), slots: (0..n).map(|_| AtomicU16::new(0)).collect() }
    }

    pub fn policy(&self) -> Promotion {
        match self.hits.load(Relaxed) {
            0 | 1 => Promotion::Always,
            hits => Promotion::Nhit { hits },
        }
    }

    pub fn set_policy(&self, p: Promotion) {
        self.hits.store(p.hits(), Relaxed);
    }

    /// Hints the CPU to fetch the counter of the block at `off`, for an
    /// [`Promoter::admit`] of it once the base has answered: the table is too
    /// large to stay in the CPU's cache, and the lookup would wait for it.
    pub fn hint(&self, off: u64) {
        if self.hits.load(Relaxed) > 1 {
            // A load whose value nobody waits for: the CPU goes on while the
            // line comes in (a prefetch, without an intrinsic's `unsafe`).
            std::hint::black_box(self.slots[Self::slot_of(off, self.slots.len())].load(Relaxed));
        }
    }

    /// The slot of the block at `off`, and its hash.
    fn slot_of(off: u64, slots: usize) -> usize {
        (Self::hash(off) >> 40) as usize & (slots - 1)
    }

    fn hash(off: u64) -> u64 {
        (off >> BLOCK_SHIFT).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Whether a miss at `off` is cached; `full` says whether the cache has
    /// filled (before that, every miss is).
    pub fn admit(&self, off: u64, full: bool) -> bool {
        let hits = self.hits.load(Relaxed) as u16;
        if hits <= 1 || !full {
            return true;
        }
        let h = Self::hash(off);
        let slot = &self.slots[Self::slot_of(off, self.slots.len())];
        // Tag: other bits of the hash than the slot's; a false match (1 in
        // 128) only promotes a block a miss early.
        let tag = ((h as u16) & !COUNT_MASK) | 0x100;
        let cur = slot.load(Relaxed);
        let count = if cur & !COUNT_MASK == tag { (cur & COUNT_MASK) + 1 } else { 1 };
        if count >= hits {
            // Promoted: the block starts over if it is ever dropped again.
            slot.store(0, Relaxed);
            true
        } else {
            slot.store(tag | count, Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhit_promotes_on_the_nth_miss_once_full() {
        let p = Promoter::new(Promotion::Nhit { hits: 3 }, 1 << 30);
        assert!(p.admit(4096, false), "a cache with room takes every miss");
        assert!(!p.admit(8192, true));
        assert!(!p.admit(8192, true));
        assert!(p.admit(8192, true), "third miss");
        assert!(!p.admit(8192, true), "counts again after a promotion");
    }

    #[test]
    fn a_block_read_once_is_not_promoted() {
        let p = Promoter::new(Promotion::Nhit { hits: 2 }, 64 << 20);
        let once = (0..100_000u64).filter(|b| p.admit(b << 12, true)).count();
        assert_eq!(once, 0);
        let again = (0..100_000u64).filter(|b| p.admit(b << 12, true)).count();
        // The table holds one slot per block of a 64 MiB cache: most of the
        // 100 000 blocks lost their slot to another before they came back.
        assert!(again < 20_000, "{again} of 100 000 promoted on a second pass");
        assert_eq!(Promoter::new(Promotion::Always, 1 << 20).policy(), Promotion::Always);
    }

    #[test]
    fn parse_names_and_bounds() {
        assert_eq!(Promotion::parse("always", None).unwrap(), Promotion::Always);
        assert_eq!(Promotion::parse("nhit", None).unwrap(), Promotion::Nhit { hits: 3 });
        assert_eq!(Promotion::parse("nhit", Some(5)).unwrap(), Promotion::Nhit { hits: 5 });
        for (name, hits) in [("nhit", Some(1)), ("nhit", Some(256)), ("always", Some(3)), ("lru", None)] {
            assert!(Promotion::parse(name, hits).is_err(), "{name} {hits:?}");
        }
    }
}
