//! The base bdev as the engine's [`BaseDevice`], for writeback. Every call is
//! made on the thread that owns the channel (the pcache's background thread),
//! and completions arrive there too. Buffers are copied into DMA-safe memory
//! so any base bdev (NVMe over PCIe included) can take them.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use spdk_sys as sys;

use super::ffi::guard;
use super::trace::{self, Tp};
use crate::base::{BaseDevice, Done, MediaRange, ReadDone};
use crate::error::Error;
use crate::pmem::{Media, PmemFile};

pub struct SpdkBase {
    desc: *mut sys::spdk_bdev_desc,
    ch: *mut sys::spdk_io_channel,
    size: u64,
    block_size: u32,
    align: usize,
    can_flush: bool,
    outstanding: AtomicUsize,
    /// DMA buffers kept for reuse: allocating one from SPDK's heap per I/O
    /// cost more reactor time than the copy into it.
    pool: std::sync::Mutex<BufPool>,
    /// The cache's pmem mapping, where writeback takes data from.
    media: Option<MediaWindow>,
}

/// The part of the cache's pmem mapping registered with SPDK's memory map
/// (whole 2 MiB pages, as spdk_mem_register takes them), kept registered
/// for as long as this base lives.
struct MediaWindow {
    /// Media offset and address of the registered part, and its length.
    first: u64,
    addr: *mut u8,
    len: usize,
    /// Keeps the mapping alive while it is registered and written from.
    _media: Arc<PmemFile>,
}

const PAGE_2M: usize = 2 << 20;

impl MediaWindow {
    fn register(media: Arc<PmemFile>) -> Result<MediaWindow, String> {
        let start = media.as_ptr() as usize;
        let end = start + media.len() as usize;
        let first = start.next_multiple_of(PAGE_2M);
        let last = end / PAGE_2M * PAGE_2M;
        if last <= first {
            return Err(format!("the mapping ({} bytes at {start:#x}) holds no whole 2 MiB page", media.len()));
        }
        let (addr, len) = (first as *mut u8, last - first);
        // SAFETY: [addr, addr+len) lies inside the live mapping `media`
        // keeps; it is unregistered in drop, before that mapping goes.
        let rc = unsafe { sys::spdk_mem_register(addr as *mut c_void, len) };
        if rc != 0 {
            return Err(format!("spdk_mem_register: {}", super::pmem_bdev::errno_str(rc)));
        }
        Ok(MediaWindow { first: (first - start) as u64, addr, len, _media: media })
    }

    /// The address of media bytes `[off, off+len)`, if they are registered.
    fn at(&self, off: u64, len: u32) -> Option<*mut u8> {
        let rel = off.checked_sub(self.first)?;
        (rel + len as u64 <= self.len as u64).then(|| self.addr.wrapping_add(rel as usize))
    }
}

impl Drop for MediaWindow {
    fn drop(&mut self) {
        // SAFETY: registered in register() with these values; no base write
        // reads it any more (the SpdkBase that owns it waits for its I/O).
        unsafe { sys::spdk_mem_unregister(self.addr as *mut c_void, self.len) };
    }
}

/// Freed DMA buffers by size class (powers of two from 4 KiB), up to a byte budget.
#[derive(Default)]
struct BufPool {
    free: Vec<Vec<*mut c_void>>,
    bytes: usize,
}

/// Bytes of DMA buffers a base keeps for reuse at most.
const POOL_BYTES: usize = 32 << 20;

fn size_class(len: usize) -> (usize, usize) {
    let size = len.next_power_of_two().max(4096);
    (size.trailing_zeros() as usize - 12, size)
}

impl Drop for SpdkBase {
    fn drop(&mut self) {
        let pool = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        for p in pool.free.into_iter().flatten() {
            // SAFETY: allocated with spdk_dma_malloc and no longer in use.
            unsafe { sys::spdk_dma_free(p) };
        }
    }
}

// SAFETY: SPDK descriptors and channels are only used on the thread that got the
// channel (see the module doc); the engine never calls a BaseDevice from elsewhere
// because only that thread's pollers drive writeback.
unsafe impl Send for SpdkBase {}
// SAFETY: as above.
unsafe impl Sync for SpdkBase {}

/// What a base I/O does, with the engine's completion for it.
enum Kind {
    Write(Done),
    WriteZeroes(Done),
    /// Reads into the engine's buffer, handed back with the result.
    Read(Vec<u8>, ReadDone),
    Flush(Done),
}

impl Kind {
    /// Calls the engine back; a read copies `dma` into its buffer first.
    fn complete(self, dma: &[u8], r: crate::Result<()>) {
        match self {
            Kind::Write(d) | Kind::WriteZeroes(d) | Kind::Flush(d) => d(r),
            Kind::Read(mut buf, rd) => {
                if r.is_ok() {
                    buf.copy_from_slice(dma);
                }
                rd(buf, r)
            }
        }
    }
}

/// One base I/O in flight. Boxed: SPDK holds a pointer to it (and to `wait`).
struct BaseIo {
    base: *const SpdkBase,
    kind: Kind,
    /// DMA-safe staging buffer (null for flush and write_zeroes, and for a
    /// write taken straight from pmem).
    buf: *mut c_void,
    /// A write taken straight from pmem: the pieces of the mapping it writes.
    iovs: Vec<sys::iovec>,
    offset: u64,
    len: u64,
    wait: sys::spdk_bdev_io_wait_entry,
}

impl SpdkBase {
    /// # Safety
    /// `desc` is an open descriptor of the base bdev and `ch` a channel of it
    /// obtained on the calling thread; both outlive this value.
    pub unsafe fn new(desc: *mut sys::spdk_bdev_desc, ch: *mut sys::spdk_io_channel) -> SpdkBase {
        // SAFETY: desc is an open descriptor (caller's contract), so the bdev it yields stays live
        // for these plain queries.
        unsafe {
            let bdev = sys::spdk_bdev_desc_get_bdev(desc);
            let block_size = sys::spdk_bdev_get_block_size(bdev);
            SpdkBase {
                desc,
                ch,
                size: sys::spdk_bdev_get_num_blocks(bdev) * block_size as u64,
                block_size,
                align: sys::spdk_bdev_get_buf_align(bdev).max(4096),
                can_flush: sys::spdk_bdev_io_type_supported(bdev, sys::SPDK_BDEV_IO_TYPE_FLUSH),
                outstanding: AtomicUsize::new(0),
                pool: Default::default(),
                media: None,
            }
        }
    }

    /// Lets writeback hand the base pieces of `media`'s mapping instead of
    /// copies, once the mapping is registered with SPDK's memory map; says
    /// why not when it cannot be.
    pub fn write_from_media(&mut self, media: Arc<PmemFile>) -> Result<(), String> {
        self.media = Some(MediaWindow::register(media)?);
        Ok(())
    }

    /// A DMA buffer of at least `len` bytes, from the pool or SPDK's heap.
    fn get_buf(&self, len: usize) -> *mut c_void {
        let (class, size) = size_class(len);
        {
            let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = p.free.get_mut(class).and_then(|v| v.pop()) {
                p.bytes -= size;
                return b;
            }
        }
        // SAFETY: plain allocation; freed by put_buf or at drop.
        unsafe { sys::spdk_dma_malloc(size, self.align, std::ptr::null_mut()) }
    }

    /// Gives a buffer from get_buf(len) back.
    fn put_buf(&self, buf: *mut c_void, len: usize) {
        let (class, size) = size_class(len);
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes + size <= POOL_BYTES {
            if p.free.len() <= class {
                p.free.resize_with(class + 1, Vec::new);
            }
            p.free[class].push(buf);
            p.bytes += size;
            return;
        }
        drop(p);
        // SAFETY: allocated by get_buf and no longer in use.
        unsafe { sys::spdk_dma_free(buf) };
    }

    pub fn channel(&self) -> *mut sys::spdk_io_channel {
        self.ch
    }

    /// Base I/Os submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    fn start(&self, kind: Kind, data: Option<&[u8]>, offset: u64, len: u64) {
        let mut fill = |b: &mut [u8]| {
            if let Some(d) = data {
                b.copy_from_slice(d);
            }
            Ok(())
        };
        // A plain copy cannot fail.
        let _ = self.start_filled(kind, &mut fill, offset, len);
    }

    /// Starts a base I/O whose DMA buffer (for reads and writes) `fill`
    /// prepares first; if `fill` fails, nothing is submitted, the error is
    /// returned and the engine's completion is dropped uncalled.
    fn start_filled(
        &self,
        kind: Kind,
        fill: &mut dyn FnMut(&mut [u8]) -> crate::Result<()>,
        offset: u64,
        len: u64,
    ) -> crate::Result<()> {
        let mut buf = std::ptr::null_mut();
        if matches!(kind, Kind::Write(_) | Kind::Read(..)) && len > 0 {
            // Given back in finish(), or below.
            buf = self.get_buf(len as usize);
            if buf.is_null() {
                kind.complete(&[], Err(Error::Io(format!("no DMA memory for a {len}-byte base I/O"))));
                return Ok(());
            }
            // SAFETY: buf holds len bytes, exclusively ours until submitted.
            let b = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len as usize) };
            if let Err(e) = fill(b) {
                self.put_buf(buf, len as usize);
                return Err(e);
            }
        }
        self.launch(BaseIo { base: self, kind, buf, iovs: Vec::new(), offset, len, wait: Default::default() });
        Ok(())
    }

    fn launch(&self, io: BaseIo) {
        let io = Box::into_raw(Box::new(io));
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        // SAFETY: io is a fresh allocation reclaimed once, in finish().
        unsafe { submit(io) };
    }
}

/// Submits (or resubmits after ENOMEM) one base I/O.
///
/// # Safety
/// `io` comes from `Box::into_raw` in `SpdkBase::launch`, SPDK holds no pointer to it (it is new,
/// or SPDK handed it back to `resubmit`), and the call is made on the thread that owns its base's
/// channel. Ownership passes to SPDK (or to `finish` if the submission fails).
unsafe fn submit(io: *mut BaseIo) {
    // SAFETY: io is live and ours (caller's contract); its base outlives it, because the SpdkBase
    // is only dropped once its outstanding I/O is done.
    let b = unsafe { &*(*io).base };
    let arg = io as *mut c_void;
    // SAFETY: b.desc and b.ch are an open descriptor and a channel of this thread (SpdkBase::new's
    // contract); the buffer and iovecs handed over live in *io, which stays allocated until
    // complete() gives it to finish().
    let rc = unsafe {
        match (*io).kind {
            Kind::Write(_) if !(*io).iovs.is_empty() => {
                let iovs = &mut (*io).iovs;
                sys::spdk_bdev_writev(
                    b.desc,
                    b.ch,
                    iovs.as_mut_ptr(),
                    iovs.len() as i32,
                    (*io).offset,
                    (*io).len,
                    Some(complete),
                    arg,
                )
            }
            Kind::Write(_) => {
                sys::spdk_bdev_write(b.desc, b.ch, (*io).buf, (*io).offset, (*io).len, Some(complete), arg)
            }
            // SPDK emulates write_zeroes with writes on bdevs without it.
            Kind::WriteZeroes(_) => {
                sys::spdk_bdev_write_zeroes(b.desc, b.ch, (*io).offset, (*io).len, Some(complete), arg)
            }
            Kind::Read(..) => {
                sys::spdk_bdev_read(b.desc, b.ch, (*io).buf, (*io).offset, (*io).len, Some(complete), arg)
            }
            Kind::Flush(_) => {
                trace::record(Tp::BaseFlushStart, 0, 0);
                sys::spdk_bdev_flush(b.desc, b.ch, 0, b.size, Some(complete), arg)
            }
        }
    };
    if rc == -libc::ENOMEM {
        // The base is out of request objects: retry when one frees up.
        // SAFETY: the submission failed, so SPDK holds no pointer to io and its wait entry is ours
        // to fill; the entry stays in *io, unmoved, until SPDK calls resubmit with it.
        let rc = unsafe {
            (*io).wait.bdev = sys::spdk_bdev_desc_get_bdev(b.desc);
            (*io).wait.cb_fn = Some(resubmit);
            (*io).wait.cb_arg = arg;
            sys::spdk_bdev_queue_io_wait((*io).wait.bdev, b.ch, &mut (*io).wait)
        };
        if rc == 0 {
            return;
        }
    }
    if rc != 0 {
        // SAFETY: neither the submission nor the wait took io, so it is still ours and is finished
        // once, here.
        unsafe {
            finish(io, Err(Error::Io(format!("base I/O submission failed: {}", super::pmem_bdev::errno_str(rc)))))
        };
    }
}

/// The io-wait callback of submit(): SPDK passes the BaseIo it queued, once a request object is free.
unsafe extern "C" fn resubmit(arg: *mut c_void) {
    // SAFETY: arg is the BaseIo submit() queued with spdk_bdev_queue_io_wait on this thread; SPDK
    // hands it back once and keeps no pointer to it.
    guard((), || unsafe { submit(arg as *mut BaseIo) })
}

/// The completion of a base I/O: SPDK passes the bdev_io, its status and the BaseIo submit() gave.
unsafe extern "C" fn complete(bio: *mut sys::spdk_bdev_io, ok: bool, arg: *mut c_void) {
    guard((), || {
        // SAFETY: bio is the completed base I/O, freed once here; arg is the BaseIo submit() passed
        // with it, which SPDK gives back once and no longer holds, so finish() may reclaim it.
        unsafe {
            sys::spdk_bdev_free_io(bio);
            let io = arg as *mut BaseIo;
            if matches!((*io).kind, Kind::Flush(_)) {
                trace::record(Tp::BaseFlushDone, ok as u64, 0);
            }
            let r = if ok {
                Ok(())
            } else {
                Err(Error::Io(format!("base bdev I/O at {} of {} bytes failed", (*io).offset, (*io).len)))
            };
            finish(io, r);
        }
    })
}

/// Completes one base I/O: frees its buffer and calls the engine back.
///
/// # Safety
/// `io` comes from `Box::into_raw` in `SpdkBase::launch`, SPDK no longer holds it (it completed,
/// or was never submitted), and it is finished only this once, on its base's thread.
unsafe fn finish(io: *mut BaseIo, r: crate::Result<()>) {
    // SAFETY: io is a leaked Box nobody else holds any more (caller's contract).
    let io = unsafe { Box::from_raw(io) };
    let dma: &[u8] = if io.buf.is_null() {
        &[]
    } else {
        // SAFETY: buf is a get_buf buffer of at least len bytes, and the I/O on it is over.
        unsafe { std::slice::from_raw_parts(io.buf as *const u8, io.len as usize) }
    };
    io.kind.complete(dma, r);
    // SAFETY: the SpdkBase outlives its I/O (it is dropped only once outstanding() is zero, and
    // this I/O still counts until the fetch_sub below).
    unsafe {
        if !io.buf.is_null() {
            (*io.base).put_buf(io.buf, io.len as usize);
        }
        (*io.base).outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BaseDevice for SpdkBase {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn write(&self, offset: u64, data: Vec<u8>, done: Done) {
        let len = data.len() as u64;
        self.start(Kind::Write(done), Some(&data), offset, len);
    }

    fn write_from(
        &self,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> crate::Result<()>,
        done: Done,
    ) -> crate::Result<()> {
        self.start_filled(Kind::Write(done), fill, offset, len as u64)
    }

    fn write_media(&self, offset: u64, parts: &[MediaRange], done: Done) -> Result<(), Done> {
        let Some(window) = &self.media else { return Err(done) };
        let mut iovs = Vec::with_capacity(parts.len());
        for p in parts {
            let Some(addr) = window.at(p.off, p.len) else { return Err(done) };
            iovs.push(sys::iovec { iov_base: addr as *mut c_void, iov_len: p.len as usize });
        }
        let len = parts.iter().map(|p| p.len as u64).sum();
        let kind = Kind::Write(done);
        self.launch(BaseIo {
            base: self,
            kind,
            buf: std::ptr::null_mut(),
            iovs,
            offset,
            len,
            wait: Default::default(),
        });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, done: Done) {
        self.start(Kind::WriteZeroes(done), None, offset, len);
    }

    fn flush(&self, done: Done) {
        if !self.can_flush {
            // A base without FLUSH has no volatile cache to empty.
            done(Ok(()));
            return;
        }
        self.start(Kind::Flush(done), None, 0, 0);
    }

    fn read(&self, offset: u64, buf: Vec<u8>, done: ReadDone) {
        let len = buf.len() as u64;
        self.start(Kind::Read(buf, done), None, offset, len);
    }
}
