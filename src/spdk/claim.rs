//! Owning bdevs: pcache's claims on its cache and base bdevs, including the
//! ones it holds before the pcache that needs them can be built.
//!
//! Behind a write-back cache the base is stale: its newest data may be dirty
//! in pmem. So no other module may ever open the base, and modules that look
//! for metadata on new bdevs (lvol, GPT, RAID, ...) must find it on the pcache
//! bdev, never on the base, even after writeback has copied that metadata
//! down. SPDK examines a new bdev in two rounds: every module's
//! `examine_config`, synchronously inside `spdk_bdev_register`, then, only if
//! nobody claimed the bdev, every module's `examine_disk`, which is where
//! lvol, GPT and RAID read their metadata. pcache claims a bdev it knows to be
//! its own in the first round (see `pcache_bdev::examine_config` for how it
//! knows), so the second round never reaches it.
//!
//! A bdev claimed before its pcache exists is *held* here: open, claimed, and
//! handed to the pcache when it is built. A held bdev is closed when it is
//! hot-removed, or when what made pcache hold it goes away.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use spdk_sys as sys;

use super::ffi::{cstring, guard, str_of};
use super::pmem_bdev::errno_str;

/// Called with a bdev's name when SPDK asks its owner to let go of it.
pub type OnRemove = fn(&str);

/// What the event callback of a descriptor needs: whose it is and whom to tell.
struct EventCtx {
    name: String,
    on_remove: OnRemove,
    /// SPDK asked for the bdev back: it is going away.
    removed: AtomicBool,
}

/// A bdev opened for writing and claimed by the pcache module. Released and
/// closed on drop, which must happen on the thread that claimed it (SPDK's
/// app thread, where RPCs and examine run).
pub struct Claimed {
    desc: *mut sys::spdk_bdev_desc,
    ctx: *mut EventCtx,
}

/// The bdev module claims are made for.
#[derive(Clone, Copy)]
pub struct Module(*mut sys::spdk_bdev_module);

impl Module {
    /// # Safety
    /// `m` is a bdev module registered with SPDK for the life of the program.
    pub unsafe fn new(m: *mut sys::spdk_bdev_module) -> Self {
        Module(m)
    }
}

// SAFETY: a Claimed is only kept in registries; it is opened, used for SPDK
// calls and dropped on the app thread, as the type's doc requires.
unsafe impl Send for Claimed {}

impl Claimed {
    /// Opens the bdev `name` for writing and claims it for `module`. `role`
    /// names it in errors ("base_bdev", "cache_bdev").
    pub fn claim(name: &str, role: &str, module: Module, on_remove: OnRemove) -> Result<Self, String> {
        let ctx =
            Box::into_raw(Box::new(EventCtx { name: name.to_string(), on_remove, removed: AtomicBool::new(false) }));
        let c = cstring(name);
        let mut desc = std::ptr::null_mut();
        // SAFETY: plain SPDK calls on the app thread; `ctx` outlives the descriptor
        // (freed in drop, after the close), or is freed here if nothing was opened.
        unsafe {
            let rc = sys::spdk_bdev_open_ext(c.as_ptr(), true, Some(bdev_event), ctx as *mut c_void, &mut desc);
            if rc != 0 {
                drop(Box::from_raw(ctx));
                let bdev = sys::spdk_bdev_get_by_name(c.as_ptr());
                return Err(match (rc == -libc::EPERM, holder_of(bdev)) {
                    (true, Some(h)) => format!("{role} {name} is in use: claimed by {h}"),
                    _ => format!("cannot open {role} {name}: {}", errno_str(rc)),
                });
            }
            let bdev = sys::spdk_bdev_desc_get_bdev(desc);
            if sys::spdk_bdev_module_claim_bdev(bdev, desc, module.0) != 0 {
                let h = holder_of(bdev).unwrap_or_else(|| "another module".into());
                sys::spdk_bdev_close(desc);
                drop(Box::from_raw(ctx));
                return Err(format!("{role} {name} is in use: claimed by {h}"));
            }
        }
        Ok(Claimed { desc, ctx })
    }

    pub fn desc(&self) -> *mut sys::spdk_bdev_desc {
        self.desc
    }

    pub fn bdev(&self) -> *mut sys::spdk_bdev {
        // SAFETY: the descriptor is open for the life of self.
        unsafe { sys::spdk_bdev_desc_get_bdev(self.desc) }
    }

    pub fn name(&self) -> &str {
        // SAFETY: ctx lives as long as self.
        unsafe { &(*self.ctx).name }
    }

    /// Whether the bdev is being removed (it must then be let go, never kept).
    pub fn is_removed(&self) -> bool {
        // SAFETY: ctx lives as long as self.
        unsafe { (*self.ctx).removed.load(Ordering::Acquire) }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        // SAFETY: desc was opened and claimed by `claim` on this thread; ctx came
        // from Box::into_raw and SPDK stops using it once the descriptor is closed.
        unsafe {
            sys::spdk_bdev_module_release_bdev(sys::spdk_bdev_desc_get_bdev(self.desc));
            sys::spdk_bdev_close(self.desc);
            drop(Box::from_raw(self.ctx));
        }
    }
}

/// The modules holding a claim on `bdev`, and the claim's type.
///
/// # Safety
/// `bdev` is NULL or a registered bdev; called on the app thread, where claims change.
unsafe fn claims_on(bdev: *mut sys::spdk_bdev) -> Option<(Vec<String>, String)> {
    if bdev.is_null() {
        return None;
    }
    // SAFETY: bdev is a registered bdev and this is the app thread (caller's contract), so its
    // claim state, the claim list and the modules it names stay put while they are read; the claim
    // union is read as the member claim_type says is in use; the names are static C strings.
    unsafe {
        let internal = &(*bdev).internal;
        let kind = str_of(sys::spdk_bdev_claim_get_name(internal.claim_type)).into_owned();
        let mut modules = Vec::new();
        match internal.claim_type {
            sys::SPDK_BDEV_CLAIM_NONE => return None,
            sys::SPDK_BDEV_CLAIM_EXCL_WRITE => modules.push(internal.claim.v1.module),
            _ => {
                let mut c = internal.claim.v2.claims.tqh_first;
                while !c.is_null() {
                    modules.push((*c).module);
                    c = (*c).link.tqe_next;
                }
            }
        }
        let names = modules.iter().filter(|m| !m.is_null()).map(|m| str_of((**m).name).into_owned()).collect();
        Some((names, kind))
    }
}

/// Who holds a claim on `bdev`, for messages: "module lvol (read_many_write_one)".
///
/// # Safety
/// As for [`claims_on`].
unsafe fn holder_of(bdev: *mut sys::spdk_bdev) -> Option<String> {
    // SAFETY: the caller gives claims_on's guarantees.
    let (names, kind) = unsafe { claims_on(bdev) }?;
    let who = if names.is_empty() { "a bdev module".to_string() } else { format!("module {}", names.join(", ")) };
    Some(format!("{who} ({kind})"))
}

/// The modules holding a claim on the bdev named `name` (none if it is
/// missing or unclaimed).
pub fn holders(name: &str) -> Vec<String> {
    let c = cstring(name);
    // SAFETY: name lookup and claim query on the app thread.
    unsafe { claims_on(sys::spdk_bdev_get_by_name(c.as_ptr())) }.map(|(m, _)| m).unwrap_or_default()
}

/// The event callback of a claimed bdev's descriptor: SPDK passes the event, the bdev and the
/// EventCtx Claimed::claim opened the descriptor with.
unsafe extern "C" fn bdev_event(t: sys::spdk_bdev_event_type, _bdev: *mut sys::spdk_bdev, ctx: *mut c_void) {
    guard((), || {
        if t != sys::SPDK_BDEV_EVENT_REMOVE {
            return;
        }
        // Copied first: handling the event may drop the Claimed that owns ctx.
        let (name, on_remove) = {
            // SAFETY: ctx is the EventCtx of an open descriptor: Claimed frees it only after
            // closing the descriptor, and SPDK calls this on the app thread, where that happens.
            let c = unsafe { &*(ctx as *const EventCtx) };
            c.removed.store(true, Ordering::Release);
            (c.name.clone(), c.on_remove)
        };
        // A held bdev simply goes back; one in use by a pcache is its owner's to release.
        release(&name);
        on_remove(&name);
    })
}

/// Bdevs claimed for pcaches not built yet.
static HELD: Mutex<Vec<Claimed>> = Mutex::new(Vec::new());

fn held() -> MutexGuard<'static, Vec<Claimed>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds `name` for a pcache to come: claims it now unless it is held already.
pub fn hold(name: &str, role: &str, module: Module, on_remove: OnRemove) -> Result<(), String> {
    if is_held(name) {
        return Ok(());
    }
    let c = Claimed::claim(name, role, module, on_remove)?;
    held().push(c);
    Ok(())
}

pub fn is_held(name: &str) -> bool {
    held().iter().any(|h| h.name() == name)
}

/// The held bdev `name`, handed over to a pcache being built.
pub fn take(name: &str) -> Option<Claimed> {
    let mut h = held();
    let i = h.iter().position(|c| c.name() == name)?;
    Some(h.remove(i))
}

/// Gives a bdev back to the holds (a pcache that could not be built, or
/// that went down); one being removed is let go instead.
pub fn put_back(c: Claimed) {
    if !c.is_removed() {
        held().push(c);
    }
}

/// Lets go of the held bdev `name`, if held.
pub fn release(name: &str) {
    let c = take(name);
    drop(c); // Outside the lock: closing may call back into SPDK.
}

/// Names of every held bdev.
pub fn held_names() -> Vec<String> {
    held().iter().map(|h| h.name().to_string()).collect()
}
