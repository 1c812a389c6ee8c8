//! pcache's tracepoints in SPDK's trace framework: the `pcache` group, so
//! that `spdk_tgt -e pcache` (or the trace_enable_tpoint_group RPC) records
//! where pcache's time goes beside SPDK's own bdev and nvmf tracepoints, and
//! `spdk_trace -s <app> -p <pid>` shows it.
//!
//! Recording costs one check of the trace mask while the group is off (the
//! test spdk_trace_record's macro makes, written out here because bindgen
//! does not carry macros and inline functions over).

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use spdk_sys as sys;

/// The group's number: free in SPDK v26.05's spdk_internal/trace_defs.h
/// (0x12, scheduler, is the last one SPDK uses there).
const GROUP: u16 = 0x13;
/// OWNER_TYPE_BDEV and OBJECT_NONE of spdk_internal/trace_defs.h and trace.h.
const OWNER_TYPE_BDEV: u8 = 0x2;
const OBJECT_NONE: u8 = 0;

/// pcache's tracepoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Tp {
    /// A write staged on its channel (offset, length).
    WriteStaged = GROUP * 64,
    /// A read served from pmem whole (offset, length).
    ReadHit,
    /// A read with a part the cache lacks, sent to the base (offset, bytes missed).
    ReadMiss,
    /// A miss cached after the base answered it (offset, length).
    Fill,
    /// A write that found the cache full and waits for GC (offset, length).
    WriteWait,
    /// A writeback batch planned (bytes, base writes).
    WritebackStart,
    /// A writeback batch durable on the base (dirty bytes retired).
    WritebackDone,
    /// A FLUSH sent to the base (by writeback or for bypassed writes).
    BaseFlushStart,
    /// The base answered a FLUSH (1 if it succeeded).
    BaseFlushDone,
    /// A GC step that reclaimed key sets (how many).
    GcStep,
}

/// Name and argument names of each tracepoint, as spdk_trace prints them,
/// in the order of [`Tp`].
const DESCRIPTIONS: [(Tp, &CStr, &[&CStr]); 10] = [
    (Tp::WriteStaged, c"PCACHE_WRITE_STAGED", &[c"offset", c"len"]),
    (Tp::ReadHit, c"PCACHE_READ_HIT", &[c"offset", c"len"]),
    (Tp::ReadMiss, c"PCACHE_READ_MISS", &[c"offset", c"missed"]),
    (Tp::Fill, c"PCACHE_FILL", &[c"offset", c"len"]),
    (Tp::WriteWait, c"PCACHE_WRITE_WAIT", &[c"offset", c"len"]),
    (Tp::WritebackStart, c"PCACHE_WB_BATCH_START", &[c"bytes", c"writes"]),
    (Tp::WritebackDone, c"PCACHE_WB_BATCH_DONE", &[c"dirty"]),
    (Tp::BaseFlushStart, c"PCACHE_BASE_FLUSH", &[]),
    (Tp::BaseFlushDone, c"PCACHE_BASE_FLUSH_DONE", &[c"ok"]),
    (Tp::GcStep, c"PCACHE_GC_STEP", &[c"ksets"]),
];

/// How many arguments `tp` was described with (the recorder wants exactly that).
fn argc(tp: Tp) -> usize {
    DESCRIPTIONS[(tp as u16 - GROUP * 64) as usize].2.len()
}

/// Whether `tp` is enabled now (spdk_trace_tpoint_enabled).
#[inline]
fn enabled(tp: Tp) -> bool {
    let id = tp as u16;
    // SAFETY: g_trace_file is set before any reactor runs and unmapped only
    // at exit, after them; its section offsets point inside the mapping,
    // whose tpoint-mask section holds a u64 per group (SPDK_TRACE_MAX_GROUP_ID,
    // more than GROUP). Reading a mask an RPC changes meanwhile is the race
    // SPDK's own macro has: a tracepoint recorded or not around the change.
    unsafe {
        let f = sys::g_trace_file;
        if f.is_null() {
            return false;
        }
        let kind = sys::SPDK_TRACE_SECTION_TPOINT_MASK as usize;
        if kind >= (*f).num_sections as usize || (*f).section_offsets[kind] == 0 {
            return false;
        }
        let section =
            (f as *const u8).add((*f).section_offsets[kind] as usize) as *const sys::spdk_trace_section_tpoint_mask;
        let masks = std::ptr::addr_of!((*section).tpoint_mask) as *const u64;
        *masks.add((id >> 6) as usize) & (1u64 << (id & 63)) != 0
    }
}

/// Records `tp` with its arguments (the first [`argc`] of `a`, `b`), if it
/// is enabled.
#[inline]
pub fn record(tp: Tp, a: u64, b: u64) {
    if enabled(tp) {
        // SAFETY: a tracepoint this module described with argc(tp) integer
        // arguments of 8 bytes, which the recorder reads from the two passed
        // (C ignores variadic arguments past those it reads); tsc 0 asks it
        // for the time.
        unsafe { sys::_spdk_trace_record(0, tp as u16, 0, 0, 0, argc(tp) as i32, a, b) };
    }
}

/// Describes the group's tracepoints; SPDK calls it when tracing starts.
extern "C" fn describe() {
    super::ffi::guard((), || {
        let opts: Vec<sys::spdk_trace_tpoint_opts> = DESCRIPTIONS
            .iter()
            .enumerate()
            .map(|(i, (tp, name, args))| {
                debug_assert_eq!(*tp as u16, GROUP * 64 + i as u16, "DESCRIPTIONS follows Tp");
                let mut o = sys::spdk_trace_tpoint_opts {
                    name: name.as_ptr(),
                    tpoint_id: *tp as u16,
                    owner_type: OWNER_TYPE_BDEV,
                    object_type: OBJECT_NONE,
                    new_object: 0,
                    ..Default::default()
                };
                for (slot, arg) in o.args.iter_mut().zip(args.iter()) {
                    slot.name = arg.as_ptr() as *const c_char;
                    slot.type_ = sys::SPDK_TRACE_ARG_TYPE_INT as u8;
                    slot.size = 8;
                }
                o
            })
            .collect();
        // SAFETY: opts and the names it points to live across the call,
        // which copies them into the trace file.
        unsafe { sys::spdk_trace_register_description_ext(opts.as_ptr(), opts.len()) };
    })
}

/// Adds the `pcache` group to SPDK's list, from the library's constructor
/// (before the application parses `-e`).
pub fn register_group() {
    static mut REG: sys::spdk_trace_register_fn = sys::spdk_trace_register_fn {
        name: c"pcache".as_ptr(),
        tgroup_id: GROUP as u8,
        reg_fn: Some(describe),
        next: std::ptr::null_mut(),
    };
    // SAFETY: called once, from the constructor; SPDK keeps the pointer in
    // its list (and writes its `next`) for the life of the process, which a
    // static outlives; nothing in Rust touches REG afterwards.
    unsafe { sys::spdk_trace_add_register_fn(std::ptr::addr_of_mut!(REG)) };
}

/// Writeback's batches as tracepoints.
pub struct WritebackTrace;

impl crate::WritebackEvents for WritebackTrace {
    fn batch_start(&self, bytes: u64, writes: usize) {
        record(Tp::WritebackStart, bytes, writes as u64);
    }

    fn batch_done(&self, dirty: u64) {
        record(Tp::WritebackDone, dirty, 0);
    }
}

/// What a pcache hands its engine to hear of writeback batches.
pub fn writeback_events() -> Arc<dyn crate::WritebackEvents> {
    Arc::new(WritebackTrace)
}
