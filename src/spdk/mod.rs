//! The SPDK bdev module: a `pmem` bdev (a libpmem mapping served as a block
//! device, and the cache device for pcache) and the `pcache` vbdev that serves
//! the engine over a pmem bdev and any base bdev.
//!
//! Built with the `spdk` feature into `libpcache.so`, which registers both bdev
//! modules, the RPC methods and the `pcache` log flag from ELF constructors, so
//! `LD_PRELOAD=libpcache.so spdk_tgt ...` gains them.
//!
//! Everything here runs on SPDK threads and calls back into SPDK; the engine
//! it drives (the rest of this crate) knows nothing of it. Every `extern "C"`
//! entry point catches panics ([`ffi::guard`]) so none unwinds into C.
//!
//! - [`ffi`]: small helpers over the raw bindings
//! - [`log`]: the `log` crate routed into SPDK's log under the `pcache` flag
//! - [`json`]: RPC parameter decoding and JSON writing
//! - [`pmem_bdev`]: the pmem bdev module
//! - [`claim`]: owning the cache and base bdevs before any other module examines them
//! - [`pcache_bdev`]: the pcache vbdev: create, delete, examine, config
//! - [`pcache_io`]: the I/O path and the per-reactor channels
//! - [`base_io`]: base-device I/O for writeback
//! - [`pollers`]: writeback, GC and key-set flushing
//! - [`rbd_owner`]: an RBD base records which pcache owns it
//! - [`rpc`]: the JSON-RPC methods
//! - [`trace`]: the `pcache` tracepoint group

mod base_io;
mod claim;
mod ffi;
mod json;
mod log;
mod node;
mod pcache_bdev;
mod pcache_io;
mod pmem_bdev;
mod pollers;
mod rbd_owner;
mod rpc;
mod trace;

/// Registers everything with SPDK when the library is loaded. SPDK's own
/// modules do the same from C constructors (SPDK_BDEV_MODULE_REGISTER,
/// SPDK_RPC_REGISTER); the pmem module registers first, so configs list pmem
/// bdevs before the pcache bdevs that use them.
extern "C" fn register_all() {
    ffi::guard((), || {
        log::register();
        pmem_bdev::register_module();
        pcache_bdev::register_module();
        rpc::register_methods();
        trace::register_group();
    })
}

#[used]
#[link_section = ".init_array"]
static REGISTER_ALL: extern "C" fn() = register_all;
