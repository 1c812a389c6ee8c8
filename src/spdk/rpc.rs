//! The JSON-RPC methods, following SPDK's conventions: every bad, missing or
//! unknown parameter is answered with an error naming it, and nothing about
//! the running bdevs changes.

use std::ffi::CStr;
use std::path::PathBuf;

use spdk_sys as sys;

use super::ffi::guard;
use super::json::{Params, Request};
use super::node::CreateOpts;
use super::pcache_bdev::{self, Created};
use super::pmem_bdev;
use super::pollers::FlushDone;

type Handler = unsafe extern "C" fn(*mut sys::spdk_jsonrpc_request, *const sys::spdk_json_val);

const METHODS: &[(&CStr, Handler)] = &[
    (c"bdev_pmem_create", pmem_create),
    (c"bdev_pmem_delete", pmem_delete),
    (c"bdev_pcache_create", pcache_create),
    (c"bdev_pcache_delete", pcache_delete),
    (c"bdev_pcache_set_options", pcache_set_options),
    (c"bdev_pcache_flush", pcache_flush),
    (c"bdev_pcache_get_stats", pcache_get_stats),
];

pub fn register_methods() {
    for (name, f) in METHODS {
        // SAFETY: static names and handlers, as SPDK_RPC_REGISTER passes them.
        unsafe { sys::spdk_rpc_register_method(name.as_ptr(), Some(*f), sys::SPDK_RPC_RUNTIME) };
    }
}

const INVALID_PARAMS: i32 = sys::SPDK_JSONRPC_ERROR_INVALID_PARAMS;
/// Largest writeback batch cap accepted (1 TiB: far beyond any cache).
const MAX_BATCH: u64 = 1 << 40;
/// Largest sequential cutoff (a stream must run this long before it bypasses).
const MAX_SEQ_CUTOFF: u64 = 1 << 40;
/// A day: longer would only hide a base that never catches up.
const MAX_BASE_LAG_SECS: u64 = 86_400;
use crate::format::{MAX_GC_PERCENT, MAX_SEG_SIZE, MIN_SEG_SIZE};

/// The request a method's body answers: answering (or taking it to answer
/// later) consumes this, and if the body returns an error instead, `handle`
/// answers with it.
struct Answer<'a>(&'a mut Option<Request>);

impl Answer<'_> {
    fn respond(self, f: impl FnOnce(&mut super::json::Writer)) {
        if let Some(r) = self.0.take() {
            r.respond(f);
        }
    }

    fn respond_bool(self, v: bool) {
        self.respond(|w| w.bool(v));
    }

    /// For an answer that comes later (a delete's completion, a flush).
    fn take(self) -> Option<Request> {
        self.0.take()
    }
}

/// Decodes the params and runs `body`; a decoding error (or a panic) becomes
/// an error response, so the request is always answered exactly once.
///
/// # Safety
/// `req` and `raw` are what SPDK passed to a method handler, on the app thread: a request not
/// answered yet (answered from now on only through `handle`), and NULL or its parsed params.
unsafe fn handle(
    method: &'static str,
    req: *mut sys::spdk_jsonrpc_request,
    raw: *const sys::spdk_json_val,
    body: impl FnOnce(Params, Answer) -> Result<(), (i32, String)>,
) {
    // SAFETY: SPDK passed `req` to this handler; it is answered only through `slot`.
    let mut slot = unsafe { Request::from_raw(req) };
    let done = guard(false, || {
        // SAFETY: raw is NULL or the parsed params of this request (caller's contract).
        let r = match unsafe { Params::from_raw(method, raw) } {
            Ok(p) => body(p, Answer(&mut slot)),
            Err(e) => Err((INVALID_PARAMS, e)),
        };
        if let Err((code, msg)) = r {
            match slot.take() {
                Some(req) => req.respond_error(code, &msg),
                None => log::error!("{method}: {msg} (after the request was answered)"),
            }
        }
        true
    });
    if !done {
        if let Some(req) = slot.take() {
            req.respond_error(sys::SPDK_JSONRPC_ERROR_INTERNAL_ERROR, &format!("{method}: internal error"));
        }
    }
}

fn bad(e: String) -> (i32, String) {
    (INVALID_PARAMS, e)
}

fn no_such(what: &str, name: &str) -> (i32, String) {
    (-libc::ENODEV, format!("no {what} named {name}"))
}

/// The bdev_pmem_create method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pmem_create(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pmem_create", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            let path = p.req_str("path").map_err(bad)?;
            let size = p.opt_u64("size", 1, u64::MAX).map_err(bad)?;
            let bs = p.opt_u64("block_size", 512, 65536).map_err(bad)?.unwrap_or(4096) as u32;
            p.finish().map_err(bad)?;
            pmem_bdev::create(&name, &PathBuf::from(&path), size, bs)
                .map_err(|e| bad(format!("bdev_pmem_create: {e}")))?;
            req.respond(|w| w.str(&name));
            Ok(())
        })
    }
}

/// The bdev_pmem_delete method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pmem_delete(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pmem_delete", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            p.finish().map_err(bad)?;
            if !pmem_bdev::is_pmem_bdev(&name) {
                return Err(no_such("pmem bdev", &name));
            }
            let req = req.take();
            pmem_bdev::delete(&name.clone(), Box::new(move |rc| answer_rc(req, rc, &name)));
            Ok(())
        })
    }
}

fn answer_rc(req: Option<Request>, rc: i32, name: &str) {
    let Some(req) = req else { return };
    if rc == 0 {
        req.respond_bool(true);
    } else {
        req.respond_error(rc, &format!("deleting {name} failed: {}", pmem_bdev::errno_str(rc)));
    }
}

/// The bdev_pcache_create method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pcache_create(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pcache_create", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            let cache_bdev = p.req_str("cache_bdev").map_err(bad)?;
            let base_bdev = p.req_str("base_bdev").map_err(bad)?;
            let mode = p.opt_str("cache_mode").map_err(bad)?;
            let data_crc = p.opt_bool("data_crc").map_err(bad)?;
            let gc_percent = p.opt_u64("gc_percent", 0, MAX_GC_PERCENT as u64).map_err(bad)?.map(|v| v as u8);
            let writeback_batch_bytes = p.opt_u64("writeback_batch_bytes", 1, MAX_BATCH).map_err(bad)?;
            let seq_cutoff_bytes = p.opt_u64("seq_cutoff_bytes", 0, MAX_SEQ_CUTOFF).map_err(bad)?;
            let base_lag_secs = p.opt_u64("base_lag_secs", 0, MAX_BASE_LAG_SECS).map_err(bad)?;
            let promotion = parse_promotion("bdev_pcache_create", &mut p)?;
            let max_dirty_percent = p.opt_u64("max_dirty_percent", 1, 100).map_err(bad)?.map(|v| v as u32);
            let uuid = p.opt_str("uuid").map_err(bad)?;
            let seg_size = p.opt_u64("seg_size", MIN_SEG_SIZE, MAX_SEG_SIZE).map_err(bad)?;
            let force_format = p.opt_bool("force_format").map_err(bad)?.unwrap_or(false);
            p.finish().map_err(bad)?;
            let uuid = match uuid {
                Some(s) => Some(
                    s.parse::<uuid::Uuid>()
                        .map_err(|e| bad(format!("bdev_pcache_create: parameter 'uuid' is not a UUID: {s:?} ({e})")))?,
                ),
                None => None,
            };
            if let Some(s) = seg_size.filter(|s| !s.is_power_of_two()) {
                return Err(bad(format!("bdev_pcache_create: parameter 'seg_size' must be a power of two, not {s}")));
            }
            if uuid.is_some_and(|u| u.is_nil()) {
                return Err(bad("bdev_pcache_create: parameter 'uuid' must not be the nil UUID".into()));
            }
            let cache_mode = parse_mode("bdev_pcache_create", mode)?;
            let opts = CreateOpts {
                name: name.clone(),
                cache_bdev,
                base_bdev,
                data_crc,
                gc_percent,
                writeback_batch_bytes,
                seq_cutoff_bytes,
                base_lag_secs,
                promotion,
                max_dirty_percent,
                cache_mode,
                uuid,
                seg_size,
                force_format,
            };
            match pcache_bdev::create(opts).map_err(|e| (-libc::EINVAL, format!("bdev_pcache_create: {e}")))? {
                Created::Now => {}
                Created::Waiting(missing) => {
                    log::info!("{name}: created when bdev(s) {} appear", missing.join(", "));
                }
                // Logged with what to do; bdev_pcache_get_stats shows it. Not an
                // error, so an application starting from a config still starts.
                Created::Blocked => {}
            }
            req.respond(|w| w.str(&name));
            Ok(())
        })
    }
}

/// The `promotion` and `promotion_hits` parameters of `method`, if given
/// (hits alone means nhit).
fn parse_promotion(method: &str, p: &mut Params) -> Result<Option<crate::Promotion>, (i32, String)> {
    let name = p.opt_str("promotion").map_err(bad)?;
    let hits = p.opt_u64("promotion_hits", crate::promote::MIN_HITS as u64, u8::MAX as u64).map_err(bad)?;
    if name.is_none() && hits.is_none() {
        return Ok(None);
    }
    crate::Promotion::parse(name.as_deref().unwrap_or("nhit"), hits)
        .map(Some)
        .map_err(|e| bad(format!("{method}: {e}")))
}

/// The `cache_mode` parameter of `method`, if given.
fn parse_mode(method: &str, mode: Option<String>) -> Result<Option<crate::CacheMode>, (i32, String)> {
    mode.map(|m| {
        m.parse().map_err(|_| {
            bad(format!(
                "{method}: parameter 'cache_mode' is '{m}'; use writeback, writethrough, writearound or passthrough"
            ))
        })
    })
    .transpose()
}

/// The bdev_pcache_delete method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pcache_delete(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pcache_delete", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            let flush = p.opt_bool("flush").map_err(bad)?.unwrap_or(false);
            p.finish().map_err(bad)?;
            if !pcache_bdev::is_configured(&name) {
                return Err(no_such("pcache", &name));
            }
            if flush && !pcache_bdev::is_online(&name) {
                return Err((
                    -libc::ENODEV,
                    format!(
                        "{name} is not online: nothing can be written back (delete it without flush; \
                     its dirty data stays on the pmem bdev)"
                    ),
                ));
            }
            let req = req.take();
            if !flush {
                pcache_bdev::delete(&name.clone(), Box::new(move |rc| answer_rc(req, rc, &name)));
                return Ok(());
            }
            // Write everything back first; delete only once that succeeded.
            let nm = name.clone();
            let then_delete: FlushDone = Box::new(move |r| match r {
                Ok(()) => pcache_bdev::delete(&nm.clone(), Box::new(move |rc| answer_rc(req, rc, &nm))),
                Err(e) => {
                    if let Some(req) = req {
                        req.respond_error(
                            sys::SPDK_JSONRPC_ERROR_INTERNAL_ERROR,
                            &format!("{e}; {nm} was not deleted"),
                        );
                    }
                }
            });
            // Online: checked above, on this thread, and nothing ran since.
            let _ = pcache_bdev::flush(&name, || then_delete);
            Ok(())
        })
    }
}

/// The bdev_pcache_set_options method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pcache_set_options(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pcache_set_options", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            let gc_percent = p.opt_u64("gc_percent", 0, MAX_GC_PERCENT as u64).map_err(bad)?;
            let batch = p.opt_u64("writeback_batch_bytes", 1, MAX_BATCH).map_err(bad)?;
            let cutoff = p.opt_u64("seq_cutoff_bytes", 0, MAX_SEQ_CUTOFF).map_err(bad)?;
            let lag = p.opt_u64("base_lag_secs", 0, MAX_BASE_LAG_SECS).map_err(bad)?;
            let promotion = parse_promotion("bdev_pcache_set_options", &mut p)?;
            let max_dirty_percent = p.opt_u64("max_dirty_percent", 1, 100).map_err(bad)?.map(|v| v as u32);
            let mode = p.opt_str("cache_mode").map_err(bad)?;
            p.finish().map_err(bad)?;
            let mode = parse_mode("bdev_pcache_set_options", mode)?;
            let opts = pcache_bdev::LiveOptions {
                cache_mode: mode,
                writeback_batch_bytes: batch,
                seq_cutoff_bytes: cutoff,
                base_lag_secs: lag,
                promotion,
                max_dirty_percent,
                gc_percent: gc_percent.map(|g| g as u8),
            };
            pcache_bdev::set_options(&name, opts)
                .ok_or_else(|| no_such("pcache", &name))?
                .map_err(|e| (-libc::EIO, e))?;
            req.respond_bool(true);
            Ok(())
        })
    }
}

/// A flush waiter answering a JSON-RPC request.
fn answer(req: Request) -> FlushDone {
    Box::new(move |r| match r {
        Ok(()) => req.respond_bool(true),
        Err(e) => req.respond_error(sys::SPDK_JSONRPC_ERROR_INTERNAL_ERROR, &e),
    })
}

/// The bdev_pcache_flush method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pcache_flush(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pcache_flush", req, raw, |mut p, req| {
            let name = p.req_str("name").map_err(bad)?;
            p.finish().map_err(bad)?;
            // Answered once every dirty byte is on the base. The request is taken
            // only for a pcache that exists: otherwise the error answers it.
            pcache_bdev::flush(&name, || match req.take() {
                Some(req) => answer(req),
                None => Box::new(|_| {}),
            })
            .ok_or_else(|| no_such("pcache", &name))
        })
    }
}

/// The bdev_pcache_get_stats method: SPDK passes the request and its parsed params (or NULL).
unsafe extern "C" fn pcache_get_stats(req: *mut sys::spdk_jsonrpc_request, raw: *const sys::spdk_json_val) {
    // SAFETY: req and raw are what SPDK passes a method handler (register_methods), on the app thread.
    unsafe {
        handle("bdev_pcache_get_stats", req, raw, |mut p, req| {
            let name = p.opt_str("name").map_err(bad)?;
            p.finish().map_err(bad)?;
            if let Some(n) = &name {
                if !pcache_bdev::is_configured(n) {
                    return Err(no_such("pcache", n));
                }
            }
            req.respond(|w| pcache_bdev::stats(name.as_deref(), w));
            Ok(())
        })
    }
}
