//! The pcache I/O path. Each reactor gets a channel holding its base-bdev
//! channel and its engine worker number (its data head); requests are served
//! from pmem on the reactor, read misses go to the base straight into the caller's
//! buffers, and writes that find the cache full wait on the channel until GC
//! frees space.
//!
//! Writes are staged on the channel and handed to the engine together
//! (Cache::write_batch) once per reactor iteration, by a poller: the engine
//! then copies them back to back, and their pmem drains overlap instead of
//! each write waiting for the one before it (see write.rs). A read with
//! buffers is looked up as it arrives: if nothing of it is cached it goes to
//! the base at once; otherwise the lookup hints pmem to fetch its data and
//! the read is staged the same way (never together with writes), to be
//! copied with the others, so that the first misses of their copies overlap.
//! Any other I/O first serves what is staged, so a channel serves I/O in
//! submission order.
//!
//! Staged I/O is completed by that poller, never
//! from inside submit_request: a completion lets the app submit again at
//! once, and the bdev layer's QoS walks its queue of waiting I/O while it
//! submits one of them, so a nested submission from inside that walk would
//! submit an I/O twice.
//!
//! Every SPDK callback turns its raw pointers into handles once, in an
//! `unsafe` constructor whose contract says why that is sound: an [`Io`]
//! (an I/O between submission and completion), a [`Channel`] (reached by
//! shared reference only). The rest is safe code. A completion can submit a
//! new I/O to the same channel from inside a call, so the channel's queues
//! are RefCells whose borrows never span a completion.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io::{IoSlice, IoSliceMut};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use smallvec::SmallVec;
use spdk_sys as sys;

use super::ffi::{self, guard};
use super::node::PcacheNode;
use super::pollers::PlanHelper;
use super::trace::{self, Tp};
use crate::{Admit, Bypass, Misses, WriteOutcome, WriteReq};

const RETRY_PERIOD_US: u64 = 100;
/// Staged writes beyond this are written at once rather than at the next
/// reactor iteration (bdevperf's usual queue depth).
const STAGE_MAX: usize = 32;

/// Per-reactor state of one pcache (the io_channel context).
pub struct Channel {
    node: NonNull<PcacheNode>,
    base_ch: *mut sys::spdk_io_channel,
    worker: usize,
    /// Writes submitted since the last batch, in order.
    staged: RefCell<Vec<Io>>,
    /// Reads (with their buffers) submitted since the last batch; never
    /// staged at the same time as writes, so order between the two holds.
    reads: RefCell<Vec<Io>>,
    /// The previous batch's list, kept to reuse its allocation.
    spare: RefCell<Vec<Io>>,
    /// Staged I/O that is done (written into the cache, read, or failed), to
    /// complete from the stage poller (see the module doc).
    done: RefCell<Vec<(Io, bool)>>,
    /// Writes waiting for space, oldest first.
    deferred: RefCell<VecDeque<Io>>,
    /// The cache's space epoch when the oldest deferral happened.
    defer_epoch: Cell<u64>,
    /// Writes in the cache waiting to be written back before they complete
    /// (every mode but writeback: mode.rs), with their tickets, oldest first.
    through: RefCell<VecDeque<(Io, u64)>>,
    /// Writeback errors counted when the oldest of them started waiting.
    through_errors_at: Cell<u64>,
    poller: Cell<*mut sys::spdk_poller>,
    stage_poller: Cell<*mut sys::spdk_poller>,
    /// Plans writeback on this core, if it is not the background pollers'
    /// (pollers.rs); dropped with the channel, on its thread.
    _plan_helper: Option<Box<PlanHelper>>,
}

impl Channel {
    /// The channel whose context `ctx` is.
    ///
    /// # Safety
    /// `ctx` is the context of a pcache io_device channel that ch_create set
    /// up and ch_destroy has not torn down, used on the channel's thread.
    unsafe fn from_ctx<'a>(ctx: *mut c_void) -> &'a Channel {
        // SAFETY: ctx holds a Channel ch_create wrote and ch_destroy has not dropped (caller's
        // contract); only shared references to it are ever made.
        unsafe { &*(ctx as *const Channel) }
    }

    fn node(&self) -> &PcacheNode {
        // SAFETY: the node is the io_device this channel belongs to; it is
        // freed only after the io_device is unregistered, which waits until
        // every channel is destroyed.
        unsafe { self.node.as_ref() }
    }

    /// Takes every I/O out of a queue, so that completing them borrows nothing.
    fn drain<T>(q: &RefCell<VecDeque<T>>) -> VecDeque<T> {
        std::mem::take(&mut *q.borrow_mut())
    }
}

/// Per-I/O state, kept in the bdev_io's driver context.
struct IoCtx {
    /// Bytes of a deferred write already in the cache.
    written: Cell<u64>,
    misses: RefCell<Misses>,
    /// The base read's iovecs when the read has one miss (the usual miss):
    /// it then uses this context and allocates nothing.
    one_miss_iovs: UnsafeCell<Iovecs>,
    next_miss: Cell<usize>,
    pending: Cell<u32>,
    failed: Cell<bool>,
    wait: UnsafeCell<sys::spdk_bdev_io_wait_entry>,
    /// `wait` is queued on the base (ENOMEM): resume_misses continues the
    /// read, and nothing else may complete it meanwhile (the entry lives in
    /// this context).
    waiting: Cell<bool>,
    /// A write on its way straight to the base (bypass.rs).
    bypass: Cell<Option<Bypass>>,
    /// The base failed this write once as a bypass: it stays in the cache.
    bypass_failed: Cell<bool>,
    /// A FLUSH's base flush covers this many bypassed writes.
    flush_target: Cell<u64>,
}

/// A pcache I/O between its submission and its completion. Not Copy: the
/// code holding it is the code that completes it ([`Io::finish`]), or hands
/// it to SPDK as a callback argument ([`Io::as_arg`]) and lets go of it.
struct Io(NonNull<sys::spdk_bdev_io>);

impl Io {
    /// # Safety
    /// `raw` is an I/O submitted to a pcache bdev, not completed, whose
    /// context submit_request initialized; the caller is where its
    /// processing continues (no other `Io` for it is in use), on the thread
    /// of the channel it was submitted to.
    unsafe fn from_raw(raw: *mut sys::spdk_bdev_io) -> Io {
        // SAFETY: raw is a submitted, live I/O (caller's contract), so it is not NULL.
        Io(unsafe { NonNull::new_unchecked(raw) })
    }

    /// The handle, with the channel the I/O was submitted to.
    ///
    /// # Safety
    /// As [`Io::from_raw`]; and the channel reference is used only within
    /// the callback that made it (a channel lives while it has I/O in flight,
    /// and is destroyed only from a later message on its thread).
    unsafe fn with_channel<'a>(raw: *mut sys::spdk_bdev_io) -> (&'a Channel, Io) {
        // SAFETY: raw is a live pcache I/O handled on its channel's thread (caller's contract): the
        // channel it was submitted to is a pcache channel ch_create set up, alive while the I/O is.
        unsafe {
            let chan = Channel::from_ctx(ffi::channel_ctx::<c_void>(sys::spdk_bdev_io_get_io_channel(raw)));
            (chan, Io::from_raw(raw))
        }
    }

    fn raw(&self) -> *mut sys::spdk_bdev_io {
        self.0.as_ptr()
    }

    /// The I/O as a callback argument for SPDK; the callback rebuilds the
    /// handle with [`Io::from_raw`]. The handle stays usable for a
    /// submission that failed (the callback then never runs).
    fn as_arg(&self) -> *mut c_void {
        self.raw() as *mut c_void
    }

    /// The I/O handed to a callback that always runs: the handle is gone.
    fn into_arg(self) -> *mut c_void {
        self.raw() as *mut c_void
    }

    fn ctx(&self) -> &IoCtx {
        // SAFETY: submit_request initialized it; it is dropped only by finish.
        unsafe { &*ffi::io_ctx::<IoCtx>(self.raw()) }
    }

    fn kind(&self) -> u32 {
        // SAFETY: a live I/O (from_raw's contract).
        unsafe { (*self.raw()).type_ as u32 }
    }

    /// `(offset, length)` in bytes.
    fn byte_range(&self) -> (u64, u64) {
        // SAFETY: a live block I/O.
        let ((off, n), bs) = unsafe { (ffi::block_range(self.raw()), (*(*self.raw()).bdev).blocklen as u64) };
        (off * bs, n * bs)
    }

    fn iovs(&self) -> &[libc::iovec] {
        // SAFETY: the bdev layer keeps a live I/O's iovecs.
        unsafe { ffi::io_iovs(self.raw()) }
    }

    fn lacks_buffers(&self) -> bool {
        // SAFETY: a live block I/O.
        unsafe { ffi::lacks_buffers(self.raw()) }
    }

    /// Bytes `[at, at+len)` of a write's data, as slices of its buffers.
    fn data(&self, at: u64, len: u64) -> SmallVec<[IoSlice<'_>; 4]> {
        sub_iovecs(self.iovs(), at, len)
            .into_iter()
            // SAFETY: the bdev layer keeps a write's buffers alive and
            // unchanged until it completes, which `self` outlives.
            .map(|v| IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }))
            .collect()
    }

    /// A read's buffers, to fill. Borrows the handle mutably, so only one
    /// set of them is in use at a time.
    fn read_bufs(&mut self) -> SmallVec<[IoSliceMut<'_>; 4]> {
        self.iovs()
            .iter()
            // SAFETY: the bdev layer lends a read's buffers to the module
            // until it completes; nothing else writes them meanwhile.
            .map(|v| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) }))
            .collect()
    }

    /// Completes the I/O, dropping its context first.
    fn finish(self, ok: bool) {
        // SAFETY: a live I/O whose context submit_request initialized; it is
        // completed once, here, as `self` is consumed.
        unsafe {
            std::ptr::drop_in_place(ffi::io_ctx::<IoCtx>(self.raw()));
            ffi::complete(self.raw(), ok);
        }
    }
}

/// One read miss in flight to the base.
struct MissIo {
    io: Io,
    idx: usize,
    iovs: Iovecs,
}

/// A view of part of an I/O's buffers; one to four pieces stay on the stack.
type Iovecs = SmallVec<[libc::iovec; 4]>;
/// I/Os completed together (a staged batch at most).
type Ios = SmallVec<[Io; STAGE_MAX]>;

/// Bytes of per-I/O context the bdev layer reserves for pcache.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn ctx_size() -> c_int {
    std::mem::size_of::<IoCtx>() as c_int
}

/// io_device channel constructor: a reactor's channel.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives: `dev`
/// is a live PcacheNode (its io_device), `ctx` room for a Channel.
pub unsafe extern "C" fn ch_create(dev: *mut c_void, ctx: *mut c_void) -> c_int {
    guard(-libc::ENOMEM, || {
        // SAFETY: dev is the io_device build_node registered, a PcacheNode that is freed only by
        // free_node, once every channel of it is destroyed.
        let node = unsafe { &*(dev as *const PcacheNode) };
        // SAFETY: base_desc is the node's open base descriptor; SPDK lets any thread get a channel
        // from a descriptor, and this one is put in ch_destroy, on this thread.
        let base_ch = unsafe { sys::spdk_bdev_get_io_channel(node.base_desc) };
        if base_ch.is_null() {
            log::error!("{}: no base bdev channel on this thread", node.name());
            return -libc::ENOMEM;
        }
        // SAFETY: ctx is SPDK's uninitialized context area of this channel, sized for a Channel
        // when build_node registered the io_device; it is written once, here.
        unsafe {
            (ctx as *mut Channel).write(Channel {
                node: NonNull::from(node),
                base_ch,
                worker: ffi::current_worker(),
                staged: RefCell::new(Vec::with_capacity(STAGE_MAX)),
                reads: RefCell::new(Vec::with_capacity(STAGE_MAX)),
                spare: RefCell::new(Vec::with_capacity(STAGE_MAX)),
                done: RefCell::new(Vec::with_capacity(STAGE_MAX)),
                deferred: RefCell::default(),
                defer_epoch: Cell::new(0),
                through: RefCell::default(),
                through_errors_at: Cell::new(0),
                poller: Cell::new(std::ptr::null_mut()),
                stage_poller: Cell::new(std::ptr::null_mut()),
                _plan_helper: node.bg.plan_helper(),
            })
        };
        // SAFETY: ctx now holds the Channel written above, on its own thread; the pollers get ctx
        // and run on this thread, and ch_destroy unregisters them before it drops the Channel.
        unsafe {
            let ch = Channel::from_ctx(ctx);
            ch.poller.set(sys::spdk_poller_register(Some(retry_deferred), ctx, RETRY_PERIOD_US));
            // Period 0: runs on every iteration of the reactor.
            ch.stage_poller.set(sys::spdk_poller_register(Some(write_staged_poll), ctx, 0));
        }
        0
    })
}

/// io_device channel destructor.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives: `ctx`
/// is a channel ch_create set up.
pub unsafe extern "C" fn ch_destroy(_dev: *mut c_void, ctx: *mut c_void) {
    guard((), || {
        // SAFETY: SPDK passes the context ch_create set up, on the channel's thread, once.
        let ch = unsafe { Channel::from_ctx(ctx) };
        for p in [&ch.poller, &ch.stage_poller] {
            let mut raw = p.replace(std::ptr::null_mut());
            // SAFETY: a poller ch_create registered on this thread (or NULL, which SPDK ignores).
            unsafe { sys::spdk_poller_unregister(&mut raw) };
        }
        let staged = std::mem::take(&mut *ch.staged.borrow_mut());
        let reads = std::mem::take(&mut *ch.reads.borrow_mut());
        for io in staged.into_iter().chain(reads) {
            io.finish(false);
        }
        complete_done(ch);
        for io in Channel::drain(&ch.deferred) {
            io.finish(false);
        }
        for (io, _) in Channel::drain(&ch.through) {
            io.finish(false);
        }
        // SAFETY: base_ch was got by ch_create on this thread and nothing uses it any more; the
        // Channel is dropped once, here, as the last use of ch, and SPDK frees its memory after.
        unsafe {
            sys::spdk_put_io_channel(ch.base_ch);
            std::ptr::drop_in_place(ctx as *mut Channel);
        }
    })
}

/// The pcache bdev's submit_request.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn submit_request(ch: *mut sys::spdk_io_channel, raw: *mut sys::spdk_bdev_io) {
    // SAFETY: SPDK hands a new I/O of a pcache bdev, whose driver context (ctx_size() bytes) is
    // uninitialized: it is written once, here, and dropped by Io::finish.
    unsafe {
        ffi::io_ctx::<IoCtx>(raw).write(IoCtx {
            written: Cell::new(0),
            misses: RefCell::default(),
            one_miss_iovs: UnsafeCell::new(Iovecs::new()),
            next_miss: Cell::new(0),
            pending: Cell::new(0),
            failed: Cell::new(false),
            wait: UnsafeCell::new(Default::default()),
            waiting: Cell::new(false),
            bypass: Cell::new(None),
            bypass_failed: Cell::new(false),
            flush_target: Cell::new(0),
        })
    };
    // SAFETY: SPDK hands the module this I/O, with the channel it goes to.
    let (io, chan) = unsafe { (Io::from_raw(raw), Channel::from_ctx(ffi::channel_ctx::<c_void>(ch))) };
    if !guard(false, || {
        submit(chan, io);
        true
    }) {
        // SAFETY: submit panicked; as everywhere a guard fails an I/O, the I/O is taken to be still
        // uncompleted, with no other handle to it in use.
        unsafe { Io::from_raw(raw) }.finish(false);
    }
}

fn submit(chan: &Channel, io: Io) {
    let node = chan.node();
    let t = io.kind();
    if node.removing.load(Ordering::Acquire) && t != sys::SPDK_BDEV_IO_TYPE_RESET {
        // One of its bdevs is going away: fail fast rather than queue.
        io.finish(false);
        return;
    }
    if t == sys::SPDK_BDEV_IO_TYPE_READ && !io.lacks_buffers() {
        write_staged(chan);
        let (off, len) = io.byte_range();
        if let Some(m) = node.cache.lookup(off, len) {
            // Nothing of it is cached: to the base now, not a reactor
            // iteration later (a fast base answers in microseconds).
            trace::record(Tp::ReadMiss, off, len);
            *io.ctx().misses.borrow_mut() = m;
            submit_misses(chan, io, Completion::Later);
            return;
        }
        if stage(&chan.reads, io) {
            serve_reads(chan);
        }
        return;
    }
    // Anything else goes after the reads submitted before it.
    serve_reads(chan);
    if t == sys::SPDK_BDEV_IO_TYPE_WRITE && chan.deferred.borrow().is_empty() {
        let (off, len) = io.byte_range();
        if let Admit::Base(b) = node.cache.admit(chan.worker, off, len) {
            write_staged(chan);
            if let Err(io) = start_bypass(chan, io, b) {
                cache_write(chan, io);
            }
            return;
        }
        trace::record(Tp::WriteStaged, off, len);
        if stage(&chan.staged, io) {
            write_staged(chan);
        }
        return;
    }
    // Anything else goes after the writes submitted before it.
    write_staged(chan);
    match t {
        sys::SPDK_BDEV_IO_TYPE_READ => {
            // Without buffers (a READ with buffers was staged above).
            let (_, len) = io.byte_range();
            let raw = io.into_arg() as *mut sys::spdk_bdev_io;
            // SAFETY: a live READ of this module; read_with_buf takes it on.
            unsafe { sys::spdk_bdev_io_get_buf(raw, Some(read_with_buf), len) };
        }
        // UNMAP is served as WRITE_ZEROES: the range reads as zeros at
        // once, and writeback sends write_zeroes to the base in log order.
        sys::SPDK_BDEV_IO_TYPE_WRITE | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES | sys::SPDK_BDEV_IO_TYPE_UNMAP => {
            cache_write(chan, io);
        }
        sys::SPDK_BDEV_IO_TYPE_FLUSH => {
            let r = node.cache.flush();
            if let Err(e) = &r {
                log::error!("{}: flush: {e}", node.name());
            }
            match node.cache.bypass_flush_target() {
                Some(target) if r.is_ok() && node.base_can_flush => flush_bypassed(chan, io, target),
                _ => io.finish(r.is_ok()),
            }
        }
        sys::SPDK_BDEV_IO_TYPE_RESET => {
            // SAFETY: the node's base descriptor and this thread's channel to
            // it; reset_done takes the I/O on.
            let rc = unsafe { sys::spdk_bdev_reset(node.base_desc, chan.base_ch, Some(reset_done), io.as_arg()) };
            if rc != 0 {
                io.finish(false);
            }
        }
        t => {
            log::error!("{}: unsupported I/O type {t}", node.name());
            io.finish(false);
        }
    }
}

/// Adds `io` to a staging list; true once the list holds a batch's worth
/// (the caller serves it at once rather than at the next poll).
fn stage(list: &RefCell<Vec<Io>>, io: Io) -> bool {
    let mut l = list.borrow_mut();
    l.push(io);
    l.len() >= STAGE_MAX
}

/// Rebuilds the I/O a base-I/O callback was given as its argument, frees
/// the base I/O, and runs `f` with it; fails the I/O if `f` panics.
///
/// # Safety
/// `bio` is the completed base I/O and `arg` the pcache I/O passed (with
/// [`Io::as_arg`]) when it was submitted.
unsafe fn on_base_done(bio: *mut sys::spdk_bdev_io, arg: *mut c_void, f: impl FnOnce(&Channel, Io)) {
    // SAFETY: bio is the completed base I/O (caller's contract), freed once, here.
    unsafe { sys::spdk_bdev_free_io(bio) };
    let raw = arg as *mut sys::spdk_bdev_io;
    if !guard(false, || {
        // SAFETY: raw is the pcache I/O handed over with Io::as_arg (caller's contract); its
        // processing continues here, on its channel's thread, where the base completion runs.
        let (chan, io) = unsafe { Io::with_channel(raw) };
        f(chan, io);
        true
    }) {
        // SAFETY: f panicked; as everywhere a guard fails an I/O, the I/O is taken to be still
        // uncompleted, with no other handle to it in use.
        unsafe { Io::from_raw(raw) }.finish(false);
    }
}

/// Completion of the base reset a RESET sent: SPDK passes the base I/O, its status and the RESET.
unsafe extern "C" fn reset_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    // SAFETY: bio is the completed base reset and arg the RESET submit() passed with Io::as_arg.
    unsafe { on_base_done(bio, arg, |_, io| io.finish(ok)) };
}

/// Sends a write the engine let bypass the cache to the base, from the
/// caller's buffers. Gives the write back if the base could not take it: the
/// caller puts it into the cache after all.
fn start_bypass(chan: &Channel, io: Io, b: Bypass) -> Result<(), Io> {
    let node = chan.node();
    let iovs = io.iovs();
    // SAFETY: the node's base descriptor and this thread's channel to it;
    // the iovecs are the write's own, alive until it completes; bypass_done
    // takes the I/O on.
    let rc = unsafe {
        sys::spdk_bdev_writev(
            node.base_desc,
            chan.base_ch,
            iovs.as_ptr() as *mut sys::iovec,
            iovs.len() as c_int,
            b.off,
            b.len,
            Some(bypass_done),
            io.as_arg(),
        )
    };
    if rc == 0 {
        io.ctx().bypass.set(Some(b));
        Ok(())
    } else {
        node.cache.end_bypass(b, false);
        Err(io)
    }
}

/// Completion of a bypassed write: SPDK passes the base I/O, its status and the pcache WRITE.
unsafe extern "C" fn bypass_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    // SAFETY: bio is the completed base write and arg the WRITE start_bypass passed with Io::as_arg.
    unsafe {
        on_base_done(bio, arg, |chan, io| {
            let node = chan.node();
            if let Some(b) = io.ctx().bypass.take() {
                node.cache.end_bypass(b, ok);
            }
            if ok {
                io.finish(true);
            } else {
                // The base refused it: the cache keeps it, and writeback retries.
                log::warn!("{}: a bypassed write failed on the base; it goes into the cache", node.name());
                io.ctx().bypass_failed.set(true);
                cache_write(chan, io);
            }
        })
    };
}

/// Puts a write into the cache behind those already waiting for space (to
/// keep their order), or to the base if the cache is full (see defer).
fn cache_write(chan: &Channel, io: Io) {
    write_staged(chan);
    if !chan.deferred.borrow().is_empty() {
        defer(chan, io);
        return;
    }
    if let Err(io) = try_write(chan, io, Completion::Now) {
        defer(chan, io);
    }
}

/// Queues a write the cache deferred for lack of space, unless the cache
/// lets it go to the base instead (bypass.rs: with the cache full, a write
/// that no cached data overlaps is worth no wait).
fn defer(chan: &Channel, io: Io) {
    let ctx = io.ctx();
    let io = if io.kind() == sys::SPDK_BDEV_IO_TYPE_WRITE && ctx.written.get() == 0 && !ctx.bypass_failed.get() {
        let (off, len) = io.byte_range();
        match chan.node().cache.admit_deferred(off, len) {
            Admit::Base(b) => match start_bypass(chan, io, b) {
                Ok(()) => return,
                Err(io) => io,
            },
            Admit::Cache => io,
        }
    } else {
        io
    };
    let (off, len) = io.byte_range();
    trace::record(Tp::WriteWait, off, len);
    chan.deferred.borrow_mut().push_back(io);
}

/// Completes a FLUSH once the base has flushed the writes that bypassed the
/// cache (the cache's part is durable already).
fn flush_bypassed(chan: &Channel, io: Io, target: u64) {
    let node = chan.node();
    io.ctx().flush_target.set(target);
    // SAFETY: the node's base descriptor and this thread's channel to it;
    // base_flush_done takes the I/O on.
    let rc = unsafe {
        let bdev = sys::spdk_bdev_desc_get_bdev(node.base_desc);
        let len = sys::spdk_bdev_get_num_blocks(bdev) * sys::spdk_bdev_get_block_size(bdev) as u64;
        sys::spdk_bdev_flush(node.base_desc, chan.base_ch, 0, len, Some(base_flush_done), io.as_arg())
    };
    if rc != 0 {
        log::error!("{}: flush: the base flush could not be submitted: rc {rc}", node.name());
        io.finish(false);
    }
}

/// Completion of a FLUSH's base flush: SPDK passes the base I/O, its status and the pcache FLUSH.
unsafe extern "C" fn base_flush_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    // SAFETY: bio is the completed base flush and arg the FLUSH flush_bypassed passed with Io::as_arg.
    unsafe {
        on_base_done(bio, arg, |chan, io| {
            let node = chan.node();
            if ok {
                node.cache.bypass_flushed(io.ctx().flush_target.get());
            } else {
                log::error!("{}: flush: the base flush failed", node.name());
            }
            io.finish(ok);
        })
    };
}

/// Writes what is left of `io` into the cache and completes it `when` said.
/// Gives it back if the cache is full: the caller keeps it at the head of the
/// channel's queue.
fn try_write(chan: &Channel, io: Io, when: Completion) -> Result<(), Io> {
    let node = chan.node();
    let (off, len) = io.byte_range();
    let done = io.ctx().written.get();
    // Read the epoch first: space freed after this point will show as a change.
    let epoch = node.cache.space_epoch();
    let r = if io.kind() == sys::SPDK_BDEV_IO_TYPE_WRITE {
        node.cache.write(chan.worker, off + done, &io.data(done, len - done))
    } else {
        node.cache.write_zeroes(off + done, len - done)
    };
    match r {
        Ok(WriteOutcome::Done) => {
            in_cache(chan, Ios::from_iter([io]), when);
            Ok(())
        }
        Ok(WriteOutcome::Deferred { written }) => {
            io.ctx().written.set(done + written);
            chan.defer_epoch.set(epoch);
            Err(io)
        }
        Err(e) => {
            log::error!("{}: write at {} of {len} bytes: {e}", node.name(), off + done);
            finish(chan, io, false, when);
            Ok(())
        }
    }
}

/// The stage poller of a channel: SPDK passes the channel context ch_create registered it with.
unsafe extern "C" fn write_staged_poll(arg: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        // SAFETY: registered by ch_create with its channel, unregistered by ch_destroy.
        let chan = unsafe { Channel::from_ctx(arg) };
        if chan.staged.borrow().is_empty() && chan.reads.borrow().is_empty() && chan.done.borrow().is_empty() {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        serve_reads(chan);
        write_staged(chan);
        complete_done(chan);
        sys::SPDK_POLLER_BUSY as c_int
    })
}

/// Completes the staged writes that are done.
fn complete_done(chan: &Channel) {
    let done = std::mem::take(&mut *chan.done.borrow_mut());
    for (io, ok) in done {
        io.finish(ok);
    }
}

/// Hands the staged writes to the engine as one batch; the ones it defers
/// for lack of space join the deferred queue, in order, and the rest are
/// completed by the stage poller (see the module doc), or in a mode where
/// writes complete once written back, wait for writeback.
fn write_staged(chan: &Channel) {
    if chan.staged.borrow().is_empty() {
        return;
    }
    let spare = std::mem::take(&mut *chan.spare.borrow_mut());
    let mut ios = std::mem::replace(&mut *chan.staged.borrow_mut(), spare);
    let node = chan.node();
    if node.removing.load(Ordering::Acquire) {
        // One of its bdevs is going away: fail them, as new submissions are.
        chan.done.borrow_mut().extend(ios.drain(..).map(|io| (io, false)));
        *chan.spare.borrow_mut() = ios;
        return;
    }
    // Read the epoch first: space freed after this point will show as a change.
    let epoch = node.cache.space_epoch();
    let mut out = Vec::with_capacity(ios.len());
    {
        let mut slices: Vec<IoSlice> = Vec::with_capacity(ios.len());
        let mut spans = Vec::with_capacity(ios.len());
        for io in &ios {
            let (off, len) = io.byte_range();
            let at = slices.len();
            slices.extend(io.data(0, len));
            spans.push((off, at, slices.len()));
        }
        let reqs: Vec<WriteReq> =
            spans.iter().map(|&(offset, a, b)| WriteReq { offset, data: &slices[a..b] }).collect();
        node.cache.write_batch(chan.worker, &reqs, &mut out);
    }
    // Queue the deferred ones before completing any: a write submitted from
    // a completion must go behind them.
    let mut done = Ios::new();
    for (io, r) in ios.drain(..).zip(out) {
        match r {
            Ok(WriteOutcome::Done) => done.push(io),
            Ok(WriteOutcome::Deferred { written }) => {
                io.ctx().written.set(io.ctx().written.get() + written);
                chan.defer_epoch.set(epoch);
                defer(chan, io);
            }
            Err(e) => {
                let (off, len) = io.byte_range();
                log::error!("{}: write at {off} of {len} bytes: {e}", node.name());
                chan.done.borrow_mut().push((io, false));
            }
        }
    }
    *chan.spare.borrow_mut() = ios;
    in_cache(chan, done, Completion::Later);
}

/// When in_cache completes what it completes.
#[derive(Clone, Copy, PartialEq)]
enum Completion {
    /// Now: the I/Os are the one being handled (inside its own
    /// submit_request the bdev layer defers its completion itself) or
    /// come from a poller or a base completion.
    Now,
    /// From the stage poller (see the module doc).
    Later,
}

/// Writes that are now in the cache: they complete, or in a mode where
/// writes complete only once on the base (mode.rs), wait for writeback.
fn in_cache(chan: &Channel, ios: Ios, when: Completion) {
    if ios.is_empty() {
        return;
    }
    let complete = |ios: Ios, ok: bool| match when {
        Completion::Now => ios.into_iter().for_each(|io| io.finish(ok)),
        Completion::Later => chan.done.borrow_mut().extend(ios.into_iter().map(|io| (io, ok))),
    };
    let node = chan.node();
    if node.cache.cache_mode().completes_in_cache() {
        complete(ios, true);
        return;
    }
    match node.cache.through_ticket() {
        Ok(ticket) => {
            let mut through = chan.through.borrow_mut();
            if through.is_empty() {
                chan.through_errors_at.set(node.cache.writeback_errors());
            }
            through.extend(ios.into_iter().map(|io| (io, ticket)));
        }
        Err(e) => {
            log::error!("{}: journalling writes for writeback: {e}", node.name());
            complete(ios, false);
        }
    }
}

/// Completes the writes waiting for writeback that it has put on the base;
/// fails them all if writeback fails or the pcache is going away.
fn complete_written_back(chan: &Channel) -> bool {
    let node = chan.node();
    if chan.through.borrow().is_empty() {
        return false;
    }
    if node.removing.load(Ordering::Acquire) || node.cache.writeback_errors() > chan.through_errors_at.get() {
        log::error!("{}: writes wait to be written back, and writeback failed: they fail", node.name());
        for (io, _) in Channel::drain(&chan.through) {
            io.finish(false);
        }
        return true;
    }
    let mut any = false;
    loop {
        let next = {
            let mut through = chan.through.borrow_mut();
            match through.front() {
                Some(&(_, ticket)) if node.cache.written_back(ticket) => through.pop_front(),
                _ => None,
            }
        };
        let Some((io, _)) = next else { break };
        io.finish(true);
        any = true;
    }
    if any && !chan.through.borrow().is_empty() {
        chan.through_errors_at.set(node.cache.writeback_errors());
    }
    any
}

/// Resumes deferred writes once GC has freed space (the space epoch moved),
/// and completes writes that waited for writeback.
unsafe extern "C" fn retry_deferred(arg: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        // SAFETY: registered by ch_create with its channel, unregistered by ch_destroy.
        let chan = unsafe { Channel::from_ctx(arg) };
        if complete_written_back(chan) {
            return sys::SPDK_POLLER_BUSY as c_int;
        }
        if chan.deferred.borrow().is_empty() {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        let node = chan.node();
        if node.removing.load(Ordering::Acquire) {
            // Fail what waits now; completions may resubmit at once, and
            // submit_request fails those itself, so this always ends.
            for io in Channel::drain(&chan.deferred) {
                io.finish(false);
            }
            return sys::SPDK_POLLER_BUSY as c_int;
        }
        if node.cache.space_epoch() == chan.defer_epoch.get() {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        // Completed (or failed) writes leave the queue; one deferred again
        // goes back first. They complete from the stage poller, after this
        // loop: completed inside it, the app's next write would queue behind
        // the rest and wait for the next retry, and the channel would never
        // leave the queue while the app keeps it full. Only the writes
        // queued now, so that this always returns to the reactor.
        let queued = chan.deferred.borrow().len();
        for _ in 0..queued {
            let Some(io) = chan.deferred.borrow_mut().pop_front() else { break };
            if let Err(io) = try_write(chan, io, Completion::Later) {
                chan.deferred.borrow_mut().push_front(io);
                break;
            }
        }
        sys::SPDK_POLLER_BUSY as c_int
    })
}

/// spdk_bdev_io_get_buf's callback: SPDK passes the channel, the READ submit() asked buffers for,
/// and whether it got them.
unsafe extern "C" fn read_with_buf(_ch: *mut sys::spdk_io_channel, raw: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: the READ submit() asked buffers for; it continues here.
    let (chan, io) = unsafe { Io::with_channel(raw) };
    if !ok {
        io.finish(false);
        return;
    }
    if !guard(false, || {
        start_read(chan, io, Completion::Now);
        true
    }) {
        // SAFETY: start_read panicked; as everywhere a guard fails an I/O, the I/O is taken to be
        // still uncompleted, with no other handle to it in use.
        unsafe { Io::from_raw(raw) }.finish(false);
    }
}

/// Serves the staged reads: each was looked up when it arrived, which hinted
/// the cache to fetch its data (see submit); now every copy. A read's time
/// is mostly its copy's first miss on pmem (a random page); done this way,
/// the misses of a batch overlap instead of following one another. They
/// complete from the stage poller (see the module doc).
fn serve_reads(chan: &Channel) {
    if chan.reads.borrow().is_empty() {
        return;
    }
    let mut reads = std::mem::take(&mut *chan.reads.borrow_mut());
    for io in reads.drain(..) {
        let raw = io.raw();
        if !guard(false, || {
            start_read(chan, io, Completion::Later);
            true
        }) {
            // SAFETY: start_read panicked with the read still in hand (as
            // submit_request's own guard assumes): fail it, and go on with
            // the rest of the batch.
            chan.done.borrow_mut().push((unsafe { Io::from_raw(raw) }, false));
        }
    }
    // Every read above completes later (or from a base completion, which
    // never runs inside its submission): nothing was staged meanwhile.
    *chan.reads.borrow_mut() = reads;
}

/// Copies cached bytes into the caller's buffers and sends misses to the base.
fn start_read(chan: &Channel, mut io: Io, when: Completion) {
    let (off, len) = io.byte_range();
    let node = chan.node();
    let r = node.cache.read(off, &mut io.read_bufs());
    match r {
        Ok(m) if m.is_empty() => {
            trace::record(Tp::ReadHit, off, len);
            finish(chan, io, true, when)
        }
        Ok(m) => {
            trace::record(Tp::ReadMiss, off, m.iter().map(|m| m.len).sum());
            *io.ctx().misses.borrow_mut() = m;
            submit_misses(chan, io, when);
        }
        Err(e) => {
            log::error!("{}: read at {off} of {len} bytes: {e}", node.name());
            finish(chan, io, false, when);
        }
    }
}

/// Completes `io` now, or from the stage poller.
fn finish(chan: &Channel, io: Io, ok: bool, when: Completion) {
    match when {
        Completion::Now => io.finish(ok),
        Completion::Later => chan.done.borrow_mut().push((io, ok)),
    }
}

/// The part `[at, at+len)` of an iovec list (cut as iov.rs cuts slices).
fn sub_iovecs(iovs: &[libc::iovec], at: u64, len: u64) -> Iovecs {
    let mut out = Iovecs::new();
    let cut = crate::iov::for_each_piece(
        iovs.iter(),
        |v| v.iov_len,
        at,
        len,
        |v, r, _| {
            out.push(libc::iovec {
                // SAFETY: `r` lies inside this buffer (r.end <= iov_len).
                iov_base: unsafe { (v.iov_base as *mut u8).add(r.start) } as *mut c_void,
                iov_len: r.len(),
            });
            Ok(())
        },
    );
    debug_assert!(cut.is_ok(), "pushing a piece cannot fail");
    out
}

/// Submits the read's remaining misses to the base; on ENOMEM waits for the
/// base to have room and continues from there.
fn submit_misses(chan: &Channel, io: Io, when: Completion) {
    let node = chan.node();
    let ctx = io.ctx();
    let count = ctx.misses.borrow().len();
    while ctx.next_miss.get() < count && !ctx.failed.get() {
        let idx = ctx.next_miss.get();
        let m = ctx.misses.borrow()[idx];
        let rc = if count == 1 {
            // SAFETY: the context's iovecs are used by this read's one base
            // read only, submitted here (not in flight: nothing else is).
            let iovs = unsafe { &mut *ctx.one_miss_iovs.get() };
            *iovs = sub_iovecs(io.iovs(), m.buf_at, m.len);
            // SAFETY: the node's base descriptor and this thread's channel
            // to it; the iovecs live in the I/O's context and point into its
            // buffers, both alive until it completes, which one_miss_done
            // does at the earliest.
            unsafe {
                sys::spdk_bdev_readv(
                    node.base_desc,
                    chan.base_ch,
                    iovs.as_mut_ptr() as *mut sys::iovec,
                    iovs.len() as c_int,
                    m.off,
                    m.len,
                    Some(one_miss_done),
                    io.as_arg(),
                )
            }
        } else {
            // SAFETY: a second handle to the same I/O, owned by this miss and
            // used only by miss_done, on this thread, after this call returns
            // (SPDK defers a completion that happens during submission).
            let mine = unsafe { Io::from_raw(io.raw()) };
            let mio = Box::into_raw(Box::new(MissIo { io: mine, idx, iovs: sub_iovecs(io.iovs(), m.buf_at, m.len) }));
            // SAFETY: as above; miss_done takes `mio` back.
            let rc = unsafe {
                sys::spdk_bdev_readv(
                    node.base_desc,
                    chan.base_ch,
                    (*mio).iovs.as_mut_ptr() as *mut sys::iovec,
                    (*mio).iovs.len() as c_int,
                    m.off,
                    m.len,
                    Some(miss_done),
                    mio as *mut c_void,
                )
            };
            if rc != 0 {
                // SAFETY: not submitted: still ours.
                drop(unsafe { Box::from_raw(mio) });
            }
            rc
        };
        if rc == 0 {
            ctx.pending.set(ctx.pending.get() + 1);
            ctx.next_miss.set(idx + 1);
            continue;
        }
        if rc == -libc::ENOMEM {
            // SAFETY: the wait entry lives in the I/O's context until it
            // completes; resume_misses takes the I/O on.
            let queued = unsafe {
                let w = &mut *ctx.wait.get();
                w.bdev = sys::spdk_bdev_desc_get_bdev(node.base_desc);
                w.cb_fn = Some(resume_misses);
                w.cb_arg = io.as_arg();
                sys::spdk_bdev_queue_io_wait(w.bdev, chan.base_ch, w)
            };
            if queued == 0 {
                ctx.waiting.set(true);
                return;
            }
        }
        log::error!("{}: base read at {} of {} bytes could not be submitted: rc {rc}", node.name(), m.off, m.len);
        ctx.failed.set(true);
    }
    if ctx.pending.get() == 0 {
        let ok = !ctx.failed.get();
        finish(chan, io, ok, when);
    }
}

/// The io-wait callback of a READ's base misses: SPDK passes the READ submit_misses queued.
unsafe extern "C" fn resume_misses(arg: *mut c_void) {
    let raw = arg as *mut sys::spdk_bdev_io;
    if !guard(false, || {
        // SAFETY: the READ submit_misses queued to wait; it continues here.
        let (chan, io) = unsafe { Io::with_channel(raw) };
        io.ctx().waiting.set(false);
        submit_misses(chan, io, Completion::Now);
        true
    }) {
        // SAFETY: submit_misses panicked; as everywhere a guard fails an I/O, the I/O is taken to
        // be still uncompleted, with no other handle to it in use.
        unsafe { Io::from_raw(raw) }.finish(false);
    }
}

/// Completion of one of several base reads of a READ: SPDK passes the base I/O, its status and the
/// MissIo submit_misses boxed for it.
unsafe extern "C" fn miss_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    guard((), || {
        // SAFETY: bio is the completed base read, freed once, here.
        unsafe { sys::spdk_bdev_free_io(bio) };
        // SAFETY: the MissIo submit_misses boxed for this base read, whose
        // handle is used within this callback only.
        let mio = unsafe { Box::from_raw(arg as *mut MissIo) };
        // SAFETY: mio.io is the live READ this miss belongs to; the channel it was submitted to
        // lives while it is in flight, and this callback runs on that channel's thread.
        let chan =
            unsafe { Channel::from_ctx(ffi::channel_ctx::<c_void>(sys::spdk_bdev_io_get_io_channel(mio.io.raw()))) };
        let MissIo { io, idx, iovs } = *mio;
        miss_done_with(chan, io, idx, &iovs, ok);
    })
}

/// Completion of a READ's only base read: SPDK passes the base I/O, its status and the READ.
unsafe extern "C" fn one_miss_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    guard((), || {
        // SAFETY: bio is the completed base read, freed once, here.
        unsafe { sys::spdk_bdev_free_io(bio) };
        // SAFETY: the READ whose one miss this base read was; it continues here.
        let (chan, io) = unsafe { Io::with_channel(arg as *mut sys::spdk_bdev_io) };
        // SAFETY: the base read is done with the iovecs; only this read's
        // completion, below, uses them now.
        let iovs = std::mem::take(unsafe { &mut *io.ctx().one_miss_iovs.get() });
        miss_done_with(chan, io, 0, &iovs, ok);
    })
}

fn miss_done_with(chan: &Channel, io: Io, idx: usize, iovs: &[libc::iovec], ok: bool) {
    let node = chan.node();
    let ctx = io.ctx();
    ctx.pending.set(ctx.pending.get() - 1);
    if !ok {
        ctx.failed.set(true);
        node.cache.note_base_read_error();
    } else {
        // Read caching: keep what the base returned as a clean key.
        let m = ctx.misses.borrow()[idx];
        // SAFETY: the caller's buffers, just filled by the base.
        let piece = |v: &libc::iovec| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
        // One buffer (the usual case) is cached as it is; several are gathered.
        let data: std::borrow::Cow<[u8]> = match iovs {
            [one] => piece(one).into(),
            many => many
                .iter()
                .fold(Vec::with_capacity(m.len as usize), |mut d, v| {
                    d.extend_from_slice(piece(v));
                    d
                })
                .into(),
        };
        match node.cache.fill(chan.worker, &m, &data) {
            Ok(true) => trace::record(Tp::Fill, m.off, m.len),
            Ok(false) => {}
            Err(e) => log::debug!("{}: read cache fill at {}: {e}", node.name(), m.off),
        }
    }
    let all_sent = ctx.next_miss.get() == ctx.misses.borrow().len();
    if ctx.pending.get() == 0 && !ctx.waiting.get() && (all_sent || ctx.failed.get()) {
        let ok = !ctx.failed.get();
        io.finish(ok);
    }
}
