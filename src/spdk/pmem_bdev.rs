//! The `pmem` bdev: a libpmem mapping of a devdax device or a file, served as
//! a plain block device (read, write, flush, write_zeroes, unmap) and handed
//! to pcache as its cache device, which then copies data straight to and from
//! the mapping instead of going through this bdev's I/O path.

use std::ffi::{c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use spdk_sys as sys;

use super::ffi::{self, cstring, guard, Ptr};
use super::json::Writer;
use crate::pmem::{Media, PmemFile};

/// One pmem bdev. Boxed and never moved: SPDK holds pointers to `bdev`.
pub struct PmemBdev {
    bdev: sys::spdk_bdev,
    name: CString,
    path: PathBuf,
    media: Arc<PmemFile>,
}

static MODULE: AtomicPtr<sys::spdk_bdev_module> = AtomicPtr::new(std::ptr::null_mut());
static DEVICES: Mutex<Vec<Ptr<PmemBdev>>> = Mutex::new(Vec::new());

fn module() -> *mut sys::spdk_bdev_module {
    MODULE.load(Ordering::Acquire)
}

fn devices() -> std::sync::MutexGuard<'static, Vec<Ptr<PmemBdev>>> {
    DEVICES.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_module() {
    let m = Box::leak(Box::new(sys::spdk_bdev_module {
        name: c"pmem".as_ptr(),
        module_init: Some(module_init),
        module_fini: Some(module_fini),
        config_json: Some(config_json),
        ..Default::default()
    }));
    MODULE.store(m, Ordering::Release);
    // SAFETY: the module struct is leaked, so it outlives SPDK's list.
    unsafe { sys::spdk_bdev_module_list_add(m) };
}

/// module_init: SPDK passes nothing; there is nothing to set up.
unsafe extern "C" fn module_init() -> c_int {
    0
}

/// module_fini: SPDK passes nothing; every device is gone by then.
unsafe extern "C" fn module_fini() {}

/// The mapping behind the pmem bdev `name`, for pcache's DAX data path.
pub fn media_of(name: &str) -> Option<Arc<PmemFile>> {
    devices().iter().find_map(|d| {
        // SAFETY: registered devices are live until destruct removes them.
        let d = unsafe { &*d.0 };
        (d.name.to_bytes() == name.as_bytes()).then(|| d.media.clone())
    })
}

pub fn is_pmem_bdev(name: &str) -> bool {
    media_of(name).is_some()
}

/// Creates and registers a pmem bdev over `path`. With `size`, a missing file
/// is created at that size; an existing one must already have it.
pub fn create(name: &str, path: &Path, size: Option<u64>, block_size: u32) -> Result<(), String> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(format!("block_size {block_size} must be a power of two from 512 to 65536"));
    }
    let cname = cstring(name);
    // SAFETY: name lookup in the bdev layer.
    if !unsafe { sys::spdk_bdev_get_by_name(cname.as_ptr()) }.is_null() {
        return Err(format!("a bdev named {name} already exists"));
    }
    let exists = path.exists();
    let media = match (exists, size) {
        (false, None) => {
            return Err(format!("{} does not exist; give 'size' to create it", path.display()));
        }
        (false, Some(sz)) => {
            if sz == 0 || sz % block_size as u64 != 0 {
                return Err(format!("size {sz} must be a non-zero multiple of block_size {block_size}"));
            }
            PmemFile::create(path, sz).map_err(|e| e.to_string())?
        }
        (true, sz) => {
            let m = PmemFile::open(path).map_err(|e| e.to_string())?;
            if let Some(sz) = sz {
                if sz != m.len() {
                    return Err(format!("{} exists with {} bytes, not the {sz} asked for", path.display(), m.len()));
                }
            }
            m
        }
    };
    if !media.prefault() {
        log::warn!("{}: could not prefault the mapping; first writes to each page will fault", path.display());
    }
    if media.len() < block_size as u64 {
        return Err(format!("{} is smaller than one block", path.display()));
    }
    if !media.is_pmem() {
        log::warn!(
            "{} is not persistent memory; every write is msync'ed (set PMEM_IS_PMEM_FORCE=1 only for DRAM-backed test files)",
            path.display()
        );
    }
    let blocks = media.len() / block_size as u64;
    let dev = Box::into_raw(Box::new(PmemBdev {
        // SAFETY: spdk_bdev is a plain C struct; all-zero is its documented initial state.
        bdev: unsafe { std::mem::zeroed() },
        name: cname,
        path: path.to_path_buf(),
        media: Arc::new(media),
    }));
    // SAFETY: dev is a fresh, never-moved allocation; the bdev fields point into it.
    unsafe {
        let d = &mut *dev;
        d.bdev.name = d.name.as_ptr() as *mut _;
        d.bdev.product_name = c"pmem".as_ptr() as *mut _;
        d.bdev.blocklen = block_size;
        d.bdev.blockcnt = blocks;
        d.bdev.write_cache = 0;
        d.bdev.ctxt = dev as *mut c_void;
        d.bdev.fn_table = &FN_TABLE;
        d.bdev.module = module();
        sys::spdk_io_device_register(dev as *mut c_void, Some(ch_create), Some(ch_destroy), 0, d.name.as_ptr());
        // Listed before registering: registration runs pcache's examine,
        // which looks the mapping up to attach a waiting pcache.
        devices().push(Ptr(dev));
        // Examine (pcache's among them) reads the device through DEVICES
        // while this runs: only a raw pointer to it is held across the call.
        let rc = sys::spdk_bdev_register(std::ptr::addr_of_mut!((*dev).bdev));
        if rc != 0 {
            devices().retain(|x| x.0 != dev);
            sys::spdk_io_device_unregister(dev as *mut c_void, Some(free_device));
            return Err(format!("spdk_bdev_register failed: {}", errno_str(rc)));
        }
    }
    log::info!("pmem bdev {name} over {} ({blocks} blocks of {block_size})", path.display());
    Ok(())
}

pub fn errno_str(rc: i32) -> String {
    std::io::Error::from_raw_os_error(rc.abs()).to_string()
}

/// Unregisters the pmem bdev `name`; `done(rc)` runs when it is gone.
pub fn delete(name: &str, done: Box<dyn FnOnce(i32)>) {
    if !is_pmem_bdev(name) {
        done(-libc::ENODEV);
        return;
    }
    // SAFETY: module() is the pmem bdev module, registered for the process's life.
    unsafe { ffi::unregister_bdev(name, module(), done) };
}

/// The io_device unregister callback: SPDK passes the PmemBdev that create registered as the io_device.
unsafe extern "C" fn free_device(ctx: *mut c_void) {
    // SAFETY: ctx is the PmemBdev create leaked with Box::into_raw; SPDK calls this once, when the
    // io_device is gone and the bdev is destructed (or was never registered), so nothing uses it.
    guard((), || drop(unsafe { Box::from_raw(ctx as *mut PmemBdev) }))
}

static FN_TABLE: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
    destruct: Some(destruct),
    submit_request: Some(submit_request),
    io_type_supported: Some(ffi::block_io_supported),
    get_io_channel: Some(ffi::get_io_channel),
    dump_info_json: Some(dump_info_json),
    ..ffi::NO_BDEV_OPS
};

/// bdev destruct: SPDK passes the bdev's ctxt, its PmemBdev.
unsafe extern "C" fn destruct(ctx: *mut c_void) -> c_int {
    guard(0, || {
        devices().retain(|d| d.0 as *mut c_void != ctx);
        // SAFETY: ctx is the io_device create registered; SPDK destructs a bdev once, so it is
        // unregistered once, and free_device frees it after.
        unsafe { sys::spdk_io_device_unregister(ctx, Some(free_device)) };
        0
    })
}

/// io_device channel constructor: SPDK passes the PmemBdev and an empty context; nothing to set up.
unsafe extern "C" fn ch_create(_dev: *mut c_void, _ctx: *mut c_void) -> c_int {
    0
}

/// io_device channel destructor: SPDK passes the PmemBdev and the empty context.
unsafe extern "C" fn ch_destroy(_dev: *mut c_void, _ctx: *mut c_void) {}

/// fn_table.dump_info_json: SPDK passes the bdev's ctxt (its PmemBdev) and a live JSON writer.
unsafe extern "C" fn dump_info_json(ctx: *mut c_void, w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        // SAFETY: ctx is the bdev's ctxt, its PmemBdev, live while the bdev is registered; w is
        // SPDK's writer for this call, and the Writer does not outlive it.
        let (d, mut w) = unsafe { (&*(ctx as *const PmemBdev), Writer::new(w)) };
        w.named_object_begin("pmem");
        w.named_str("path", &d.path.to_string_lossy());
        w.named_u64("size", d.media.len());
        w.named_bool("is_pmem", d.media.is_pmem());
        w.object_end();
        0
    })
}

/// The module's config_json: SPDK passes a live JSON writer, inside the bdev subsystem's array.
unsafe extern "C" fn config_json(w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        // SAFETY: w is SPDK's writer for this call, and the Writer does not outlive it.
        let mut w = unsafe { Writer::new(w) };
        for d in devices().iter() {
            // SAFETY: listed devices are live until destruct removes them, on this thread.
            let d = unsafe { &*d.0 };
            w.object_begin();
            w.named_str("method", "bdev_pmem_create");
            w.named_object_begin("params");
            w.named_str("name", &d.name.to_string_lossy());
            w.named_str("path", &d.path.to_string_lossy());
            w.named_u64("block_size", d.bdev.blocklen as u64);
            w.object_end();
            w.object_end();
        }
        0
    })
}

/// fn_table.submit_request: SPDK passes the channel and a new I/O of a pmem bdev.
unsafe extern "C" fn submit_request(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io) {
    guard((), || {
        // SAFETY: SPDK hands this module a live block I/O of a pmem bdev; it is completed once:
        // here, or by read_with_buf once the bdev layer has found it buffers.
        unsafe {
            if (*io).type_ as u32 == sys::SPDK_BDEV_IO_TYPE_READ && ffi::lacks_buffers(io) {
                let (_, blocks) = ffi::block_range(io);
                let len = blocks * (*(*io).bdev).blocklen as u64;
                sys::spdk_bdev_io_get_buf(io, Some(read_with_buf), len);
                return;
            }
            ffi::complete(io, serve(io).is_ok());
        }
    })
}

/// spdk_bdev_io_get_buf's callback: SPDK passes the channel, the READ submit_request asked buffers
/// for, and whether it got them.
unsafe extern "C" fn read_with_buf(_ch: *mut sys::spdk_io_channel, io: *mut sys::spdk_bdev_io, ok: bool) {
    // SAFETY: io is the live READ submit_request handed over, with its buffers attached when ok
    // (serve runs only then); it is completed once, here.
    guard((), || unsafe { ffi::complete(io, ok && serve(io).is_ok()) })
}

/// Serves one I/O synchronously against the mapping.
///
/// # Safety
/// `io` is a live I/O on a pmem bdev, with its buffers attached.
unsafe fn serve(io: *mut sys::spdk_bdev_io) -> crate::Result<()> {
    // SAFETY: io is a live I/O on a pmem bdev (caller's contract): its bdev's ctxt is the PmemBdev
    // create registered, which lives while the bdev has I/O.
    let d = unsafe { &*((*(*io).bdev).ctxt as *const PmemBdev) };
    let bs = d.bdev.blocklen as u64;
    // SAFETY: a live block I/O (caller's contract).
    let (off_b, n_b) = unsafe { ffi::block_range(io) };
    let (mut off, len) = (off_b * bs, n_b * bs);
    let m = &*d.media;
    // SAFETY: as above.
    match unsafe { (*io).type_ as u32 } {
        sys::SPDK_BDEV_IO_TYPE_READ => {
            // SAFETY: a live I/O with its buffers attached (caller's contract); its iovecs stay
            // put while it is served.
            for v in unsafe { ffi::io_iovs(io) } {
                // SAFETY: the bdev layer owns these buffers for the I/O's life.
                let buf = unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) };
                m.read(off, buf)?;
                off += v.iov_len as u64;
            }
        }
        sys::SPDK_BDEV_IO_TYPE_WRITE => {
            // SAFETY: as for READ.
            for v in unsafe { ffi::io_iovs(io) } {
                // SAFETY: as above.
                let buf = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                m.write(off, buf)?;
                off += v.iov_len as u64;
            }
            m.fence();
        }
        sys::SPDK_BDEV_IO_TYPE_UNMAP | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES => {
            m.zero(off, len)?;
            m.fence();
        }
        // Writes are persisted before they complete, so flush and reset have nothing left to do.
        sys::SPDK_BDEV_IO_TYPE_FLUSH | sys::SPDK_BDEV_IO_TYPE_RESET => {}
        t => return Err(crate::Error::InvalidArgument(format!("unsupported I/O type {t}"))),
    }
    Ok(())
}
