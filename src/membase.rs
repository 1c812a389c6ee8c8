//! A base device in DRAM for tests and tools, behaving like a disk with a
//! volatile write cache.
//!
//! Two ways to complete I/O:
//! - [`MemBase::new`]: inside the submit call (tools, fuzzing);
//! - [`MemBase::device`]: like a real device, which is what the engine's
//!   tests run against. A thread of the device's own completes I/O later, in
//!   any order (picked at random among those in flight), and calls the
//!   completions from that thread. Writes and flushes can fail, at once or
//!   late, and a write that fails late may have written any of its blocks.
//!   A write submitted over bytes another write in flight covers panics:
//!   either could land last, so a host must never do that. Given the cache
//!   media ([`MemBase::read_media_from`]), it takes writeback's data from
//!   there, and ends the process if those bytes change before the write
//!   lands.
//!
//! Either way a flush makes durable exactly the writes that completed before
//! the flush was submitted, and [`MemBase::crash_image`] is what a power cut
//! leaves: the durable image plus any subset of the other writes, including
//! those still in flight. (The engine starts no threads; this device, a
//! stand-in for hardware, does.)

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::base::{BaseDevice, Done, MediaRange, ReadDone};
use crate::error::{Error, Result};
use crate::pmem::Media;

/// Injected failures (per mille of the I/Os of each kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub write_fail_per_mille: u32,
    pub flush_fail_per_mille: u32,
}

impl Faults {
    /// Every write fails: a dying disk.
    pub const DEAD_WRITES: Faults = Faults { write_fail_per_mille: 1000, flush_fail_per_mille: 0 };
}

pub struct MemBase {
    shared: Arc<DeviceState>,
    block_size: u32,
    completer: Option<JoinHandle<()>>,
}

struct DeviceState {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    visible: Vec<u8>,
    durable: Vec<u8>,
    /// Completed writes not yet made durable, with their completion number.
    unflushed: Vec<(u64, u64, Vec<u8>)>,
    /// Writes completed so far (numbers the entries of `unflushed`).
    completed: u64,
    /// Submitted and not completed (device mode only).
    in_flight: VecDeque<Op>,
    faults: Faults,
    rng: SmallRng,
    stop: bool,
    /// Completions held back (device mode): I/O stays in flight.
    held: bool,
    /// The cache media that `write_media` takes data from (none: the
    /// engine copies).
    media: Option<Arc<dyn Media>>,
}

enum Op {
    Write {
        off: u64,
        data: Vec<u8>,
        /// For a write taken from the media: the ranges `data` was read
        /// from, read again when the write lands.
        from: Option<Vec<MediaRange>>,
        fail: bool,
        done: Done,
    },
    /// Makes durable the writes numbered below `upto`.
    Flush {
        upto: u64,
        fail: bool,
        done: Done,
    },
    Read {
        off: u64,
        buf: Vec<u8>,
        done: ReadDone,
    },
}

impl MemBase {
    /// A zeroed device that completes every I/O inside the submit call.
    pub fn new(size: usize, block_size: u32) -> Self {
        Self::from_image(vec![0; size], block_size)
    }

    pub fn from_image(image: Vec<u8>, block_size: u32) -> Self {
        MemBase { shared: Self::shared(image, 0), block_size, completer: None }
    }

    /// A zeroed device that completes I/O later, in any order, from a thread
    /// of its own; `seed` drives its choices.
    pub fn device(size: usize, block_size: u32, seed: u64) -> Self {
        Self::device_from_image(vec![0; size], block_size, seed)
    }

    pub fn device_from_image(image: Vec<u8>, block_size: u32, seed: u64) -> Self {
        let shared = Self::shared(image, seed);
        let s = shared.clone();
        let completer = std::thread::Builder::new()
            .name("membase-completer".into())
            .spawn(move || complete_loop(&s, block_size))
            .expect("spawn the device's completion thread");
        MemBase { shared, block_size, completer: Some(completer) }
    }

    fn shared(image: Vec<u8>, seed: u64) -> Arc<DeviceState> {
        Arc::new(DeviceState {
            state: Mutex::new(State {
                visible: image.clone(),
                durable: image,
                unflushed: Vec::new(),
                completed: 0,
                in_flight: VecDeque::new(),
                faults: Faults::default(),
                rng: SmallRng::seed_from_u64(seed ^ 0x5eed_ba5e),
                stop: false,
                held: false,
                media: None,
            }),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The contents as a power failure would leave them if no unflushed write survived.
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The contents after a power failure at this instant: the durable image
    /// plus an arbitrary (seeded) subset of the later writes, completed or in flight.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let s = self.lock();
        let mut img = s.durable.clone();
        let mut rng = SmallRng::seed_from_u64(seed);
        let in_flight = s.in_flight.iter().filter_map(|op| match op {
            Op::Write { off, data, .. } => Some((*off, data)),
            _ => None,
        });
        for (off, data) in s.unflushed.iter().map(|(_, o, d)| (*o, d)).chain(in_flight) {
            if rng.next_u64() & 1 == 1 {
                img[off as usize..off as usize + data.len()].copy_from_slice(data);
            }
        }
        img
    }

    /// What a read sees now (completed writes only).
    pub fn visible_image(&self) -> Vec<u8> {
        self.lock().visible.clone()
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    /// Makes every later write fail with an I/O error (a dying disk), or not.
    pub fn set_fail_writes(&self, fail: bool) {
        self.set_faults(if fail { Faults::DEAD_WRITES } else { Faults::default() });
    }

    /// Lets writeback hand this device ranges of `media` instead of copies
    /// (`write_media`), as a base that reads the cache's memory itself
    /// does. The data is read when the write is submitted and again when it
    /// lands, and a difference panics: the engine stored into a range a base
    /// write was still reading.
    pub fn read_media_from(&self, media: Arc<dyn Media>) {
        self.lock().media = Some(media);
    }

    /// Holds back every completion until released (device mode), so a test
    /// can look at what a host has in flight at once.
    pub fn hold_completions(&self, held: bool) {
        self.lock().held = held;
        self.shared.wake.notify_all();
    }

    /// Bytes of the writes submitted and not yet completed.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_writes().iter().map(|w| w.1).sum()
    }

    /// Offset and length of each write submitted and not yet completed.
    pub fn in_flight_writes(&self) -> Vec<(u64, u64)> {
        let s = self.lock();
        s.in_flight
            .iter()
            .filter_map(|o| if let Op::Write { off, data, .. } = o { Some((*off, data.len() as u64)) } else { None })
            .collect()
    }

    /// I/Os submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    fn is_device(&self) -> bool {
        self.completer.is_some()
    }

    /// Queues `op` for the completion thread, or completes it now.
    fn submit(&self, op: Op) {
        if self.is_device() {
            let mut s = self.lock();
            if let Op::Write { off, data, .. } = &op {
                // The device completes in any order, so two writes in flight
                // over the same bytes leave either one's data: the host lost
                // track of a write it still has out. A test device says so.
                let end = off + data.len() as u64;
                let overlapping = s.in_flight.iter().any(|o| match o {
                    Op::Write { off: o, data: d, .. } => *o < end && *off < o + d.len() as u64,
                    _ => false,
                });
                assert!(!overlapping, "a write at {off} was submitted over a write still in flight");
            }
            s.in_flight.push_back(op);
            drop(s);
            self.shared.wake.notify_one();
        } else {
            let c = apply(&mut self.lock(), op, self.block_size);
            c.call();
        }
    }
}

impl Drop for MemBase {
    fn drop(&mut self) {
        if let Some(t) = self.completer.take() {
            self.lock().stop = true;
            self.shared.wake.notify_all();
            let _ = t.join();
        }
    }
}

/// Draws whether an I/O fails, per mille.
fn draw(rng: &mut SmallRng, per_mille: u32) -> bool {
    per_mille > 0 && (rng.next_u64() % 1000) < per_mille as u64
}

impl BaseDevice for MemBase {
    fn size(&self) -> u64 {
        self.lock().visible.len() as u64
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn write(&self, offset: u64, data: Vec<u8>, done: Done) {
        self.write_op(offset, data, None, done)
    }
    fn write_media(&self, offset: u64, parts: &[MediaRange], done: Done) -> std::result::Result<(), Done> {
        let Some(media) = self.lock().media.clone() else { return Err(done) };
        match read_ranges(&*media, parts) {
            Ok(data) => self.write_op(offset, data, Some(parts.to_vec()), done),
            Err(e) => done(Err(e)),
        }
        Ok(())
    }
    fn flush(&self, done: Done) {
        let (upto, fail, at_once) = {
            let mut s = self.lock();
            let p = s.faults.flush_fail_per_mille;
            let fail = draw(&mut s.rng, p);
            (s.completed, fail, fail && (!self.is_device() || s.rng.next_u64() & 1 == 0))
        };
        if at_once {
            return done(Err(Error::Io("base flush failed (injected)".into())));
        }
        self.submit(Op::Flush { upto, fail, done });
    }
    fn read(&self, offset: u64, buf: Vec<u8>, done: ReadDone) {
        self.submit(Op::Read { off: offset, buf, done });
    }
}

impl MemBase {
    fn write_op(&self, offset: u64, data: Vec<u8>, from: Option<Vec<MediaRange>>, done: Done) {
        let (fail, at_once) = {
            let mut s = self.lock();
            let p = s.faults.write_fail_per_mille;
            let fail = draw(&mut s.rng, p);
            (fail, fail && (!self.is_device() || s.rng.next_u64() & 1 == 0))
        };
        if at_once {
            return done(Err(Error::Io(format!("base write at {offset} failed (injected)"))));
        }
        self.submit(Op::Write { off: offset, data, from, fail, done });
    }
}

/// The bytes of `parts`, back to back.
fn read_ranges(media: &dyn Media, parts: &[MediaRange]) -> Result<Vec<u8>> {
    let mut data = vec![0u8; parts.iter().map(|p| p.len as usize).sum()];
    let mut at = 0;
    for p in parts {
        media.read(p.off, &mut data[at..at + p.len as usize])?;
        at += p.len as usize;
    }
    Ok(data)
}

/// A completion to call once the state's lock is released.
enum Completion {
    Io(Done, Result<()>),
    Read(ReadDone, Vec<u8>, Result<()>),
}

impl Completion {
    fn call(self) {
        match self {
            Completion::Io(d, r) => d(r),
            Completion::Read(d, b, r) => d(b, r),
        }
    }
}

/// Carries out `op` on the device's contents.
fn apply(s: &mut State, op: Op, block_size: u32) -> Completion {
    match op {
        Op::Write { off, data, from, fail, done } => {
            if let (Some(parts), Some(media)) = (from, &s.media) {
                // Checked on the device's thread, where a panic would only
                // leave the host waiting: end the process instead.
                if read_ranges(&**media, &parts).ok().as_ref() != Some(&data) {
                    eprintln!("membase: the media under a base write at {off} changed before the write landed");
                    std::process::abort();
                }
            }
            let end = off as usize + data.len();
            if end > s.visible.len() {
                return Completion::Io(done, Err(Error::Io(format!("base write beyond end at {off}"))));
            }
            if fail {
                // A write that fails late may have written any of its blocks.
                let bs = block_size as usize;
                for b in (0..data.len()).step_by(bs) {
                    if s.rng.next_u64() & 1 == 1 {
                        let n = bs.min(data.len() - b);
                        let at = off as usize + b;
                        s.visible[at..at + n].copy_from_slice(&data[b..b + n]);
                        let seq = s.completed;
                        s.completed += 1;
                        s.unflushed.push((seq, at as u64, data[b..b + n].to_vec()));
                    }
                }
                return Completion::Io(done, Err(Error::Io(format!("base write at {off} failed (injected)"))));
            }
            s.visible[off as usize..end].copy_from_slice(&data);
            let seq = s.completed;
            s.completed += 1;
            s.unflushed.push((seq, off, data));
            Completion::Io(done, Ok(()))
        }
        Op::Flush { upto, fail, done } => {
            if fail {
                return Completion::Io(done, Err(Error::Io("base flush failed (injected)".into())));
            }
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut s.unflushed).into_iter().partition(|w| w.0 < upto);
            for (_, off, data) in now {
                s.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
            }
            s.unflushed = later;
            Completion::Io(done, Ok(()))
        }
        Op::Read { off, mut buf, done } => {
            let end = off as usize + buf.len();
            if end > s.visible.len() {
                return Completion::Read(done, buf, Err(Error::Io(format!("base read beyond end at {off}"))));
            }
            buf.copy_from_slice(&s.visible[off as usize..end]);
            Completion::Read(done, buf, Ok(()))
        }
    }
}

/// The device's completion thread: completes in-flight I/O in random order,
/// sometimes after a pause, until the device is dropped (finishing what is
/// in flight first, so every completion is called).
fn complete_loop(shared: &DeviceState, block_size: u32) {
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        while (s.in_flight.is_empty() || s.held) && !s.stop {
            s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.in_flight.is_empty() {
            return;
        }
        // Now and then let I/O pile up, so several are in flight at once.
        if s.rng.next_u64() % 8 == 0 && !s.stop {
            drop(s);
            std::thread::sleep(Duration::from_micros(20));
            s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.held && !s.stop {
                continue;
            }
        }
        let i = (s.rng.next_u64() % s.in_flight.len() as u64) as usize;
        let op = s.in_flight.swap_remove_back(i).expect("index is in range");
        let c = apply(&mut s, op, block_size);
        drop(s);
        c.call();
        s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    }
}
