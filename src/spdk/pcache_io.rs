//! The pcache I/O path. Each reactor gets a channel holding its base-bdev
//! channel and its engine worker number (its data head); requests are served
//! from pmem inline, read misses go to the base straight into the caller's
//! buffers, and writes that find the cache full wait on the channel until GC
//! frees space.
//!
//! Writes are staged on the channel and handed to the engine together
//! (Cache::write_batch) once per reactor iteration, by a poller: the engine
//! then copies them back to back, and their pmem drains overlap instead of
//! each write waiting for the one before it (see write.rs). Any other I/O
//! first writes what is staged, so a channel serves I/O in submission order.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;

use smallvec::SmallVec;
use spdk_sys as sys;

use super::ffi::{self, guard};
use super::json::Writer;
use super::pcache_bdev::{self, PcacheNode};
use crate::{Bypass, Miss, WriteOutcome, WriteReq};

/// Per-reactor state of one pcache (the io_channel context).
pub struct Channel {
    node: *const PcacheNode,
    base_ch: *mut sys::spdk_io_channel,
    worker: usize,
    /// Writes submitted since the last batch, in order.
    staged: Vec<*mut sys::spdk_bdev_io>,
    /// The previous batch's list, kept to reuse its allocation.
    spare: Vec<*mut sys::spdk_bdev_io>,
    stage_poller: *mut sys::spdk_poller,
    /// Writes waiting for space, oldest first.
    deferred: VecDeque<*mut sys::spdk_bdev_io>,
    /// The cache's space epoch when the oldest deferral happened.
    defer_epoch: u64,
    /// Writes in the cache waiting to be written back before they complete
    /// (every mode but writeback: mode.rs), with their tickets, oldest first.
    through: VecDeque<(*mut sys::spdk_bdev_io, u64)>,
    /// Writeback errors counted when the oldest of them started waiting.
    through_errors_at: u64,
    poller: *mut sys::spdk_poller,
}

/// Per-I/O state, kept in the bdev_io's driver context.
struct IoCtx {
    /// Bytes of a deferred write already in the cache.
    written: u64,
    misses: Vec<Miss>,
    next_miss: usize,
    pending: u32,
    failed: bool,
    wait: sys::spdk_bdev_io_wait_entry,
    /// A write on its way straight to the base (bypass.rs).
    bypass: Option<Bypass>,
    /// The base failed this write once as a bypass: it stays in the cache.
    bypass_failed: bool,
    /// A FLUSH's base flush covers this many bypassed writes.
    flush_target: u64,
}

/// One read miss in flight to the base.
struct MissIo {
    io: *mut sys::spdk_bdev_io,
    idx: usize,
    iovs: Iovecs,
}

/// A view of part of an I/O's buffers; one to four pieces stay on the stack.
type Iovecs = SmallVec<[libc::iovec; 4]>;

/// Bytes of per-I/O context the bdev layer reserves for pcache.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn ctx_size() -> c_int {
    std::mem::size_of::<IoCtx>() as c_int
}

pub static FN_TABLE: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
    destruct: Some(pcache_bdev::destruct),
    submit_request: Some(submit_request),
    io_type_supported: Some(ffi::block_io_supported),
    get_io_channel: Some(ffi::get_io_channel),
    dump_info_json: Some(dump_info_json),
    ..ffi::NO_BDEV_OPS
};

unsafe extern "C" fn dump_info_json(ctx: *mut c_void, w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        let node = &*(ctx as *const PcacheNode);
        let mut w = Writer::new(w);
        w.named_object_begin("pcache");
        pcache_bdev::write_info(node, &node.cache.stats(), &mut w);
        w.object_end();
        0
    })
}

/// io_device channel constructor: a reactor's channel.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn ch_create(dev: *mut c_void, ctx: *mut c_void) -> c_int {
    guard(-libc::ENOMEM, || {
        let node = &*(dev as *const PcacheNode);
        let base_ch = sys::spdk_bdev_get_io_channel(node.base_desc);
        if base_ch.is_null() {
            log::error!("{}: no base bdev channel on this thread", node.name());
            return -libc::ENOMEM;
        }
        let ch = ctx as *mut Channel;
        ch.write(Channel {
            node,
            base_ch,
            worker: ffi::current_worker(),
            staged: Vec::with_capacity(STAGE_MAX),
            spare: Vec::with_capacity(STAGE_MAX),
            stage_poller: std::ptr::null_mut(),
            deferred: VecDeque::new(),
            defer_epoch: 0,
            through: VecDeque::new(),
            through_errors_at: 0,
            poller: std::ptr::null_mut(),
        });
        (*ch).poller = sys::spdk_poller_register(Some(retry_deferred), ctx, RETRY_PERIOD_US);
        // Period 0: runs on every iteration of the reactor.
        (*ch).stage_poller = sys::spdk_poller_register(Some(write_staged_poll), ctx, 0);
        0
    })
}

/// io_device channel destructor.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn ch_destroy(_dev: *mut c_void, ctx: *mut c_void) {
    guard((), || {
        let ch = ctx as *mut Channel;
        sys::spdk_poller_unregister(&mut (*ch).poller);
        sys::spdk_poller_unregister(&mut (*ch).stage_poller);
        for io in std::mem::take(&mut (*ch).staged) {
            finish(io, false);
        }
        while let Some(io) = (*ch).deferred.pop_front() {
            finish(io, false);
        }
        while let Some((io, _)) = (*ch).through.pop_front() {
            finish(io, false);
        }
        sys::spdk_put_io_channel((*ch).base_ch);
        std::ptr::drop_in_place(ch);
    })
}

const RETRY_PERIOD_US: u64 = 100;
/// Staged writes beyond this are written at once rather than at the next
/// reactor iteration (bdevperf's usual queue depth).
const STAGE_MAX: usize = 32;

unsafe fn channel_of(io: *mut sys::spdk_bdev_io) -> *mut Channel {
    ffi::channel_ctx::<Channel>(sys::spdk_bdev_io_get_io_channel(io))
}

/// The pcache node an I/O was submitted to.
///
/// # Safety
/// `io` is an I/O of a pcache bdev that has not completed. The node is freed
/// only after its bdev is unregistered, which waits for every I/O and
/// channel, so the node outlives the I/O; the caller keeps the reference no
/// longer than it handles `io` (the lifetime is the caller's, not `'static`).
unsafe fn node_of<'a>(io: *mut sys::spdk_bdev_io) -> &'a PcacheNode {
    &*((*(*io).bdev).ctxt as *const PcacheNode)
}

unsafe fn byte_range(io: *mut sys::spdk_bdev_io) -> (u64, u64) {
    let (off, n) = ffi::block_range(io);
    let bs = (*(*io).bdev).blocklen as u64;
    (off * bs, n * bs)
}

/// Completes `io`, dropping its context first.
unsafe fn finish(io: *mut sys::spdk_bdev_io, ok: bool) {
    std::ptr::drop_in_place(ffi::io_ctx::<IoCtx>(io));
    ffi::complete(io, ok);
}

unsafe extern "C" fn submit_request(ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    let ctx = ffi::io_ctx::<IoCtx>(io);
    ctx.write(IoCtx {
        written: 0,
        misses: Vec::new(),
        next_miss: 0,
        pending: 0,
        failed: false,
        wait: Default::default(),
        bypass: None,
        bypass_failed: false,
        flush_target: 0,
    });
    let ok = guard(false, || {
        let chan = ffi::channel_ctx::<Channel>(ch);
        let node = node_of(io);
        if node.removing.load(Ordering::Acquire) && (*io).type_ as u32 != sys::SPDK_BDEV_IO_TYPE_RESET {
            // One of its bdevs is going away: fail fast rather than queue.
            finish(io, false);
            return true;
        }
        let t = (*io).type_ as u32;
        if t == sys::SPDK_BDEV_IO_TYPE_WRITE && (*chan).deferred.is_empty() {
            let (off, len) = byte_range(io);
            // Writearound or passthrough (mode.rs), a sequential stream, or a
            // full cache (bypass.rs).
            let bypass = node
                .cache
                .begin_around(off, len)
                .or_else(|| node.cache.begin_bypass((*chan).worker, off, len))
                .or_else(|| node.cache.bypass_when_full(off, len));
            if let Some(b) = bypass {
                write_staged(chan);
                if !start_bypass(chan, io, b) {
                    cache_write(chan, io);
                }
                return true;
            }
            (*chan).staged.push(io);
            if (*chan).staged.len() >= STAGE_MAX {
                write_staged(chan);
            }
            return true;
        }
        // Anything else goes after the writes submitted before it.
        write_staged(chan);
        match t {
            sys::SPDK_BDEV_IO_TYPE_READ => {
                if ffi::lacks_buffers(io) {
                    let (_, len) = byte_range(io);
                    sys::spdk_bdev_io_get_buf(io, Some(read_with_buf), len);
                } else {
                    start_read(io);
                }
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
                    _ => finish(io, r.is_ok()),
                }
            }
            sys::SPDK_BDEV_IO_TYPE_RESET => {
                let rc = sys::spdk_bdev_reset(node.base_desc, (*chan).base_ch, Some(reset_done), io as *mut c_void);
                if rc != 0 {
                    finish(io, false);
                }
            }
            t => {
                log::error!("{}: unsupported I/O type {t}", node.name());
                finish(io, false);
            }
        }
        true
    });
    if !ok {
        finish(io, false);
    }
}

unsafe extern "C" fn reset_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    guard((), || {
        sys::spdk_bdev_free_io(bio);
        finish(arg as *mut sys::spdk_bdev_io, ok);
    })
}

/// Sends a write the engine let bypass the cache to the base, from the
/// caller's buffers. Returns false if the base could not take it: the caller
/// puts it into the cache after all.
unsafe fn start_bypass(chan: *mut Channel, io: *mut sys::spdk_bdev_io, b: Bypass) -> bool {
    let node = &*(*chan).node;
    let iovs = ffi::io_iovs(io);
    let rc = sys::spdk_bdev_writev(
        node.base_desc,
        (*chan).base_ch,
        iovs.as_ptr() as *mut sys::iovec,
        iovs.len() as c_int,
        b.off,
        b.len,
        Some(bypass_done),
        io as *mut c_void,
    );
    if rc == 0 {
        (*ffi::io_ctx::<IoCtx>(io)).bypass = Some(b);
        true
    } else {
        node.cache.end_bypass(b, false);
        false
    }
}

unsafe extern "C" fn bypass_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    let io = arg as *mut sys::spdk_bdev_io;
    let handled = guard(false, || {
        sys::spdk_bdev_free_io(bio);
        let node = node_of(io);
        if let Some(b) = (*ffi::io_ctx::<IoCtx>(io)).bypass.take() {
            node.cache.end_bypass(b, ok);
        }
        if ok {
            finish(io, true);
        } else {
            // The base refused it: the cache keeps it, and writeback retries.
            log::warn!("{}: a bypassed write failed on the base; it goes into the cache", node.name());
            (*ffi::io_ctx::<IoCtx>(io)).bypass_failed = true;
            cache_write(channel_of(io), io);
        }
        true
    });
    if !handled {
        finish(io, false);
    }
}

/// Puts a write into the cache behind those already waiting for space (to
/// keep their order), or to the base if the cache is full (see defer).
unsafe fn cache_write(chan: *mut Channel, io: *mut sys::spdk_bdev_io) {
    write_staged(chan);
    if !(*chan).deferred.is_empty() || !try_write(chan, io) {
        defer(chan, io);
    }
}

/// Queues a write the cache deferred for lack of space, unless the cache
/// lets it go to the base instead (bypass.rs: with the cache full, a write
/// that no cached data overlaps is worth no wait).
unsafe fn defer(chan: *mut Channel, io: *mut sys::spdk_bdev_io) {
    let ctx = ffi::io_ctx::<IoCtx>(io);
    if (*io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_WRITE && (*ctx).written == 0 && !(*ctx).bypass_failed {
        let (off, len) = byte_range(io);
        if let Some(b) = (*(*chan).node).cache.bypass_when_full(off, len) {
            if start_bypass(chan, io, b) {
                return;
            }
        }
    }
    (*chan).deferred.push_back(io);
}

/// Completes a FLUSH once the base has flushed the writes that bypassed the
/// cache (the cache's part is durable already).
unsafe fn flush_bypassed(chan: *mut Channel, io: *mut sys::spdk_bdev_io, target: u64) {
    let node = &*(*chan).node;
    (*ffi::io_ctx::<IoCtx>(io)).flush_target = target;
    let bdev = sys::spdk_bdev_desc_get_bdev(node.base_desc);
    let len = sys::spdk_bdev_get_num_blocks(bdev) * sys::spdk_bdev_get_block_size(bdev) as u64;
    let rc = sys::spdk_bdev_flush(node.base_desc, (*chan).base_ch, 0, len, Some(base_flush_done), io as *mut c_void);
    if rc != 0 {
        log::error!("{}: flush: the base flush could not be submitted: rc {rc}", node.name());
        finish(io, false);
    }
}

unsafe extern "C" fn base_flush_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    let io = arg as *mut sys::spdk_bdev_io;
    guard((), || {
        sys::spdk_bdev_free_io(bio);
        let node = node_of(io);
        if ok {
            node.cache.bypass_flushed((*ffi::io_ctx::<IoCtx>(io)).flush_target);
        } else {
            log::error!("{}: flush: the base flush failed", node.name());
        }
        finish(io, ok);
    })
}

/// Writes what is left of `io` into the cache. Returns false if the cache is
/// full: the caller keeps `io` at the head of the channel's queue.
unsafe fn try_write(chan: *mut Channel, io: *mut sys::spdk_bdev_io) -> bool {
    let node = &*(*chan).node;
    let ctx = ffi::io_ctx::<IoCtx>(io);
    let (off, len) = byte_range(io);
    let done = (*ctx).written;
    // Read the epoch first: space freed after this point will show as a change.
    let epoch = node.cache.space_epoch();
    let r = if (*io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_WRITE {
        let slices: SmallVec<[IoSlice; 4]> = data_slices(io, done, len - done).collect();
        node.cache.write((*chan).worker, off + done, &slices)
    } else {
        node.cache.write_zeroes(off + done, len - done)
    };
    match r {
        Ok(WriteOutcome::Done) => {
            in_cache(chan, &[io]);
            true
        }
        Ok(WriteOutcome::Deferred { written }) => {
            (*ctx).written += written;
            (*chan).defer_epoch = epoch;
            false
        }
        Err(e) => {
            log::error!("{}: write at {} of {len} bytes: {e}", node.name(), off + done);
            finish(io, false);
            true
        }
    }
}

unsafe extern "C" fn write_staged_poll(arg: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        let chan = arg as *mut Channel;
        if (*chan).staged.is_empty() {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        write_staged(chan);
        sys::SPDK_POLLER_BUSY as c_int
    })
}

/// Hands the staged writes to the engine as one batch and completes them;
/// the ones it defers for lack of space join the deferred queue, in order.
/// Completions may submit new writes at once: they are staged for the next
/// batch (the list being written was swapped out first).
unsafe fn write_staged(chan: *mut Channel) {
    if (*chan).staged.is_empty() {
        return;
    }
    let spare = std::mem::take(&mut (*chan).spare);
    let mut ios = std::mem::replace(&mut (*chan).staged, spare);
    let node = &*(*chan).node;
    if node.removing.load(Ordering::Acquire) {
        // One of its bdevs is going away: fail them, as new submissions are.
        for io in ios.drain(..) {
            finish(io, false);
        }
        (*chan).spare = ios;
        return;
    }
    // Read the epoch first: space freed after this point will show as a change.
    let epoch = node.cache.space_epoch();
    let mut out = Vec::with_capacity(ios.len());
    {
        let mut slices: Vec<IoSlice> = Vec::with_capacity(ios.len());
        let mut spans = Vec::with_capacity(ios.len());
        for &io in &ios {
            let (off, len) = byte_range(io);
            let at = slices.len();
            slices.extend(data_slices(io, 0, len));
            spans.push((off, at, slices.len()));
        }
        let reqs: Vec<WriteReq> =
            spans.iter().map(|&(offset, a, b)| WriteReq { offset, data: &slices[a..b] }).collect();
        node.cache.write_batch((*chan).worker, &reqs, &mut out);
    }
    // Queue the deferred ones before completing any: a write submitted from
    // a completion must go behind them.
    for (&io, r) in ios.iter().zip(&out) {
        if let Ok(WriteOutcome::Deferred { written }) = r {
            (*ffi::io_ctx::<IoCtx>(io)).written += written;
            (*chan).defer_epoch = epoch;
            defer(chan, io);
        }
    }
    let done: SmallVec<[*mut sys::spdk_bdev_io; STAGE_MAX]> =
        ios.iter().zip(&out).filter(|(_, r)| matches!(r, Ok(WriteOutcome::Done))).map(|(&io, _)| io).collect();
    in_cache(chan, &done);
    for (&io, r) in ios.iter().zip(&out) {
        match r {
            Ok(WriteOutcome::Done | WriteOutcome::Deferred { .. }) => {}
            Err(e) => {
                let (off, len) = byte_range(io);
                log::error!("{}: write at {off} of {len} bytes: {e}", node.name());
                finish(io, false);
            }
        }
    }
    ios.clear();
    (*chan).spare = ios;
}

/// Writes that are now in the cache: they complete, or in a mode where
/// writes complete only once on the base (mode.rs), wait for writeback.
unsafe fn in_cache(chan: *mut Channel, ios: &[*mut sys::spdk_bdev_io]) {
    if ios.is_empty() {
        return;
    }
    let node = &*(*chan).node;
    if node.cache.cache_mode().completes_in_cache() {
        for &io in ios {
            finish(io, true);
        }
        return;
    }
    match node.cache.through_ticket() {
        Ok(ticket) => {
            if (*chan).through.is_empty() {
                (*chan).through_errors_at = node.cache.writeback_errors();
            }
            (*chan).through.extend(ios.iter().map(|&io| (io, ticket)));
        }
        Err(e) => {
            log::error!("{}: journalling writes for writeback: {e}", node.name());
            for &io in ios {
                finish(io, false);
            }
        }
    }
}

/// Completes the writes waiting for writeback that it has put on the base;
/// fails them all if writeback fails or the pcache is going away.
unsafe fn complete_written_back(chan: *mut Channel) -> bool {
    let node = &*(*chan).node;
    if (*chan).through.is_empty() {
        return false;
    }
    if node.removing.load(Ordering::Acquire) || node.cache.writeback_errors() > (*chan).through_errors_at {
        log::error!("{}: writes wait to be written back, and writeback failed: they fail", node.name());
        for (io, _) in std::mem::take(&mut (*chan).through) {
            finish(io, false);
        }
        return true;
    }
    let mut any = false;
    while let Some(&(io, ticket)) = (*chan).through.front() {
        if !node.cache.written_back(ticket) {
            break;
        }
        (*chan).through.pop_front();
        finish(io, true);
        any = true;
    }
    if any && !(*chan).through.is_empty() {
        (*chan).through_errors_at = node.cache.writeback_errors();
    }
    any
}

/// Resumes deferred writes once GC has freed space (the space epoch moved),
/// and completes writes that waited for writeback.
unsafe extern "C" fn retry_deferred(arg: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        let chan = arg as *mut Channel;
        if complete_written_back(chan) {
            return sys::SPDK_POLLER_BUSY as c_int;
        }
        if (*chan).deferred.is_empty() {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        let node = &*(*chan).node;
        if node.removing.load(Ordering::Acquire) {
            // Fail what waits now; completions may resubmit at once, and
            // submit_request fails those itself, so this always ends.
            for io in std::mem::take(&mut (*chan).deferred) {
                finish(io, false);
            }
            return sys::SPDK_POLLER_BUSY as c_int;
        }
        if node.cache.space_epoch() == (*chan).defer_epoch {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        // Completed (or failed) writes leave the queue; one deferred again stays first.
        while let Some(&io) = (*chan).deferred.front() {
            if !try_write(chan, io) {
                break;
            }
            (*chan).deferred.pop_front();
        }
        sys::SPDK_POLLER_BUSY as c_int
    })
}

unsafe extern "C" fn read_with_buf(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io, ok: bool) {
    if !ok {
        finish(io, false);
        return;
    }
    if !guard(false, || {
        start_read(io);
        true
    }) {
        finish(io, false);
    }
}

/// Copies cached bytes into the caller's buffers and sends misses to the base.
unsafe fn start_read(io: *mut sys::spdk_bdev_io) {
    let node = node_of(io);
    let (off, len) = byte_range(io);
    let mut slices: SmallVec<[IoSliceMut; 4]> = ffi::io_iovs(io)
        .iter()
        // SAFETY: the bdev layer owns these buffers for the I/O's life.
        .map(|v| IoSliceMut::new(std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len)))
        .collect();
    match node.cache.read(off, &mut slices) {
        Ok(m) if m.is_empty() => finish(io, true),
        Ok(m) => {
            let ctx = ffi::io_ctx::<IoCtx>(io);
            (*ctx).misses = m;
            submit_misses(io);
        }
        Err(e) => {
            log::error!("{}: read at {off} of {len} bytes: {e}", node.name());
            finish(io, false);
        }
    }
}

/// Bytes `[at, at+len)` of a write's data, as slices of its buffers.
///
/// # Safety
/// `io` is a write in progress: the bdev layer keeps its buffers alive and
/// unchanged until it completes, which is longer than the slices are used.
unsafe fn data_slices<'a>(io: *mut sys::spdk_bdev_io, at: u64, len: u64) -> impl Iterator<Item = IoSlice<'a>> {
    sub_iovecs(ffi::io_iovs(io), at, len)
        .into_iter()
        // SAFETY: see the function's contract.
        .map(|v| IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }))
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
unsafe fn submit_misses(io: *mut sys::spdk_bdev_io) {
    let node = node_of(io);
    let chan = channel_of(io);
    let ctx = ffi::io_ctx::<IoCtx>(io);
    while (*ctx).next_miss < (*ctx).misses.len() && !(*ctx).failed {
        let idx = (*ctx).next_miss;
        let m = (&(*ctx).misses)[idx];
        let mio = Box::into_raw(Box::new(MissIo { io, idx, iovs: sub_iovecs(ffi::io_iovs(io), m.buf_at, m.len) }));
        let rc = sys::spdk_bdev_readv(
            node.base_desc,
            (*chan).base_ch,
            (*mio).iovs.as_mut_ptr() as *mut sys::iovec,
            (*mio).iovs.len() as c_int,
            m.off,
            m.len,
            Some(miss_done),
            mio as *mut c_void,
        );
        if rc == 0 {
            (*ctx).pending += 1;
            (*ctx).next_miss += 1;
            continue;
        }
        drop(Box::from_raw(mio));
        if rc == -libc::ENOMEM {
            let w = &mut (*ctx).wait;
            w.bdev = sys::spdk_bdev_desc_get_bdev(node.base_desc);
            w.cb_fn = Some(resume_misses);
            w.cb_arg = io as *mut c_void;
            if sys::spdk_bdev_queue_io_wait(w.bdev, (*chan).base_ch, w) == 0 {
                return;
            }
        }
        log::error!("{}: base read at {} of {} bytes could not be submitted: rc {rc}", node.name(), m.off, m.len);
        (*ctx).failed = true;
    }
    if (*ctx).pending == 0 {
        let ok = !(*ctx).failed;
        finish(io, ok);
    }
}

unsafe extern "C" fn resume_misses(arg: *mut c_void) {
    let io = arg as *mut sys::spdk_bdev_io;
    if !guard(false, || {
        submit_misses(io);
        true
    }) {
        finish(io, false);
    }
}

unsafe extern "C" fn miss_done(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    guard((), || {
        sys::spdk_bdev_free_io(bio);
        let mio = Box::from_raw(arg as *mut MissIo);
        let io = mio.io;
        let ctx = ffi::io_ctx::<IoCtx>(io);
        (*ctx).pending -= 1;
        if !ok {
            (*ctx).failed = true;
            node_of(io).cache.note_base_read_error();
        } else {
            // Read caching: keep what the base returned as a clean key.
            let node = node_of(io);
            let m = (&(*ctx).misses)[mio.idx];
            // SAFETY: the caller's buffers, just filled by the base.
            let piece = |v: &libc::iovec| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len);
            // One buffer (the usual case) is cached as it is; several are gathered.
            let data: std::borrow::Cow<[u8]> = match mio.iovs.as_slice() {
                [one] => piece(one).into(),
                many => many
                    .iter()
                    .fold(Vec::with_capacity(m.len as usize), |mut d, v| {
                        d.extend_from_slice(piece(v));
                        d
                    })
                    .into(),
            };
            if let Err(e) = node.cache.fill((*channel_of(io)).worker, &m, &data) {
                log::debug!("{}: read cache fill at {}: {e}", node.name(), m.off);
            }
        }
        if (*ctx).pending == 0 && ((*ctx).next_miss == (*ctx).misses.len() || (*ctx).failed) {
            let ok = !(*ctx).failed;
            finish(io, ok);
        }
    })
}
