//! Small helpers over the raw SPDK bindings.

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use spdk_sys as sys;

/// Runs `f`, turning a panic into `on_panic` (after logging it), so that no
/// panic ever unwinds across an `extern "C"` boundary into SPDK.
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let what = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            ::log::error!("internal error (caught at the SPDK boundary): {what}");
            on_panic
        }
    }
}

/// A NUL-terminated copy of `s` (interior NULs are dropped: names come from
/// JSON and cannot hold them anyway).
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// The Rust string behind a C string from SPDK ("" for NULL).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub unsafe fn str_of<'a>(p: *const c_char) -> std::borrow::Cow<'a, str> {
    if p.is_null() {
        return "".into();
    }
    // SAFETY: p is not NULL, and the caller guarantees a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p).to_string_lossy() }
}

/// A raw pointer that may be kept in a `static` registry. Every pointer so
/// wrapped is only dereferenced on the SPDK thread that owns it.
#[derive(PartialEq, Eq, Debug)]
pub struct Ptr<T>(pub *mut T);
impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}
// SAFETY: see the type's doc: the registry only stores it; use stays on the owner thread.
unsafe impl<T> Send for Ptr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Ptr<T> {}

/// The context area of an I/O channel (the C inline `spdk_io_channel_get_ctx`).
///
/// # Safety
/// `ch` is a live channel whose context holds a `T`.
pub unsafe fn channel_ctx<T>(ch: *mut sys::spdk_io_channel) -> *mut T {
    // SAFETY: ch is a live channel (caller's contract); SPDK allocates its context right after the
    // struct, so the offset stays inside that allocation.
    unsafe { (ch as *mut u8).add(sys::SPDK_IO_CHANNEL_STRUCT_SIZE as usize) as *mut T }
}

/// Index of the current reactor's core among the application's cores: the
/// engine's worker number for I/O submitted on this thread.
pub fn current_worker() -> usize {
    // SAFETY: plain queries of the SPDK environment.
    unsafe {
        let me = sys::spdk_env_get_current_core();
        let mut idx = 0usize;
        let mut core = sys::spdk_env_get_first_core();
        while core != u32::MAX {
            if core == me {
                return idx;
            }
            idx += 1;
            core = sys::spdk_env_get_next_core(core);
        }
        0
    }
}

/// Number of reactors (engine workers).
pub fn core_count() -> usize {
    // SAFETY: plain query.
    (unsafe { sys::spdk_env_get_core_count() } as usize).max(1)
}

/// The driver context of a bdev_io, where a module keeps its per-I/O state.
///
/// # Safety
/// `io` is a live bdev_io of a module whose get_ctx_size covers a `T`.
pub unsafe fn io_ctx<T>(io: *mut sys::spdk_bdev_io) -> *mut T {
    // SAFETY: io is a live bdev_io (caller's contract), so reading its driver_ctx field is valid.
    unsafe { (*io).driver_ctx.as_mut_ptr() as *mut T }
}

/// `(offset_blocks, num_blocks)` of a read/write/unmap/... bdev_io.
///
/// # Safety
/// `io` is a live block I/O.
pub unsafe fn block_range(io: *mut sys::spdk_bdev_io) -> (u64, u64) {
    // SAFETY: io is a live block I/O (caller's contract), so `u.bdev` is the union's active member.
    let p = unsafe { &(*io).u.bdev };
    (p.offset_blocks, p.num_blocks)
}

/// The iovecs of a block I/O as a slice.
///
/// # Safety
/// `io` is a live block I/O whose iovecs stay valid while the slice is used.
pub unsafe fn io_iovs<'a>(io: *mut sys::spdk_bdev_io) -> &'a [libc::iovec] {
    // SAFETY: io is a live block I/O (caller's contract), so `u.bdev` is the union's active member.
    let p = unsafe { &(*io).u.bdev };
    if p.iovs.is_null() || p.iovcnt <= 0 {
        return &[];
    }
    // SAFETY: SPDK's iovs points to iovcnt iovecs (checked non-NULL and positive above), which the
    // caller guarantees stay valid while the slice is used; spdk-sys's iovec has libc's layout.
    unsafe { std::slice::from_raw_parts(p.iovs as *const libc::iovec, p.iovcnt as usize) }
}

/// Completes a block I/O.
///
/// # Safety
/// `io` is a live block I/O this module was handed and has not completed.
pub unsafe fn complete(io: *mut sys::spdk_bdev_io, ok: bool) {
    let status = if ok { sys::SPDK_BDEV_IO_STATUS_SUCCESS } else { sys::SPDK_BDEV_IO_STATUS_FAILED };
    // SAFETY: io was handed to this module and is not yet completed (caller's contract), so it is
    // completed exactly once here.
    unsafe { sys::spdk_bdev_io_complete(io, status) }
}

/// True when a READ arrived without buffers; the module then asks the bdev
/// layer for them with spdk_bdev_io_get_buf.
///
/// # Safety
/// `io` is a live block I/O.
pub unsafe fn lacks_buffers(io: *mut sys::spdk_bdev_io) -> bool {
    // SAFETY: io is a live block I/O (caller's contract); the slice is only read within this call.
    unsafe { io_iovs(io) }.first().is_none_or(|v| v.iov_base.is_null())
}

/// fn_table.get_io_channel for a bdev whose ctxt is its io_device.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn get_io_channel(ctx: *mut c_void) -> *mut sys::spdk_io_channel {
    // SAFETY: SPDK passes the bdev's ctxt, which these bdevs register as their io_device.
    unsafe { sys::spdk_get_io_channel(ctx) }
}

/// fn_table.io_type_supported of both pcache's bdevs: the block I/O they serve.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn block_io_supported(_ctx: *mut c_void, t: sys::spdk_bdev_io_type) -> bool {
    matches!(
        t,
        sys::SPDK_BDEV_IO_TYPE_READ
            | sys::SPDK_BDEV_IO_TYPE_WRITE
            | sys::SPDK_BDEV_IO_TYPE_FLUSH
            | sys::SPDK_BDEV_IO_TYPE_RESET
            | sys::SPDK_BDEV_IO_TYPE_UNMAP
            | sys::SPDK_BDEV_IO_TYPE_WRITE_ZEROES
    )
}

/// Unregisters the bdev `name` of `module`; `done(rc)` runs once it is gone,
/// or at once with the error if SPDK refuses.
///
/// # Safety
/// `module` is one of this library's registered bdev modules (they live for
/// the whole process).
pub unsafe fn unregister_bdev(name: &str, module: *mut sys::spdk_bdev_module, done: Box<dyn FnOnce(i32)>) {
    let cname = cstring(name);
    let arg = Box::into_raw(Box::new(done));
    // arg is reclaimed exactly once, by unregister_done or below.
    // SAFETY: cname outlives the call, module is a registered module (caller's contract), and
    // unregister_done takes arg back as the Box<Box<dyn FnOnce(i32)>> it was made from.
    let rc =
        unsafe { sys::spdk_bdev_unregister_by_name(cname.as_ptr(), module, Some(unregister_done), arg as *mut c_void) };
    if rc != 0 {
        // Not handed to SPDK, so still ours.
        // SAFETY: SPDK refused, so it will never call unregister_done: arg, from Box::into_raw
        // above, is reclaimed once, here.
        (unsafe { Box::from_raw(arg) })(rc);
    }
}

/// The unregister callback of unregister_bdev: SPDK passes back the boxed `done` and the result.
unsafe extern "C" fn unregister_done(arg: *mut c_void, rc: std::ffi::c_int) {
    // SAFETY: arg is the Box<Box<dyn FnOnce(i32)>> unregister_bdev leaked for this call; SPDK calls
    // this once, so it is reclaimed once.
    guard((), || (unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce(i32)>) })(rc))
}

/// A bdev fn_table with nothing set: modules fill in what they implement and
/// take the rest from here (`..NO_BDEV_OPS`).
pub const NO_BDEV_OPS: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
    destruct: None,
    submit_request: None,
    io_type_supported: None,
    get_io_channel: None,
    dump_info_json: None,
    write_config_json: None,
    get_spin_time: None,
    get_module_ctx: None,
    get_memory_domains: None,
    get_memory_domain_types: None,
    reset_device_stat: None,
    dump_device_stat_json: None,
    accel_sequence_supported: None,
};
