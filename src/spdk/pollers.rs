//! Background work of one pcache as SPDK pollers on the thread that created
//! it: key-set flushing (the timer), writeback and GC. Writeback I/O goes to
//! the base through that thread's own channel ([`SpdkBase`]).

use std::ffi::{c_int, c_void};
use std::time::Instant;

use spdk_sys as sys;

use super::base_io::SpdkBase;
use super::ffi::guard;
use super::pcache_bdev::PcacheNode;
use crate::{DrainMeter, Pacer, WbProgress};

const KSET_PERIOD_US: u64 = 1000;
const WRITEBACK_PERIOD_US: u64 = 100;
const GC_PERIOD_US: u64 = 1000;

/// What to do when a flush is done, or failed (with why).
pub type FlushDone = Box<dyn FnOnce(Result<(), String>)>;

/// Flushes that ended, with how, to be told once the background state is
/// let go (telling one may delete the pcache).
#[must_use = "run them with tell()"]
pub struct Ended(Vec<(FlushDone, Result<(), String>)>);

impl Ended {
    pub fn tell(self) {
        for (done, r) in self.0 {
            done(r);
        }
    }
}

/// The pollers of one pcache and what they share.
pub struct Background {
    pub base: SpdkBase,
    pollers: Vec<*mut sys::spdk_poller>,
    /// Flushes waiting (bdev_pcache_flush, a delete with flush), each told
    /// once dirty_tail reaches the key-log sequence that was the head when it
    /// arrived.
    flush_waiters: Vec<(FlushDone, u64)>,
    /// Writeback errors counted when the oldest waiting flush arrived.
    flush_errors_at: u64,
    /// Front-end operations seen at the last writeback tick.
    last_ops: u64,
    pacer: Pacer,
    last_error_log: Option<Instant>,
    /// Writeback rates, sampled about once a second.
    pub drain: DrainMeter,
}

impl Background {
    pub fn new(base: SpdkBase) -> Background {
        Background {
            base,
            pollers: Vec::new(),
            flush_waiters: Vec::new(),
            flush_errors_at: 0,
            last_ops: 0,
            pacer: Pacer::default(),
            last_error_log: None,
            drain: DrainMeter::default(),
        }
    }

    /// Starts the pollers on the current thread for `node`.
    ///
    /// # Safety
    /// `node` outlives the pollers (stop() runs before it is freed).
    pub unsafe fn start(&mut self, node: *const PcacheNode) {
        let arg = node as *mut c_void;
        for (f, period) in [
            (kset_poll as unsafe extern "C" fn(*mut c_void) -> c_int, KSET_PERIOD_US),
            (writeback_poll, WRITEBACK_PERIOD_US),
            (gc_poll, GC_PERIOD_US),
        ] {
            self.pollers.push(sys::spdk_poller_register(Some(f), arg, period));
        }
    }

    /// Unregisters the pollers; fails waiting flushes with `why`.
    pub fn stop(&mut self, why: &str) -> Ended {
        for mut p in self.pollers.drain(..) {
            // SAFETY: pollers registered by start() on this thread.
            unsafe { sys::spdk_poller_unregister(&mut p) };
        }
        Ended(self.flush_waiters.drain(..).map(|(d, _)| (d, Err(why.to_string()))).collect())
    }

    /// How many flushes are waiting for writeback.
    pub fn flushes_waiting(&self) -> usize {
        self.flush_waiters.len()
    }

    /// Queues a flush of pcache `name`: `done` is told once every write
    /// completed before it is written back (writes that arrive later do not
    /// hold it up), or at once if its writes cannot be journalled.
    pub fn add_flush_waiter(&mut self, done: FlushDone, cache: &crate::Cache, name: &str) -> Ended {
        if let Err(e) = cache.flush() {
            return Ended(vec![(done, Err(format!("{name}: flush failed: {e}")))]);
        }
        let s = cache.stats();
        if self.flush_waiters.is_empty() {
            self.flush_errors_at = s.writeback_errors;
        }
        self.flush_waiters.push((done, s.key_head.2));
        Ended(Vec::new())
    }

    /// Answers flush requests whose writes are all on the base, or fails them
    /// all if writeback is failing.
    fn answer_flushes(&mut self, node: &PcacheNode, step_error: Option<crate::Error>) -> Ended {
        let s = node.cache.stats();
        let failed = step_error.or_else(|| {
            (s.writeback_errors > self.flush_errors_at)
                .then(|| crate::Error::Io("writing to the base device failed; dirty data stays in the cache".into()))
        });
        if let Some(e) = failed {
            let msg = format!("{}: flush failed: {e}", node.name());
            return Ended(self.flush_waiters.drain(..).map(|(d, _)| (d, Err(msg.clone()))).collect());
        }
        let (done, mut waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flush_waiters).into_iter().partition(|(_, target)| s.dirty_tail.2 >= *target);
        // Writes that bypassed the cache are on the base but maybe not
        // durable there: answer once a base flush covers them.
        if !done.is_empty() && node.cache.flush_bypassed(&self.base) {
            waiting.extend(done);
            self.flush_waiters = waiting;
            return Ended(Vec::new());
        }
        self.flush_waiters = waiting;
        Ended(done.into_iter().map(|(d, _)| (d, Ok(()))).collect())
    }

    /// Logs a background error at most once a second (a failing base device
    /// would otherwise flood the log from a 100 us poller).
    fn log_error(&mut self, what: &str, e: &crate::Error) {
        if self.last_error_log.is_none_or(|t| t.elapsed().as_secs() >= 1) {
            self.last_error_log = Some(Instant::now());
            log::error!("{what}: {e}");
        }
    }
}

fn rc(busy: bool) -> c_int {
    (if busy { sys::SPDK_POLLER_BUSY } else { sys::SPDK_POLLER_IDLE }) as c_int
}

/// A poller that runs one engine step returning how much it did.
///
/// # Safety
/// `arg` is the node the poller was registered for (see Background::start).
unsafe fn counted_step(arg: *mut c_void, what: &str, step: impl FnOnce(&PcacheNode) -> crate::Result<usize>) -> c_int {
    guard(rc(false), || {
        let node = &*(arg as *const PcacheNode);
        match step(node) {
            Ok(n) => rc(n > 0),
            Err(e) => {
                node.bg().log_error(&format!("{}: {what}", node.name()), &e);
                rc(false)
            }
        }
    })
}

unsafe extern "C" fn kset_poll(arg: *mut c_void) -> c_int {
    counted_step(arg, "key-set flush", |n| n.cache.flush_expired_ksets())
}

unsafe extern "C" fn gc_poll(arg: *mut c_void) -> c_int {
    counted_step(arg, "gc", |n| n.cache.gc_step())
}

unsafe extern "C" fn writeback_poll(arg: *mut c_void) -> c_int {
    guard(rc(false), || {
        let node = &*(arg as *const PcacheNode);
        let mut bg = node.bg();
        // Pacing (Cache::writeback_pace): a burst gets the reactor while the
        // cache has room.
        let c = &node.cache;
        let now = Instant::now();
        if bg.drain.due(now) {
            bg.drain.sample(&c.stats(), now);
        }
        let ops = c.io_ops();
        let busy_front = ops != bg.last_ops;
        bg.last_ops = ops;
        let flush_waits = !bg.flush_waiters.is_empty();
        if !bg.pacer.ready(c.writeback_pace(busy_front, flush_waits)) {
            return rc(false);
        }
        let step = node.cache.writeback_step(&bg.base);
        let busy = match &step {
            Ok(p) => *p != WbProgress::Idle,
            Err(e) => {
                bg.log_error(&format!("{}: writeback", node.name()), e);
                false
            }
        };
        if !bg.flush_waiters.is_empty() {
            let ended = bg.answer_flushes(node, step.err());
            drop(bg);
            ended.tell();
        }
        rc(busy)
    })
}
