//! A pmem stand-in that simulates power failure.
//!
//! Every store is applied to the visible contents at once, and recorded per
//! thread as pending cache lines. A thread's [`Media::fence`] makes its pending
//! lines durable (copies them into the durable image). [`CrashSim::crash`]
//! returns the durable image plus an arbitrary, seeded subset of the lines that
//! were stored but never fenced — what real pmem may hold after a power cut.

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use super::{check_range, Media, CACHE_LINE};
use crate::error::Result;

struct State {
    visible: Vec<u8>,
    durable: Vec<u8>,
    /// Lines stored by each thread since its last fence.
    pending: HashMap<ThreadId, HashSet<u64>>,
}

pub struct CrashSim {
    state: Mutex<State>,
    /// Counts stores and fences, so a test can crash at any one of them.
    ops: AtomicU64,
    crash_points: Mutex<CrashPoints>,
}

/// Media operations at which to capture a crash image, and what to call then.
#[derive(Default)]
struct CrashPoints {
    at: Vec<u64>,
    seed: u64,
    hook: Option<CrashHook>,
}

/// Called with the media operation and the image a crash there leaves.
pub type CrashHook = Box<dyn FnMut(u64, Vec<u8>) + Send>;

impl CrashSim {
    pub fn new(len: usize) -> Self {
        Self::from_image(vec![0; len])
    }

    /// Starts from a durable image (for example what a previous crash left).
    pub fn from_image(image: Vec<u8>) -> Self {
        CrashSim {
            state: Mutex::new(State { visible: image.clone(), durable: image, pending: HashMap::new() }),
            ops: AtomicU64::new(0),
            crash_points: Mutex::new(CrashPoints::default()),
        }
    }

    /// Before media operation number `at[i]` (stores and fences, counted from
    /// 0), captures the image a power failure would leave at that instant and
    /// hands it to `hook` with the operation number.
    pub fn set_crash_points(&self, mut at: Vec<u64>, seed: u64, hook: CrashHook) {
        at.sort_unstable();
        at.reverse();
        *self.crash_points.lock().unwrap_or_else(|e| e.into_inner()) = CrashPoints { at, seed, hook: Some(hook) };
    }

    /// Media operations so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn count_op(&self) {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let mut cp = self.crash_points.lock().unwrap_or_else(|e| e.into_inner());
        while cp.at.last() == Some(&n) {
            cp.at.pop();
            let image = self.crash(cp.seed ^ n.wrapping_mul(0x9E37_79B9));
            if let Some(h) = cp.hook.as_mut() {
                h(n, image);
            }
        }
    }

    /// The image after a power failure: durable lines, plus each unfenced line
    /// kept with probability 1/2, chosen by `seed`.
    pub fn crash(&self, seed: u64) -> Vec<u8> {
        let s = self.lock();
        let mut image = s.durable.clone();
        let mut lines: Vec<u64> = s.pending.values().flatten().copied().collect();
        lines.sort_unstable();
        lines.dedup();
        let mut rng = SmallRng::seed_from_u64(seed);
        for line in lines {
            if rng.next_u64() & 1 == 1 {
                let a = (line * CACHE_LINE) as usize;
                let b = (a + CACHE_LINE as usize).min(image.len());
                image[a..b].copy_from_slice(&s.visible[a..b]);
            }
        }
        image
    }

    /// The image as if every store had been fenced (an orderly shutdown).
    pub fn visible_image(&self) -> Vec<u8> {
        self.lock().visible.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Media for CrashSim {
    fn len(&self) -> u64 {
        self.lock().visible.len() as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.lock();
        check_range(s.visible.len() as u64, off, buf.len())?;
        buf.copy_from_slice(&s.visible[off as usize..off as usize + buf.len()]);
        Ok(())
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.count_op();
        let mut s = self.lock();
        check_range(s.visible.len() as u64, off, data.len())?;
        s.visible[off as usize..off as usize + data.len()].copy_from_slice(data);
        let first = off / CACHE_LINE;
        let last = (off + data.len() as u64 - 1) / CACHE_LINE;
        let me = std::thread::current().id();
        let set = s.pending.entry(me).or_default();
        set.extend(first..=last);
        Ok(())
    }

    fn fence(&self) {
        self.count_op();
        let mut s = self.lock();
        let me = std::thread::current().id();
        if let Some(lines) = s.pending.remove(&me) {
            let State { visible, durable, .. } = &mut *s;
            for line in lines {
                let a = (line * CACHE_LINE) as usize;
                let b = (a + CACHE_LINE as usize).min(visible.len());
                durable[a..b].copy_from_slice(&visible[a..b]);
            }
        }
    }
}
