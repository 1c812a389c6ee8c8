//! Background work of one pcache as SPDK pollers on the thread that created
//! it: key-set flushing (the timer), writeback and GC. Writeback I/O goes to
//! the base through that thread's own channel ([`SpdkBase`]). Channels on
//! other cores plan writeback's batches ([`PlanHelper`]): planning is most
//! of writeback's work, and the pollers' core also serves its share of I/O.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use spdk_sys as sys;

use super::base_io::SpdkBase;
use super::ffi::guard;
use super::trace::{self, Tp};
use crate::{Cache, DrainMeter, Pacer, WbProgress, WritebackHelper};

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

/// The background work of one pcache: the cache its pollers step, and
/// their state while they run. Lives in the pcache's node, which is never
/// moved, so the pollers hold a pointer to it.
pub struct Background {
    name: String,
    cache: Arc<Cache>,
    /// Present from start() until stop().
    state: Mutex<Option<BgState>>,
    /// The core the pollers run on (u32::MAX before start()).
    home_core: AtomicU32,
    /// From start() until halt(): planning helpers work only meanwhile.
    running: Arc<AtomicBool>,
}

/// What the pollers of one pcache share.
struct BgState {
    base: SpdkBase,
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
    /// The background work of `cache`, writing back through `base` (a
    /// channel of the base bdev on the current thread).
    pub fn new(name: &str, cache: Arc<Cache>, base: SpdkBase) -> Background {
        let state = BgState {
            base,
            pollers: Vec::new(),
            flush_waiters: Vec::new(),
            flush_errors_at: 0,
            last_ops: 0,
            pacer: Pacer::default(),
            last_error_log: None,
            drain: DrainMeter::default(),
        };
        Background {
            name: name.to_string(),
            cache,
            state: Mutex::new(Some(state)),
            home_core: AtomicU32::new(u32::MAX),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<BgState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the pollers on the current thread.
    ///
    /// # Safety
    /// `self` is not moved, and outlives the pollers: stop() runs before it
    /// is dropped.
    pub unsafe fn start(&self) {
        // SAFETY: a plain query of the SPDK environment.
        self.home_core.store(unsafe { sys::spdk_env_get_current_core() }, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
        let arg = self as *const Background as *mut c_void;
        if let Some(st) = self.lock().as_mut() {
            for (f, period) in [
                (kset_poll as unsafe extern "C" fn(*mut c_void) -> c_int, KSET_PERIOD_US),
                (writeback_poll, WRITEBACK_PERIOD_US),
                (gc_poll, GC_PERIOD_US),
            ] {
                // SAFETY: arg is self, which is not moved and outlives the pollers (caller's
                // contract); pollers run on this thread, the one that registers them here.
                st.pollers.push(unsafe { sys::spdk_poller_register(Some(f), arg, period) });
            }
        }
    }

    /// Unregisters the pollers and fails waiting flushes with `why`. The
    /// base channel stays: writeback I/O in flight completes on it (see
    /// [`Background::outstanding`]).
    pub fn halt(&self, why: &str) {
        self.running.store(false, Ordering::Release);
        let ended = match self.lock().as_mut() {
            Some(st) => st.stop(why),
            None => return,
        };
        ended.tell();
    }

    /// Halts (if not yet) and gives back the base channel, on the thread
    /// that created it. Does nothing the second time.
    pub fn stop(&self, why: &str) {
        self.running.store(false, Ordering::Release);
        let Some(mut st) = self.lock().take() else { return };
        let ended = st.stop(why);
        // SAFETY: the channel was got on this thread for this state, and
        // nothing uses it once the pollers are gone.
        unsafe { sys::spdk_put_io_channel(st.base.channel()) };
        drop(st);
        ended.tell();
    }

    /// A planning helper polling on the current thread, if it runs on
    /// another core than the pollers; the caller drops it on this thread.
    pub fn plan_helper(&self) -> Option<Box<PlanHelper>> {
        // SAFETY: a plain query of the SPDK environment.
        let core = unsafe { sys::spdk_env_get_current_core() };
        if core == self.home_core.load(Ordering::Relaxed) {
            return None;
        }
        let h = Box::new(PlanHelper {
            name: self.name.clone(),
            helper: self.cache.writeback_helper(),
            running: self.running.clone(),
            poller: Cell::new(std::ptr::null_mut()),
            last_error_log: Cell::new(None),
        });
        let arg = &*h as *const PlanHelper as *mut c_void;
        // SAFETY: arg is the boxed helper, which does not move and unregisters
        // the poller when dropped, on this thread (the caller's contract).
        h.poller.set(unsafe { sys::spdk_poller_register(Some(plan_poll), arg, WRITEBACK_PERIOD_US) });
        Some(h)
    }

    /// Writeback writes and flushes in flight to the base.
    pub fn outstanding(&self) -> usize {
        self.lock().as_ref().map_or(0, |st| st.base.outstanding())
    }

    /// Writeback rates (zero once stopped).
    pub fn drain_rates(&self) -> crate::DrainRates {
        self.lock().as_ref().map(|st| st.drain.rates()).unwrap_or_default()
    }

    /// How many flushes are waiting for writeback.
    pub fn flushes_waiting(&self) -> usize {
        self.lock().as_ref().map_or(0, |st| st.flush_waiters.len())
    }

    /// Queues a flush: `done` is told once every write completed before it
    /// is written back (writes that arrive later do not hold it up), or at
    /// once — by the caller, through what this returns — if its writes
    /// cannot be journalled or the pcache is stopping.
    pub fn add_flush_waiter(&self, done: FlushDone) -> Ended {
        match self.lock().as_mut() {
            Some(st) => st.add_flush_waiter(done, &self.cache, &self.name),
            None => Ended(vec![(done, Err(format!("{} is going away", self.name)))]),
        }
    }
}

impl BgState {
    /// Unregisters the pollers; fails waiting flushes with `why`.
    fn stop(&mut self, why: &str) -> Ended {
        for mut p in self.pollers.drain(..) {
            // SAFETY: pollers registered by start() on this thread.
            unsafe { sys::spdk_poller_unregister(&mut p) };
        }
        Ended(self.flush_waiters.drain(..).map(|(d, _)| (d, Err(why.to_string()))).collect())
    }

    /// Queues a flush of pcache `name` (see Background::add_flush_waiter).
    fn add_flush_waiter(&mut self, done: FlushDone, cache: &Cache, name: &str) -> Ended {
        // Nothing written before it may stay off the base (writeback.rs).
        let target = match cache.drain_ticket() {
            Ok(t) => t,
            Err(e) => return Ended(vec![(done, Err(format!("{name}: flush failed: {e}")))]),
        };
        if self.flush_waiters.is_empty() {
            self.flush_errors_at = cache.writeback_errors();
        }
        self.flush_waiters.push((done, target));
        Ended(Vec::new())
    }

    /// Answers flush requests whose writes are all on the base, or fails them
    /// all if writeback is failing.
    fn answer_flushes(&mut self, bg: &Background, step_error: Option<crate::Error>) -> Ended {
        let s = bg.cache.stats();
        let failed = step_error.or_else(|| {
            (s.writeback_errors > self.flush_errors_at)
                .then(|| crate::Error::Io("writing to the base device failed; dirty data stays in the cache".into()))
        });
        if let Some(e) = failed {
            let msg = format!("{}: flush failed: {e}", bg.name);
            return Ended(self.flush_waiters.drain(..).map(|(d, _)| (d, Err(msg.clone()))).collect());
        }
        let (done, mut waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flush_waiters).into_iter().partition(|(_, target)| s.dirty_tail.seq >= *target);
        // Writes that bypassed the cache are on the base but maybe not
        // durable there: answer once a base flush covers them.
        if !done.is_empty() && bg.cache.flush_bypassed(&self.base) {
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
/// `arg` is the Background the poller was registered for (see
/// Background::start), which outlives the poller.
unsafe fn counted_step(arg: *mut c_void, what: &str, step: impl FnOnce(&Cache) -> crate::Result<usize>) -> c_int {
    guard(rc(false), || {
        // SAFETY: arg is the live Background the poller was registered for (caller's contract).
        let bg = unsafe { &*(arg as *const Background) };
        match step(&bg.cache) {
            Ok(n) => rc(n > 0),
            Err(e) => {
                if let Some(st) = bg.lock().as_mut() {
                    st.log_error(&format!("{}: {what}", bg.name), &e);
                }
                rc(false)
            }
        }
    })
}

/// The key-set flushing poller: SPDK passes the Background that Background::start registered it for.
unsafe extern "C" fn kset_poll(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Background start() registered this poller with; stop() unregisters the
    // poller before the Background goes.
    unsafe { counted_step(arg, "key-set flush", |c| c.flush_expired_ksets()) }
}

/// The GC poller: SPDK passes the Background that Background::start registered it for.
unsafe extern "C" fn gc_poll(arg: *mut c_void) -> c_int {
    // SAFETY: as in kset_poll: arg is the Background this poller was registered with, still live.
    unsafe {
        counted_step(arg, "gc", |c| {
            let n = c.gc_step()?;
            if n > 0 {
                trace::record(Tp::GcStep, n as u64, 0);
            }
            Ok(n)
        })
    }
}

/// The writeback poller: SPDK passes the Background that Background::start registered it for.
unsafe extern "C" fn writeback_poll(arg: *mut c_void) -> c_int {
    guard(rc(false), || {
        // SAFETY: arg is the Background start() registered this poller with; stop() unregisters the
        // poller before the Background goes.
        let bg = unsafe { &*(arg as *const Background) };
        let mut guard = bg.lock();
        let Some(st) = guard.as_mut() else { return rc(false) };
        // Pacing (Cache::writeback_pace): a burst gets the reactor while the
        // cache has room.
        let c = &bg.cache;
        let now = Instant::now();
        if st.drain.due(now) {
            st.drain.sample(&c.stats(), now);
        }
        c.sample_full_hits(now);
        let ops = c.io_ops();
        let busy_front = ops != st.last_ops;
        st.last_ops = ops;
        let flush_waits = !st.flush_waiters.is_empty();
        if !st.pacer.ready(c.writeback_pace(busy_front, flush_waits)) {
            return rc(false);
        }
        let step = c.writeback_tick(&st.base);
        let busy = match &step {
            Ok(p) => *p != WbProgress::Idle,
            Err(e) => {
                st.log_error(&format!("{}: writeback", bg.name), e);
                false
            }
        };
        if !st.flush_waiters.is_empty() {
            let ended = st.answer_flushes(bg, step.err());
            drop(guard);
            ended.tell();
        }
        rc(busy)
    })
}

/// Plans writeback's batches on a core other than the pollers' (see
/// [`Background::plan_helper`]), from a poller of its own.
pub struct PlanHelper {
    name: String,
    helper: WritebackHelper,
    running: Arc<AtomicBool>,
    poller: Cell<*mut sys::spdk_poller>,
    last_error_log: Cell<Option<Instant>>,
}

impl Drop for PlanHelper {
    fn drop(&mut self) {
        let mut p = self.poller.replace(std::ptr::null_mut());
        // SAFETY: the poller plan_helper registered on this thread (the drop
        // happens there, per plan_helper's contract).
        unsafe { sys::spdk_poller_unregister(&mut p) };
    }
}

/// The planning helper's poller: SPDK passes the PlanHelper that Background::plan_helper registered it for.
unsafe extern "C" fn plan_poll(arg: *mut c_void) -> c_int {
    guard(rc(false), || {
        // SAFETY: arg is the boxed PlanHelper, which unregisters this poller before it goes.
        let h = unsafe { &*(arg as *const PlanHelper) };
        if !h.running.load(Ordering::Acquire) {
            return rc(false);
        }
        match h.helper.tick() {
            Ok(busy) => rc(busy),
            Err(e) => {
                // The pollers fail waiting flushes with the same error; this
                // only logs it, at most once a second.
                if h.last_error_log.get().is_none_or(|t| t.elapsed().as_secs() >= 1) {
                    h.last_error_log.set(Some(Instant::now()));
                    log::error!("{}: writeback planning: {e}", h.name);
                }
                rc(false)
            }
        }
    })
}
