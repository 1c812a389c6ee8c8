//! The `pcache` vbdev: claims a pmem bdev (the cache) and a base bdev, opens
//! the engine over the pmem mapping, and registers a bdev the size of the
//! base. A pcache whose bdevs do not exist yet (a JSON config loading in any
//! order) waits for them and is created from `examine`.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use spdk_sys as sys;

use super::base_io::SpdkBase;
use super::ffi::{cstring, guard, str_of, Ptr};
use super::json::Writer;
use super::pcache_io;
use super::pmem_bdev::{self, errno_str};
use super::pollers::Background;
use crate::cache::{BaseIdentity, Cache, Config, Opened};
use crate::pmem::{Media, PmemFile};

/// What a pcache was created with; kept for save_config and for pcaches
/// waiting for their bdevs.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateOpts {
    pub name: String,
    pub cache_bdev: String,
    pub base_bdev: String,
    pub data_crc: Option<bool>,
    pub gc_percent: Option<u8>,
    pub force_format: bool,
}

impl CreateOpts {
    /// The pcache's name and its two bdevs, as every JSON view of it starts.
    pub fn write_names(&self, w: &mut Writer) {
        w.named_str("name", &self.name);
        w.named_str("cache_bdev", &self.cache_bdev);
        w.named_str("base_bdev", &self.base_bdev);
    }
}

/// One registered pcache. Boxed and never moved: SPDK holds pointers to it
/// (as the bdev's ctxt and as the io_device).
pub struct PcacheNode {
    bdev: sys::spdk_bdev,
    name: CString,
    pub opts: CreateOpts,
    pub cache: Arc<Cache>,
    _media: Arc<PmemFile>,
    pub base_desc: *mut sys::spdk_bdev_desc,
    cache_desc: *mut sys::spdk_bdev_desc,
    /// Context of the descriptors' event callbacks: the pcache's name.
    event_ctx: *mut String,
    bg: Mutex<Option<Background>>,
    /// Set once unregistering starts: deferred writes are failed, not retried.
    pub removing: AtomicBool,
}

// SAFETY: the raw SPDK handles are used only on the creating thread (descriptors, pollers)
// or are thread-safe by SPDK's contract (getting channels from a descriptor);
// everything else is Sync Rust.
unsafe impl Send for PcacheNode {}
// SAFETY: as above.
unsafe impl Sync for PcacheNode {}

impl PcacheNode {
    pub fn name(&self) -> &str {
        self.opts.name.as_str()
    }

    /// The background state; present from creation until the node is drained.
    pub fn bg(&self) -> BgGuard<'_> {
        BgGuard(self.bg.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn block_size(&self) -> u32 {
        self.bdev.blocklen
    }
}

pub struct BgGuard<'a>(MutexGuard<'a, Option<Background>>);

impl std::ops::Deref for BgGuard<'_> {
    type Target = Background;
    fn deref(&self) -> &Background {
        self.0.as_ref().expect("background state lives until the node is drained")
    }
}

impl std::ops::DerefMut for BgGuard<'_> {
    fn deref_mut(&mut self) -> &mut Background {
        self.0.as_mut().expect("background state lives until the node is drained")
    }
}

struct Registry {
    /// Every configured pcache, created or waiting for its bdevs.
    configs: Vec<CreateOpts>,
    nodes: Vec<Ptr<PcacheNode>>,
    /// Why a waiting pcache could not be created when its bdevs appeared.
    last_error: Vec<(String, String)>,
}

static MODULE: AtomicPtr<sys::spdk_bdev_module> = AtomicPtr::new(std::ptr::null_mut());
static REGISTRY: Mutex<Registry> = Mutex::new(Registry { configs: Vec::new(), nodes: Vec::new(), last_error: Vec::new() });

impl Registry {
    /// The live node of the pcache `name`.
    fn node(&self, name: &str) -> Option<Ptr<PcacheNode>> {
        // SAFETY: registered nodes are live (removed on this thread before they are freed).
        self.nodes.iter().copied().find(|n| unsafe { (*n.0).opts.name == name })
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn module() -> *mut sys::spdk_bdev_module {
    MODULE.load(Ordering::Acquire)
}

pub fn register_module() {
    let m = Box::leak(Box::new(sys::spdk_bdev_module {
        name: c"pcache".as_ptr(),
        module_init: Some(module_init),
        module_fini: Some(module_fini),
        config_json: Some(config_json),
        get_ctx_size: Some(pcache_io::ctx_size),
        examine_config: Some(examine_config),
        ..Default::default()
    }));
    MODULE.store(m, Ordering::Release);
    // SAFETY: the module struct is leaked, so it outlives SPDK's list.
    unsafe { sys::spdk_bdev_module_list_add(m) };
}

unsafe extern "C" fn module_init() -> c_int {
    0
}

unsafe extern "C" fn module_fini() {
    guard((), || {
        let mut r = registry();
        r.configs.clear();
        r.last_error.clear();
    })
}

fn bdev_exists(name: &str) -> bool {
    let c = cstring(name);
    // SAFETY: name lookup.
    !unsafe { sys::spdk_bdev_get_by_name(c.as_ptr()) }.is_null()
}

/// What bdev_pcache_create did.
pub enum Created {
    Now,
    /// Waiting for these bdevs to appear.
    Waiting(Vec<String>),
}

/// Creates a pcache now, or records it to be created when its bdevs appear.
pub fn create(opts: CreateOpts) -> Result<Created, String> {
    if registry().configs.iter().any(|c| c.name == opts.name) || bdev_exists(&opts.name) {
        return Err(format!("a bdev named {} already exists", opts.name));
    }
    if opts.cache_bdev == opts.base_bdev {
        return Err("cache_bdev and base_bdev must be different bdevs".into());
    }
    let missing: Vec<String> =
        [&opts.cache_bdev, &opts.base_bdev].into_iter().filter(|b| !bdev_exists(b)).cloned().collect();
    if !missing.is_empty() {
        log::info!("{} waits for bdev(s) {}", opts.name, missing.join(", "));
        registry().configs.push(opts);
        return Ok(Created::Waiting(missing));
    }
    registry().configs.push(opts.clone());
    if let Err(e) = attach(&opts) {
        registry().configs.retain(|c| c.name != opts.name);
        return Err(e);
    }
    Ok(Created::Now)
}

/// Deletes a pcache (created or waiting). Dirty data stays on the pmem for
/// the next create. `done(rc)` runs when the bdev is gone.
pub fn delete(name: &str, done: Box<dyn FnOnce(i32)>) {
    let node = {
        let mut r = registry();
        let Some(i) = r.configs.iter().position(|c| c.name == name) else {
            drop(r);
            done(-libc::ENODEV);
            return;
        };
        r.configs.remove(i);
        r.last_error.retain(|e| e.0 != name);
        r.node(name)
    };
    if node.is_none() {
        done(0); // It was only waiting for its bdevs.
        return;
    }
    // SAFETY: module() is pcache's registered bdev module.
    unsafe { super::ffi::unregister_bdev(name, module(), done) };
}

/// Runs `f` on the live pcache `name`.
pub fn with_node<T>(name: &str, f: impl FnOnce(&PcacheNode) -> T) -> Option<T> {
    let p = registry().node(name)?;
    // SAFETY: nodes are removed from the registry (on this thread) before they are freed.
    Some(f(unsafe { &*p.0 }))
}

/// Every configured pcache: its options, and its node if it is created.
pub fn list() -> Vec<(CreateOpts, Option<Ptr<PcacheNode>>, Option<String>)> {
    let r = registry();
    r.configs
        .iter()
        .map(|c| {
            let node = r.node(&c.name);
            let err = r.last_error.iter().find(|e| e.0 == c.name).map(|e| e.1.clone());
            (c.clone(), node, err)
        })
        .collect()
}

/// The two claimed descriptors of a pcache being built; released on drop
/// unless handed to a node.
struct Claims {
    cache_desc: *mut sys::spdk_bdev_desc,
    base_desc: *mut sys::spdk_bdev_desc,
    /// The pcache's name, the context of both descriptors' event callbacks.
    event_ctx: *mut String,
}

impl Drop for Claims {
    fn drop(&mut self) {
        // SAFETY: descriptors opened by open_claim on this thread; event_ctx from Box::into_raw.
        unsafe {
            release_close(self.base_desc);
            release_close(self.cache_desc);
            if !self.event_ctx.is_null() {
                drop(Box::from_raw(self.event_ctx));
            }
        }
    }
}

/// Opens and claims a bdev for pcache, returning its descriptor.
unsafe fn open_claim(name: &str, role: &str, event_ctx: *mut String) -> Result<*mut sys::spdk_bdev_desc, String> {
    let c = cstring(name);
    let mut desc = std::ptr::null_mut();
    let rc = sys::spdk_bdev_open_ext(c.as_ptr(), true, Some(bdev_event), event_ctx as *mut c_void, &mut desc);
    if rc == -libc::EPERM {
        return Err(format!("{role} {name} is in use (claimed by another pcache or bdev module)"));
    }
    if rc != 0 {
        return Err(format!("cannot open {role} {name}: {}", errno_str(rc)));
    }
    let rc = sys::spdk_bdev_module_claim_bdev(sys::spdk_bdev_desc_get_bdev(desc), desc, module());
    if rc != 0 {
        sys::spdk_bdev_close(desc);
        return Err(format!("{role} {name} is already claimed by another bdev module"));
    }
    Ok(desc)
}

unsafe fn release_close(desc: *mut sys::spdk_bdev_desc) {
    if !desc.is_null() {
        sys::spdk_bdev_module_release_bdev(sys::spdk_bdev_desc_get_bdev(desc));
        sys::spdk_bdev_close(desc);
    }
}

/// Builds and registers the pcache bdev for `opts`, whose bdevs exist.
fn attach(opts: &CreateOpts) -> Result<(), String> {
    let media = pmem_bdev::media_of(&opts.cache_bdev).ok_or_else(|| {
        format!("cache_bdev {} is not a pmem bdev (create one with bdev_pmem_create)", opts.cache_bdev)
    })?;
    let mut claims = Claims {
        cache_desc: std::ptr::null_mut(),
        base_desc: std::ptr::null_mut(),
        event_ctx: Box::into_raw(Box::new(opts.name.clone())),
    };
    // SAFETY: SPDK calls on the current (RPC or examine) thread; `claims`
    // releases whatever was opened if a later step fails.
    unsafe {
        claims.cache_desc = open_claim(&opts.cache_bdev, "cache_bdev", claims.event_ctx)?;
        claims.base_desc = open_claim(&opts.base_bdev, "base_bdev", claims.event_ctx)?;
        let base = sys::spdk_bdev_desc_get_bdev(claims.base_desc);
        let block_size = sys::spdk_bdev_get_block_size(base);
        let blocks = sys::spdk_bdev_get_num_blocks(base);
        if block_size % 512 != 0 {
            return Err(format!("base_bdev {} has {block_size}-byte blocks; pcache needs a multiple of 512", opts.base_bdev));
        }
        // A device that already holds a pcache keeps its data_crc unless told otherwise.
        let data_crc =
            opts.data_crc.unwrap_or_else(|| Cache::read_superblock(&*media).map(|sb| sb.data_crc()).unwrap_or(false));
        let mut cfg = Config::new(BaseIdentity { size: blocks * block_size as u64, block_size, id: opts.base_bdev.clone() });
        cfg.data_crc = data_crc;
        cfg.gc_percent = opts.gc_percent;
        cfg.force_format = opts.force_format;
        cfg.workers = super::ffi::core_count();
        let (cache, opened) =
            Cache::open(media.clone() as Arc<dyn Media>, &cfg).map_err(|e| format!("{}: {e}", opts.name))?;
        match &opened {
            Opened::Formatted => log::info!("{}: formatted {} for base {}", opts.name, opts.cache_bdev, opts.base_bdev),
            Opened::Loaded(r) => log::info!("{}: loaded {} and replayed its log: {r:?}", opts.name, opts.cache_bdev),
        }
        let ch = sys::spdk_bdev_get_io_channel(claims.base_desc);
        if ch.is_null() {
            return Err(format!("no I/O channel for base_bdev {}", opts.base_bdev));
        }
        let node = Box::into_raw(Box::new(PcacheNode {
            // SAFETY: spdk_bdev is a plain C struct; all-zero is its initial state.
            bdev: std::mem::zeroed(),
            name: cstring(&opts.name),
            opts: opts.clone(),
            cache: Arc::new(cache),
            _media: media,
            base_desc: claims.base_desc,
            cache_desc: claims.cache_desc,
            event_ctx: claims.event_ctx,
            bg: Mutex::new(Some(Background::new(SpdkBase::new(claims.base_desc, ch)))),
            removing: AtomicBool::new(false),
        }));
        let n = &mut *node;
        let b = &mut n.bdev;
        b.name = n.name.as_ptr() as *mut _;
        b.product_name = c"pcache".as_ptr() as *mut _;
        b.blocklen = block_size;
        b.blockcnt = blocks;
        // Writes are acknowledged from pmem before their keys are journalled: a
        // FLUSH makes them durable, exactly what a volatile write cache promises.
        b.write_cache = 1;
        // Read misses go straight from the base into the caller's buffers.
        b.required_alignment = (*base).required_alignment;
        b.ctxt = node as *mut c_void;
        b.fn_table = &pcache_io::FN_TABLE;
        b.module = module();

        sys::spdk_io_device_register(
            node as *mut c_void,
            Some(pcache_io::ch_create),
            Some(pcache_io::ch_destroy),
            std::mem::size_of::<pcache_io::Channel>() as u32,
            n.name.as_ptr(),
        );
        n.bg().start(node);
        registry().nodes.push(Ptr(node));
        let rc = sys::spdk_bdev_register(&mut n.bdev);
        if rc != 0 {
            registry().nodes.retain(|x| x.0 != node);
            stop_background(n, "registration failed");
            // The claims go back with `claims`; the node goes with its io_device.
            n.event_ctx = std::ptr::null_mut();
            sys::spdk_io_device_unregister(node as *mut c_void, Some(free_node));
            return Err(format!("spdk_bdev_register failed: {}", errno_str(rc)));
        }
        // The node owns the claims from here on.
        std::mem::forget(claims);
        // force_format is spent: coming back after a hot-remove must load
        // the cache, not wipe it.
        if let Some(c) = registry().configs.iter_mut().find(|c| c.name == opts.name) {
            c.force_format = false;
        }
    }
    Ok(())
}

/// Stops the pollers and gives back the background channel.
unsafe fn stop_background(n: &PcacheNode, why: &str) {
    let mut guard = n.bg.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mut bg) = guard.take() {
        bg.stop(why);
        sys::spdk_put_io_channel(bg.base.channel());
    }
}

unsafe extern "C" fn bdev_event(t: sys::spdk_bdev_event_type, bdev: *mut sys::spdk_bdev, ctx: *mut c_void) {
    guard((), || {
        if t != sys::SPDK_BDEV_EVENT_REMOVE {
            return;
        }
        let name = &*(ctx as *const String);
        let Some(Ptr(node)) = registry().node(name) else { return };
        if (*node).removing.swap(true, Ordering::AcqRel) {
            return;
        }
        log::warn!(
            "{}: bdev {} is being removed; unregistering (dirty data stays on the pmem)",
            (*node).name(),
            str_of(sys::spdk_bdev_get_name(bdev))
        );
        sys::spdk_bdev_unregister(&mut (*node).bdev, None, std::ptr::null_mut());
    })
}

/// bdev destruct: runs on the creating thread once every descriptor of the
/// pcache bdev is closed. Waits for writeback I/O in flight, then closes
/// everything; the node is freed when its io_device is gone.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn destruct(ctx: *mut c_void) -> c_int {
    guard(0, || {
        let node = ctx as *mut PcacheNode;
        (*node).removing.store(true, Ordering::Release);
        registry().nodes.retain(|n| n.0 != node);
        {
            let mut bg = (*node).bg();
            bg.stop(&format!("{} was deleted before its flush finished", (*node).name()));
        }
        let p = sys::spdk_poller_register(Some(drain_poll), ctx, 1000);
        DRAIN.lock().unwrap_or_else(|e| e.into_inner()).push((Ptr(node), Ptr(p)));
        1 // Asynchronous: spdk_bdev_destruct_done follows.
    })
}

static DRAIN: Mutex<Vec<(Ptr<PcacheNode>, Ptr<sys::spdk_poller>)>> = Mutex::new(Vec::new());

unsafe extern "C" fn drain_poll(ctx: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        let node = ctx as *mut PcacheNode;
        if (*node).bg().base.outstanding() > 0 {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        let mut p = {
            let mut d = DRAIN.lock().unwrap_or_else(|e| e.into_inner());
            let i = d.iter().position(|e| e.0 .0 == node).expect("draining node is listed");
            d.remove(i).1 .0
        };
        sys::spdk_poller_unregister(&mut p);
        let n = &mut *node;
        stop_background(n, "deleted");
        // Journal every open key, so nothing acknowledged is lost.
        if let Err(e) = n.cache.flush() {
            log::error!("{}: journalling open keys at delete failed: {e}", n.name());
        }
        release_close(n.base_desc);
        release_close(n.cache_desc);
        n.base_desc = std::ptr::null_mut();
        n.cache_desc = std::ptr::null_mut();
        sys::spdk_io_device_unregister(ctx, Some(free_node));
        sys::spdk_bdev_destruct_done(&mut n.bdev, 0);
        sys::SPDK_POLLER_BUSY as c_int
    })
}

unsafe extern "C" fn free_node(ctx: *mut c_void) {
    guard((), || {
        let node = Box::from_raw(ctx as *mut PcacheNode);
        let name = node.opts.name.clone();
        if !node.event_ctx.is_null() {
            drop(Box::from_raw(node.event_ctx));
        }
        if let Ok(cache) = Arc::try_unwrap(node.cache) {
            if let Err(e) = cache.close() {
                log::error!("{name}: close failed: {e}");
            }
        }
        log::info!("{name}: closed");
    })
}

unsafe extern "C" fn examine_config(bdev: *mut sys::spdk_bdev) {
    guard((), || {
        let _ = bdev;
        let waiting: Vec<CreateOpts> = {
            let r = registry();
            r.configs
                .iter()
                .filter(|c| {
                    r.node(&c.name).is_none()
                        && bdev_exists(&c.cache_bdev)
                        && bdev_exists(&c.base_bdev)
                        && !bdev_exists(&c.name)
                })
                .cloned()
                .collect()
        };
        for opts in waiting {
            match attach(&opts) {
                Ok(()) => {
                    registry().last_error.retain(|e| e.0 != opts.name);
                    log::info!("{}: created now that its bdevs exist", opts.name);
                }
                Err(e) => {
                    log::error!("{}: cannot be created: {e}", opts.name);
                    let mut r = registry();
                    r.last_error.retain(|x| x.0 != opts.name);
                    r.last_error.push((opts.name.clone(), e));
                }
            }
        }
    });
    sys::spdk_bdev_module_examine_done(module());
}

/// Module-level config: only pcaches still waiting for their bdevs (they wait
/// again on load, so their place in the config does not matter). Created ones
/// are written per bdev ([`write_bdev_config`]), which SPDK emits after every
/// module's config, so after the pmem bdevs they need.
unsafe extern "C" fn config_json(w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        let mut w = Writer::new(w);
        for (c, node, _) in list() {
            if node.is_none() {
                write_create(&mut w, &c, c.gc_percent, c.data_crc);
            }
        }
        0
    })
}

/// fn_table.write_config_json: the RPC that recreates this pcache.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
pub unsafe extern "C" fn write_bdev_config(bdev: *mut sys::spdk_bdev, w: *mut sys::spdk_json_write_ctx) {
    guard((), || {
        let n = &*((*bdev).ctxt as *const PcacheNode);
        let s = n.cache.stats();
        write_create(&mut Writer::new(w), &n.opts, Some(s.gc_percent), Some(n.cache.data_crc()));
    })
}

fn write_create(w: &mut Writer, c: &CreateOpts, gc: Option<u8>, crc: Option<bool>) {
    w.object_begin();
    w.named_str("method", "bdev_pcache_create");
    w.named_object_begin("params");
    c.write_names(w);
    w.named_str("cache_mode", "writeback");
    if let Some(crc) = crc {
        w.named_bool("data_crc", crc);
    }
    if let Some(gc) = gc {
        w.named_u64("gc_percent", gc as u64);
    }
    // force_format is never saved: a restart must load, not wipe.
    w.object_end();
    w.object_end();
}

/// The driver_specific section of bdev_get_bdevs, and the per-bdev part of
/// bdev_pcache_get_stats.
pub fn write_info(n: &PcacheNode, s: &crate::Stats, w: &mut Writer) {
    let sb = n.cache.superblock();
    n.opts.write_names(w);
    w.named_str("cache_mode", "writeback");
    w.named_bool("data_crc", n.cache.data_crc());
    w.named_u64("gc_percent", s.gc_percent as u64);
    w.named_u64("seg_size", sb.seg_size as u64);
    w.named_u64("segs_total", s.segs_total as u64);
    w.named_u64("segs_used", s.segs_used as u64);
    for (k, v) in [("key_head", s.key_head), ("key_tail", s.key_tail), ("dirty_tail", s.dirty_tail)] {
        w.named_object_begin(k);
        w.named_u64("seg", v.0 as u64);
        w.named_u64("off", v.1 as u64);
        w.named_u64("seq", v.2);
        w.object_end();
    }
    w.named_u64("dirty_bytes", s.dirty_bytes);
    w.named_bool("clean", n.cache.is_clean());
}

pub fn write_stats(n: &PcacheNode, w: &mut Writer) {
    let s = n.cache.stats();
    write_info(n, &s, w);
    for (k, v) in [
        ("read_hit_ops", s.read_hit_ops),
        ("read_miss_ops", s.read_miss_ops),
        ("read_hit_bytes", s.read_hit_bytes),
        ("read_miss_bytes", s.read_miss_bytes),
        ("write_ops", s.write_ops),
        ("write_bytes", s.write_bytes),
        ("deferred_writes", s.deferred_writes),
        ("fill_bytes", s.fill_bytes),
        ("kset_flushes", s.kset_flushes),
        ("flush_ops", s.flush_ops),
        ("writeback_ksets", s.writeback_ksets),
        ("writeback_bytes", s.writeback_bytes),
        ("writeback_errors", s.writeback_errors),
        ("gc_ksets", s.gc_ksets),
        ("gc_keys", s.gc_keys),
        ("data_crc_errors", s.data_crc_errors),
    ] {
        w.named_u64(k, v);
    }
}
