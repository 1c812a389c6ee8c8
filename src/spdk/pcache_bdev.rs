//! The `pcache` vbdev: claims a pmem bdev (the cache) and a base bdev, opens
//! the engine over the pmem mapping, and registers a bdev the size of the
//! base. A pcache whose bdevs do not exist yet (a JSON config loading in any
//! order) waits for them and is created from `examine`.
//!
//! pcache claims its bdevs the moment they appear, before any other module
//! examines them (see [`super::claim`] for why that ordering works). It knows a
//! bdev is its own when
//! - a configured pcache names it (bdev_pcache_create ran, maybe before the
//!   bdevs exist; save_config lists every pcache first for this reason), or
//! - it is a pmem bdev holding a pcache image, or the base bdev such an image
//!   names (so a hand-written config that lists the pmem bdev before the base
//!   is safe too).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use spdk_sys as sys;

use super::base_io::SpdkBase;
use super::claim::{self, Claimed};
use super::ffi::{self, cstring, guard, str_of, Ptr};
use super::json::Writer;
use super::node::{Claims, CreateOpts, PcacheNode};
use super::pcache_io;
use super::pmem_bdev::{self, errno_str};
use super::pollers::{Background, FlushDone};
use super::rbd_owner;
use crate::pmem::{Media, PmemFile};
use crate::{BaseIdentity, Config};
use crate::{Cache, Opened};

struct Registry {
    /// Every configured pcache, created or waiting for its bdevs.
    configs: Vec<CreateOpts>,
    nodes: Vec<Ptr<PcacheNode>>,
    /// Why a waiting pcache could not be created when its bdevs appeared.
    last_error: Vec<(String, String)>,
    /// Pcache images found on pmem bdevs as they appeared: (pmem bdev, the base it names).
    images: Vec<(String, String)>,
}

static MODULE: AtomicPtr<sys::spdk_bdev_module> = AtomicPtr::new(std::ptr::null_mut());
static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { configs: Vec::new(), nodes: Vec::new(), last_error: Vec::new(), images: Vec::new() });

impl Registry {
    /// The live node of the pcache `name`.
    fn node(&self, name: &str) -> Option<Ptr<PcacheNode>> {
        // SAFETY: registered nodes are live (removed on this thread before they are freed).
        self.nodes.iter().copied().find(|n| unsafe { (*n.0).opts.name == name })
    }

    /// Whether pcache must own the bdev `bdev` although no built pcache
    /// uses it, and in which role.
    fn wants(&self, bdev: &str) -> Option<&'static str> {
        let waiting = self.configs.iter().filter(|c| self.node(&c.name).is_none());
        for c in waiting {
            if c.cache_bdev == bdev {
                return Some("cache_bdev");
            }
            if c.base_bdev == bdev {
                return Some("base_bdev");
            }
        }
        let in_use = |b: &str| {
            self.configs.iter().any(|c| self.node(&c.name).is_some() && (c.cache_bdev == b || c.base_bdev == b))
        };
        for (pmem, base) in &self.images {
            if pmem == bdev && !in_use(bdev) {
                return Some("cache_bdev");
            }
            if base == bdev && !in_use(bdev) {
                return Some("base_bdev");
            }
        }
        None
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn module() -> *mut sys::spdk_bdev_module {
    MODULE.load(Ordering::Acquire)
}

/// pcache's module, for claims.
fn claimer() -> claim::Module {
    // SAFETY: register_module leaks the module and registers it before any
    // bdev can be claimed; it lives for the program.
    unsafe { claim::Module::new(module()) }
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

/// module_init: SPDK passes nothing; there is nothing to set up.
unsafe extern "C" fn module_init() -> c_int {
    0
}

/// module_fini: SPDK passes nothing; forgets every configuration and lets go of held bdevs.
unsafe extern "C" fn module_fini() {
    guard((), || {
        let mut r = registry();
        r.configs.clear();
        r.last_error.clear();
        r.images.clear();
        drop(r);
        for b in claim::held_names() {
            claim::release(&b);
        }
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
    /// Its base is claimed by another module (logged as an error, with what to do).
    Blocked,
}

/// Creates a pcache now, or records it to be created when its bdevs appear.
pub fn create(opts: CreateOpts) -> Result<Created, String> {
    if registry().configs.iter().any(|c| c.name == opts.name) || bdev_exists(&opts.name) {
        return Err(format!("a bdev named {} already exists", opts.name));
    }
    if opts.cache_bdev == opts.base_bdev {
        return Err("cache_bdev and base_bdev must be different bdevs".into());
    }
    registry().configs.push(opts.clone());
    // Whatever exists of the two is ours from now on, so no other module
    // can take it while the other one is awaited.
    let mut missing = Vec::new();
    for (b, role) in [(&opts.cache_bdev, "cache_bdev"), (&opts.base_bdev, "base_bdev")] {
        if !bdev_exists(b) {
            missing.push(b.clone());
            continue;
        }
        if let Err(e) = claim::hold(b, role, claimer(), bdev_removed) {
            if role == "base_bdev" && taken_by_another_module(b) && base_may_be_stale(&opts) {
                block(&opts, e);
                return Ok(Created::Blocked);
            }
            forget_config(&opts.name);
            return Err(e);
        }
    }
    if !missing.is_empty() {
        log::info!("{} waits for bdev(s) {}", opts.name, missing.join(", "));
        return Ok(Created::Waiting(missing));
    }
    if let Err(e) = attach(&opts) {
        forget_config(&opts.name);
        return Err(e);
    }
    Ok(Created::Now)
}

/// Whether a module other than pcache holds the bdev `name`.
fn taken_by_another_module(name: &str) -> bool {
    let h = claim::holders(name);
    !h.is_empty() && !h.iter().any(|m| m == "pcache")
}

/// Whether the base of `opts` may be behind data in its cache: the cache
/// is not there yet, or holds an image of this very base.
fn base_may_be_stale(opts: &CreateOpts) -> bool {
    !bdev_exists(&opts.cache_bdev) || registry().images.iter().any(|i| i.0 == opts.cache_bdev && i.1 == opts.base_bdev)
}

/// Records why `opts` cannot be built because another module holds its
/// base, logs it with what to do, and returns it.
fn block(opts: &CreateOpts, why: String) -> String {
    let msg = format!(
        "{why}; it was examined before pcache knew it was the base of {}, so that module sees the base's \
         stale image without the data still in the cache, and {} stays down. Do not write through that \
         module's bdevs. Restart the application with a config that lists bdev_pcache_create (or the pmem \
         bdev {}) before the base bdev, as save_config does",
        opts.name, opts.name, opts.cache_bdev
    );
    if record_error(&opts.name, &msg) {
        log::error!("{}: {msg}", opts.name);
    }
    msg
}

/// Records why the pcache `name` is not built; true if that is news (so
/// that a pcache retried at every examine logs each reason once).
fn record_error(name: &str, msg: &str) -> bool {
    let mut r = registry();
    let known = r.last_error.iter().any(|e| e.0 == name && e.1 == msg);
    r.last_error.retain(|e| e.0 != name);
    r.last_error.push((name.to_string(), msg.to_string()));
    !known
}

/// Drops the configuration of `name` and whatever was held only for it.
fn forget_config(name: &str) {
    {
        let mut r = registry();
        r.configs.retain(|c| c.name != name);
        r.last_error.retain(|e| e.0 != name);
    }
    release_unwanted();
}

/// Lets go of held bdevs that nothing wants any more.
fn release_unwanted() {
    for b in claim::held_names() {
        if registry().wants(&b).is_none() {
            claim::release(&b);
        }
    }
}

/// Deletes a pcache (created or waiting). Dirty data stays on the pmem for
/// the next create. `done(rc)` runs when the bdev is gone.
pub fn delete(name: &str, done: Box<dyn FnOnce(i32)>) {
    let node = {
        let r = registry();
        if !r.configs.iter().any(|c| c.name == name) {
            drop(r);
            done(-libc::ENODEV);
            return;
        }
        r.node(name)
    };
    forget_config(name);
    if node.is_none() {
        done(0); // It was only waiting for its bdevs.
        return;
    }
    // SAFETY: module() is pcache's registered bdev module.
    unsafe { super::ffi::unregister_bdev(name, module(), done) };
}

/// Calls the waiter `make_done` gives once every byte of `name` that is
/// dirty now is on its base, flushed, or with the error that stopped it.
/// None (and `make_done` not called) when there is no such pcache.
pub fn flush(name: &str, make_done: impl FnOnce() -> FlushDone) -> Option<()> {
    let ended = with_node(name, |n| n.bg.add_flush_waiter(make_done()))?;
    ended.tell();
    Some(())
}

/// Options a live pcache takes (bdev_pcache_set_options); None leaves one as is.
#[derive(Debug, Default)]
pub struct LiveOptions {
    pub cache_mode: Option<crate::CacheMode>,
    pub writeback_batch_bytes: Option<u64>,
    pub seq_cutoff_bytes: Option<u64>,
    pub base_lag_secs: Option<u64>,
    pub promotion: Option<crate::Promotion>,
    pub max_dirty_percent: Option<u32>,
    pub gc_percent: Option<u8>,
}

/// Applies `o` to the pcache `name`; None when there is no such pcache.
pub fn set_options(name: &str, o: LiveOptions) -> Option<Result<(), String>> {
    with_node(name, |n| {
        if let Some(m) = o.cache_mode {
            n.cache.set_cache_mode(m).map_err(|e| format!("{name}: {e}"))?;
        }
        if let Some(b) = o.writeback_batch_bytes {
            n.cache.set_writeback_batch_bytes(b);
        }
        if let Some(c) = o.seq_cutoff_bytes {
            n.cache.set_seq_cutoff(c);
        }
        if let Some(l) = o.base_lag_secs {
            n.cache.set_base_lag(Duration::from_secs(l));
        }
        if let Some(p) = o.promotion {
            n.cache.set_promotion(p);
        }
        if let Some(d) = o.max_dirty_percent {
            n.cache.set_max_dirty_percent(d).map_err(|e| format!("{name}: {e}"))?;
        }
        match o.gc_percent {
            Some(g) => n.cache.set_gc_percent(g).map_err(|e| format!("{name}: {e}")),
            None => Ok(()),
        }
    })
}

/// Runs `f` on the live pcache `name`.
fn with_node<T>(name: &str, f: impl FnOnce(&PcacheNode) -> T) -> Option<T> {
    let p = registry().node(name)?;
    // SAFETY: nodes are removed from the registry (on this thread) before they are freed.
    Some(f(unsafe { &*p.0 }))
}

/// Whether a pcache named `name` is configured (online or not).
pub fn is_configured(name: &str) -> bool {
    registry().configs.iter().any(|c| c.name == name)
}

/// Whether the pcache named `name` is online (its bdev registered).
pub fn is_online(name: &str) -> bool {
    registry().node(name).is_some()
}

/// Where a configured pcache stands.
enum State {
    Online(Ptr<PcacheNode>),
    /// Waiting for bdevs that do not exist yet; the bdevs already held.
    Waiting {
        missing: Vec<String>,
        held: Vec<String>,
    },
    /// Both bdevs exist, but it could not be built: why.
    Blocked(String),
}

/// Every configured pcache and where it stands.
fn list() -> Vec<(CreateOpts, State)> {
    let r = registry();
    let held = claim::held_names();
    r.configs
        .iter()
        .map(|c| {
            let bdevs = [&c.cache_bdev, &c.base_bdev];
            let state = match r.node(&c.name) {
                Some(n) => State::Online(n),
                None => match r.last_error.iter().find(|e| e.0 == c.name) {
                    Some(e) if bdevs.iter().all(|b| bdev_exists(b)) => State::Blocked(e.1.clone()),
                    _ => State::Waiting {
                        missing: bdevs.iter().filter(|b| !bdev_exists(b)).map(|b| b.to_string()).collect(),
                        held: bdevs.iter().filter(|b| held.contains(b)).map(|b| b.to_string()).collect(),
                    },
                },
            };
            (c.clone(), state)
        })
        .collect()
}

/// bdev_pcache_get_stats: an array with every configured pcache (or the one
/// named `name`), with its state and, online, its statistics.
pub fn stats(name: Option<&str>, w: &mut Writer) {
    w.array_begin();
    for (c, state) in list().iter().filter(|(c, _)| name.is_none_or(|n| n == c.name)) {
        w.object_begin();
        match state {
            State::Online(n) => {
                w.named_str("state", "online");
                // SAFETY: listed nodes are registered, hence live, on this thread.
                write_stats(unsafe { &*n.0 }, w);
            }
            State::Waiting { missing, held } => {
                c.write_names(w);
                w.named_str("state", "waiting for its bdevs");
                w.named_array_str("missing", missing);
                w.named_array_str("held", held);
            }
            State::Blocked(why) => {
                c.write_names(w);
                w.named_str("state", "blocked");
                w.named_str("error", why);
            }
        }
        w.object_end();
    }
    w.array_end();
}

/// The bdev `name`, held already or claimed now.
fn take_or_claim(name: &str, role: &str) -> Result<Claimed, String> {
    match claim::take(name) {
        Some(c) => Ok(c),
        None => Claimed::claim(name, role, claimer(), bdev_removed),
    }
}

/// Builds and registers the pcache bdev for `opts`, whose bdevs exist. On
/// failure both bdevs stay held (the caller releases what nothing wants).
fn attach(opts: &CreateOpts) -> Result<(), String> {
    let media = pmem_bdev::media_of(&opts.cache_bdev).ok_or_else(|| {
        format!("cache_bdev {} is not a pmem bdev (create one with bdev_pmem_create)", opts.cache_bdev)
    })?;
    let cache = take_or_claim(&opts.cache_bdev, "cache_bdev")?;
    let base = match take_or_claim(&opts.base_bdev, "base_bdev") {
        Ok(b) => b,
        Err(e) => {
            claim::put_back(cache);
            return Err(e);
        }
    };
    // SAFETY: SPDK calls on the current (RPC or examine) thread.
    match unsafe { build_node(opts, media, Claims { cache, base }) } {
        Ok(()) => Ok(()),
        Err((e, claims)) => {
            if let Some(c) = claims {
                claim::put_back(c.cache);
                claim::put_back(c.base);
            }
            Err(e)
        }
    }
}

type BuildError = (String, Option<Claims>);

/// The base bdev as the engine identifies it: size, name and UUID. SPDK
/// makes a UUID up at every start for a bdev created without one, so only
/// an NVMe namespace's or an lvol's counts as the device's own.
///
/// # Safety
/// `base` is an open bdev.
unsafe fn base_identity(base: *mut sys::spdk_bdev, name: &str) -> BaseIdentity {
    // SAFETY: base is an open bdev (caller's contract), so these queries read a live bdev: the
    // UUID they point to lives in it, and the module name is its module's static C string.
    unsafe {
        let block_size = sys::spdk_bdev_get_block_size(base);
        let size = sys::spdk_bdev_get_num_blocks(base) * block_size as u64;
        let uuid = uuid::Uuid::from_bytes((*sys::spdk_bdev_get_uuid(base)).u.raw);
        let module = super::ffi::str_of(sys::spdk_bdev_get_module_name(base));
        BaseIdentity {
            uuid: Some(uuid).filter(|u| !u.is_nil()),
            uuid_is_stable: matches!(&*module, "nvme" | "lvol"),
            ..BaseIdentity::named(size, block_size, name)
        }
    }
}

/// Opens the engine over `media` and registers the pcache bdev; on failure
/// hands the claims back.
///
/// # Safety
/// On the app thread, with `claims` open on it.
unsafe fn build_node(opts: &CreateOpts, media: Arc<PmemFile>, claims: Claims) -> Result<(), BuildError> {
    let base = claims.base.bdev();
    // SAFETY: base is the base bdev, open and claimed through `claims` (caller's contract).
    let (block_size, blocks) = unsafe { (sys::spdk_bdev_get_block_size(base), sys::spdk_bdev_get_num_blocks(base)) };
    if block_size % 512 != 0 {
        let e = format!("base_bdev {} has {block_size}-byte blocks; pcache needs a multiple of 512", opts.base_bdev);
        return Err((e, Some(claims)));
    }
    // A device that already holds a pcache keeps its data_crc unless told otherwise.
    let data_crc =
        opts.data_crc.unwrap_or_else(|| Cache::read_superblock(&*media).map(|sb| sb.data_crc()).unwrap_or(false));
    // SAFETY: as above: base is open.
    let mut cfg = Config::new(unsafe { base_identity(base, &opts.base_bdev) });
    cfg.uuid = opts.uuid;
    cfg.seg_size = opts.seg_size;
    cfg.data_crc = data_crc;
    cfg.gc_percent = opts.gc_percent;
    cfg.cache_mode = opts.cache_mode;
    cfg.force_format = opts.force_format;
    if let Some(b) = opts.writeback_batch_bytes {
        cfg.writeback_batch_bytes = b;
    }
    if let Some(c) = opts.seq_cutoff_bytes {
        cfg.seq_cutoff = c;
    }
    if let Some(l) = opts.base_lag_secs {
        cfg.base_lag = Duration::from_secs(l);
    }
    if let Some(p) = opts.promotion {
        cfg.promotion = p;
    }
    if let Some(d) = opts.max_dirty_percent {
        cfg.max_dirty_percent = d;
    }
    cfg.workers = super::ffi::core_count();
    let (cache, opened) = match Cache::open(media.clone() as Arc<dyn Media>, &cfg) {
        Ok(v) => v,
        Err(e) => return Err((format!("{}: {e}", opts.name), Some(claims))),
    };
    match &opened {
        Opened::Formatted => log::info!("{}: formatted {} for base {}", opts.name, opts.cache_bdev, opts.base_bdev),
        Opened::Loaded(r) => log::info!("{}: loaded {} and replayed its log: {r:?}", opts.name, opts.cache_bdev),
    }
    let base_desc = claims.base.desc();
    // SAFETY: base_desc is the open descriptor claims.base holds; the channel is got on this
    // thread, and put on it (below, or by Background::stop).
    let ch = unsafe { sys::spdk_bdev_get_io_channel(base_desc) };
    if ch.is_null() {
        return Err((format!("no I/O channel for base_bdev {}", opts.base_bdev), Some(claims)));
    }
    // An RBD image is this pcache's alone while the cache may hold its data.
    // SAFETY: base_desc is open, so its bdev is registered; this is the app thread (caller's contract).
    let rbd = match unsafe { rbd_owner::image_of(sys::spdk_bdev_desc_get_bdev(base_desc)) } {
        Ok(Some(img)) => {
            let me = rbd_owner::Owner {
                uuid: cache.uuid().to_string(),
                name: opts.name.clone(),
                cache_bdev: opts.cache_bdev.clone(),
            };
            if let Err(e) = rbd_owner::claim(&img, &me) {
                // SAFETY: ch was got above, on this thread, and nothing else holds it.
                unsafe { sys::spdk_put_io_channel(ch) };
                return Err((format!("{}: base_bdev {}: {e}", opts.name, opts.base_bdev), Some(claims)));
            }
            log::info!("{}: owns RBD image {img} ({} set)", opts.name, rbd_owner::KEY);
            Some((img, me))
        }
        Ok(None) => None,
        Err(e) => {
            // SAFETY: ch was got above, on this thread, and nothing else holds it.
            unsafe { sys::spdk_put_io_channel(ch) };
            return Err((format!("{}: base_bdev {}: {e}", opts.name, opts.base_bdev), Some(claims)));
        }
    };
    let cache = Arc::new(cache);
    // Writeback's batches show in the `pcache` trace group.
    cache.observe_writeback(super::trace::writeback_events());
    // SAFETY: base_desc is open and ch a channel of it got on this thread; both outlive base_io,
    // which Background::stop drops (after putting ch) before the claims go back.
    let mut base_io = unsafe { SpdkBase::new(base_desc, ch) };
    match base_io.write_from_media(media.clone()) {
        Ok(()) => log::info!("{}: writeback takes data straight from {}'s mapping", opts.name, opts.cache_bdev),
        Err(why) => log::warn!("{}: writeback copies data out of {} ({why})", opts.name, opts.cache_bdev),
    }
    let node = Box::into_raw(Box::new(PcacheNode {
        // SAFETY: spdk_bdev is a plain C struct; all-zero is its initial state.
        bdev: unsafe { std::mem::zeroed() },
        name_c: cstring(&opts.name),
        opts: opts.clone(),
        cache: cache.clone(),
        _media: media,
        base_desc,
        // SAFETY: base_desc is open, so its bdev is live for the query.
        base_can_flush: unsafe {
            sys::spdk_bdev_io_type_supported(sys::spdk_bdev_desc_get_bdev(base_desc), sys::SPDK_BDEV_IO_TYPE_FLUSH)
        },
        claims: Some(claims),
        bg: Background::new(&opts.name, cache, base_io),
        removing: AtomicBool::new(false),
        rbd,
    }));
    {
        // SAFETY: node is the Box leaked just above; nothing else points to it until it is
        // registered below, and this borrow ends before that.
        let n = unsafe { &mut *node };
        let b = &mut n.bdev;
        b.name = n.name_c.as_ptr() as *mut _;
        b.product_name = c"pcache".as_ptr() as *mut _;
        b.blocklen = block_size;
        b.blockcnt = blocks;
        // The same identity at every start: an NVMe-oF namespace exported from
        // it keeps its UUID across restarts.
        b.uuid = sys::spdk_uuid { u: sys::spdk_uuid__bindgen_ty_1 { raw: *n.cache.uuid().as_bytes() } };
        // Writes are acknowledged from pmem before their keys are journalled: a
        // FLUSH makes them durable, exactly what a volatile write cache promises.
        b.write_cache = 1;
        // Read misses go straight from the base into the caller's buffers.
        // SAFETY: base is the open base bdev (see above).
        b.required_alignment = unsafe { (*base).required_alignment };
        b.ctxt = node as *mut c_void;
        b.fn_table = &FN_TABLE;
        b.module = module();

        // SAFETY: the node is boxed and never moved, and is freed only by free_node, once the
        // io_device is unregistered and its last channel destroyed; its name outlives the
        // io_device with it.
        unsafe {
            sys::spdk_io_device_register(
                node as *mut c_void,
                Some(pcache_io::ch_create),
                Some(pcache_io::ch_destroy),
                std::mem::size_of::<pcache_io::Channel>() as u32,
                n.name_c.as_ptr(),
            )
        };
        // SAFETY: bg lives in the node, which is not moved, and is stopped (drain_poll, or below)
        // before the node is freed; this is the thread its pollers run on.
        unsafe { n.bg.start() };
    }
    registry().nodes.push(Ptr(node));
    // spdk_bdev_register runs every module's examine before it returns, and
    // they reach the node (the registry, ch_create): only a raw pointer to
    // it is held across the call.
    // SAFETY: the node's bdev is filled in above; its name, ctxt and fn_table point to the node
    // and to statics, which stay until the bdev is destructed (drain_poll) and the node freed
    // (free_node).
    let rc = unsafe { sys::spdk_bdev_register(std::ptr::addr_of_mut!((*node).bdev)) };
    if rc != 0 {
        registry().nodes.retain(|x| x.0 != node);
        // SAFETY: the registration is over; the failed bdev serves no I/O, so
        // nothing else uses the node now.
        let n = unsafe { &mut *node };
        n.bg.stop("registration failed");
        // The claims go back to the caller; the node goes with its io_device.
        let claims = n.claims.take();
        // SAFETY: the io_device registered above; free_node frees the node once it is gone.
        // Not covered: a failure after SPDK listed the bdev (ENOMEM, open) makes SPDK unregister
        // it itself, and that unregistration still calls destruct with the node.
        unsafe { sys::spdk_io_device_unregister(node as *mut c_void, Some(free_node)) };
        return Err((format!("spdk_bdev_register failed: {}", errno_str(rc)), claims));
    }
    // force_format is spent: coming back after a hot-remove must load
    // the cache, not wipe it.
    if let Some(c) = registry().configs.iter_mut().find(|c| c.name == opts.name) {
        c.force_format = false;
    }
    Ok(())
}

/// SPDK asks pcache to let go of the bdev `bdev` (hot-remove or delete).
/// A held bdev has been closed already ([`claim`]); here the pcaches that use
/// it go down, and a pmem bdev's image stops reserving its base.
fn bdev_removed(bdev: &str) {
    let had_image = {
        let mut r = registry();
        let before = r.images.len();
        r.images.retain(|i| i.0 != bdev);
        r.images.len() != before
    };
    if had_image {
        release_unwanted();
    }
    let users: Vec<Ptr<PcacheNode>> = {
        let r = registry();
        r.nodes
            .iter()
            .copied()
            // SAFETY: registered nodes are live.
            .filter(|n| unsafe { (*n.0).opts.cache_bdev == bdev || (*n.0).opts.base_bdev == bdev })
            .collect()
    };
    for Ptr(node) in users {
        // SAFETY: registered nodes are live; this runs on the app thread that owns them.
        unsafe {
            if (*node).removing.swap(true, Ordering::AcqRel) {
                continue;
            }
            log::warn!(
                "{}: bdev {bdev} is being removed; unregistering (dirty data stays on the pmem)",
                (*node).name()
            );
            sys::spdk_bdev_unregister(&mut (*node).bdev, None, std::ptr::null_mut());
        }
    }
}

/// The pcache bdev's entry points: I/O goes to pcache_io.rs.
static FN_TABLE: sys::spdk_bdev_fn_table = sys::spdk_bdev_fn_table {
    destruct: Some(destruct),
    submit_request: Some(pcache_io::submit_request),
    io_type_supported: Some(ffi::block_io_supported),
    get_io_channel: Some(ffi::get_io_channel),
    dump_info_json: Some(dump_info_json),
    ..ffi::NO_BDEV_OPS
};

/// fn_table.dump_info_json: SPDK passes the bdev's ctxt (its PcacheNode) and a live JSON writer.
unsafe extern "C" fn dump_info_json(ctx: *mut c_void, w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        // SAFETY: ctx is the bdev's ctxt, its PcacheNode, live while the bdev is registered; w is
        // SPDK's writer for this call, and the Writer does not outlive it.
        let (node, mut w) = unsafe { (&*(ctx as *const PcacheNode), Writer::new(w)) };
        w.named_object_begin("pcache");
        write_info(node, &node.cache.stats(), &mut w);
        w.object_end();
        0
    })
}

/// bdev destruct: runs on the creating thread once every descriptor of the
/// pcache bdev is closed. Waits for writeback I/O in flight, then closes
/// everything; the node is freed when its io_device is gone.
///
/// # Safety
/// Called by SPDK only, with the arguments its callback contract gives.
unsafe extern "C" fn destruct(ctx: *mut c_void) -> c_int {
    guard(0, || {
        let node = ctx as *mut PcacheNode;
        // SAFETY: ctx is the bdev's ctxt, its PcacheNode, which lives until free_node (scheduled
        // by drain_poll at the earliest); SPDK calls destruct once, on the creating thread, which
        // is where the drain poller registered here runs.
        unsafe {
            (*node).removing.store(true, Ordering::Release);
            registry().nodes.retain(|n| n.0 != node);
            (*node).bg.halt(&format!("{} was deleted before its flush finished", (*node).name()));
            let p = sys::spdk_poller_register(Some(drain_poll), ctx, 1000);
            DRAIN.lock().unwrap_or_else(|e| e.into_inner()).push((Ptr(node), Ptr(p)));
        }
        1 // Asynchronous: spdk_bdev_destruct_done follows.
    })
}

static DRAIN: Mutex<Vec<(Ptr<PcacheNode>, Ptr<sys::spdk_poller>)>> = Mutex::new(Vec::new());

/// The poller destruct registers: SPDK passes the PcacheNode being destructed.
unsafe extern "C" fn drain_poll(ctx: *mut c_void) -> c_int {
    guard(sys::SPDK_POLLER_IDLE as c_int, || {
        let node = ctx as *mut PcacheNode;
        // SAFETY: ctx is the node destruct registered this poller with; it is freed only by
        // free_node, which this poller schedules last, after unregistering itself.
        if unsafe { (*node).bg.outstanding() } > 0 {
            return sys::SPDK_POLLER_IDLE as c_int;
        }
        let mut p = {
            let mut d = DRAIN.lock().unwrap_or_else(|e| e.into_inner());
            let i = d.iter().position(|e| e.0 .0 == node).expect("draining node is listed");
            d.remove(i).1 .0
        };
        // SAFETY: p is this poller, registered by destruct on this thread.
        unsafe { sys::spdk_poller_unregister(&mut p) };
        // SAFETY: the node is live (as above), off the registry, its bdev closed and its own
        // pollers halted, so nothing on this thread uses it meanwhile. Not covered: channels not
        // yet destroyed on other threads still make shared references to it from their pollers.
        let n = unsafe { &mut *node };
        n.bg.stop("deleted");
        // Journal every open key, so nothing acknowledged is lost.
        if let Err(e) = n.cache.flush() {
            log::error!("{}: journalling open keys at delete failed: {e}", n.name());
        }
        release_rbd(n);
        let claims = n.claims.take();
        n.base_desc = std::ptr::null_mut();
        // A pcache that is still configured (its bdev was hot-removed) keeps
        // whichever of its bdevs is still there, for when the other returns.
        if let Some(c) = claims {
            for b in [c.cache, c.base] {
                if registry().wants(b.name()).is_some() {
                    claim::put_back(b);
                }
            }
        }
        // SAFETY: ctx is the io_device build_node registered, unregistered once, here; free_node
        // runs later, from a message, so n.bdev is still live when SPDK is told destruct (which
        // returned 1) is done.
        unsafe {
            sys::spdk_io_device_unregister(ctx, Some(free_node));
            sys::spdk_bdev_destruct_done(&mut n.bdev, 0);
        }
        sys::SPDK_POLLER_BUSY as c_int
    })
}

/// Removes the owner key from an RBD base if the cache holds nothing the
/// image lacks; otherwise the key stays, for the cache's next start.
fn release_rbd(n: &mut PcacheNode) {
    let Some((img, me)) = n.rbd.take() else { return };
    let dirty = n.cache.stats().dirty_bytes;
    if dirty > 0 {
        log::info!(
            "{}: RBD image {img} stays owned ({} kept): {dirty} dirty bytes are in the cache",
            n.name(),
            rbd_owner::KEY
        );
        return;
    }
    match rbd_owner::release(&img, &me) {
        Ok(()) => log::info!("{}: released RBD image {img}", n.name()),
        Err(e) => log::error!("{}: RBD image {img}: {} not removed: {e}", n.name(), rbd_owner::KEY),
    }
}

/// The io_device unregister callback: SPDK passes the PcacheNode that build_node registered.
unsafe extern "C" fn free_node(ctx: *mut c_void) {
    guard((), || {
        // SAFETY: ctx is the node build_node leaked with Box::into_raw; SPDK calls this once, after
        // the io_device's last channel is gone, when its bdev is destructed or was never registered.
        let PcacheNode { opts, cache, bg, .. } = *unsafe { Box::from_raw(ctx as *mut PcacheNode) };
        // The background work holds the cache too; it has stopped by now
        // (drain_poll, or a registration that failed).
        drop(bg);
        match Arc::try_unwrap(cache) {
            Ok(cache) => match cache.close() {
                Ok(()) => log::info!("{}: closed", opts.name),
                Err(e) => log::error!("{}: close failed: {e}", opts.name),
            },
            Err(_) => log::error!("{}: the cache is still in use at close (its open keys were journalled)", opts.name),
        }
    })
}

/// Runs for every new bdev before any module looks at its data: claims it
/// if it is pcache's, then builds every pcache whose bdevs now both exist.
///
/// SPDK passes the new bdev, synchronously inside its spdk_bdev_register.
unsafe extern "C" fn examine_config(bdev: *mut sys::spdk_bdev) {
    guard((), || {
        // SAFETY: SPDK passes a live, registered bdev; its name is a C string it keeps.
        let name = unsafe { str_of(sys::spdk_bdev_get_name(bdev)) }.into_owned();
        note_image(&name);
        let role = registry().wants(&name);
        if let Some(role) = role {
            if let Err(e) = claim::hold(&name, role, claimer(), bdev_removed) {
                log::error!("{name}: pcache cannot claim its {role}: {e}");
            }
        }
        attach_ready();
    });
    // SAFETY: module() is pcache's registered module; every examine_config call is answered once.
    unsafe { sys::spdk_bdev_module_examine_done(module()) };
}

/// If `bdev` is a pmem bdev holding a pcache image, remembers which base the
/// image belongs to, and takes that base now if it registered first.
fn note_image(bdev: &str) {
    let Some(media) = pmem_bdev::media_of(bdev) else { return };
    let Ok(sb) = Cache::read_superblock(&*media) else { return };
    let base = sb.base_id.clone();
    {
        let mut r = registry();
        r.images.retain(|i| i.0 != bdev);
        r.images.push((bdev.to_string(), base.clone()));
    }
    log::info!("{bdev} holds a pcache image of base {base}: pcache claims both");
    if bdev_exists(&base) && registry().wants(&base).is_some() {
        if let Err(e) = claim::hold(&base, "base_bdev", claimer(), bdev_removed) {
            if !taken_by_another_module(&base) {
                log::error!("{base}, the base of the pcache image on {bdev}: {e}");
                return;
            }
            let users: Vec<CreateOpts> =
                registry().configs.iter().filter(|c| c.base_bdev == base && c.cache_bdev == bdev).cloned().collect();
            match users.first() {
                Some(c) => {
                    block(c, e);
                }
                None => log::error!(
                    "{base}, the base of the pcache image on {bdev}: {e}; it was examined before pcache knew it, \
                     so that module sees its stale image. Do not write through that module's bdevs; restart with \
                     a config that lists the pmem bdev {bdev} before {base}"
                ),
            }
        }
    }
}

/// Builds every configured pcache that is down while both its bdevs exist.
fn attach_ready() {
    let ready: Vec<CreateOpts> = {
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
    for opts in ready {
        match attach(&opts) {
            Ok(()) => {
                registry().last_error.retain(|e| e.0 != opts.name);
                log::info!("{}: created now that its bdevs exist", opts.name);
            }
            Err(e) if taken_by_another_module(&opts.base_bdev) => {
                block(&opts, e);
            }
            Err(e) => {
                if record_error(&opts.name, &e) {
                    log::error!("{}: cannot be created: {e}", opts.name);
                }
            }
        }
    }
}

/// Module-level config: every pcache, created or waiting. SPDK writes module
/// configs before per-bdev ones and this module registers before SPDK's own,
/// so a saved config creates the pcache (which then waits) before its base
/// bdev appears, and pcache claims the base before anyone examines it.
///
/// SPDK passes a live JSON writer, inside the bdev subsystem's array.
unsafe extern "C" fn config_json(w: *mut sys::spdk_json_write_ctx) -> c_int {
    guard(0, || {
        // SAFETY: w is SPDK's writer for this call, and the Writer does not outlive it.
        let mut w = unsafe { Writer::new(w) };
        for (c, state) in list() {
            match state {
                State::Online(n) => {
                    // SAFETY: listed nodes are registered, hence live, on this thread.
                    let n = unsafe { &*n.0 };
                    let mut live = n.opts.clone();
                    live.gc_percent = Some(n.cache.stats().gc_percent);
                    live.data_crc = Some(n.cache.data_crc());
                    live.writeback_batch_bytes = Some(n.cache.writeback_batch_bytes());
                    live.seq_cutoff_bytes = Some(n.cache.seq_cutoff());
                    live.base_lag_secs = Some(n.cache.base_lag().as_secs());
                    live.promotion = Some(n.cache.promotion());
                    live.max_dirty_percent = Some(n.cache.max_dirty_percent());
                    live.cache_mode = Some(n.cache.cache_mode());
                    live.uuid = Some(n.cache.uuid());
                    live.seg_size = Some(n.cache.superblock().seg_size as u64);
                    write_create(&mut w, &live);
                }
                _ => write_create(&mut w, &c),
            }
        }
        0
    })
}

fn write_create(w: &mut Writer, c: &CreateOpts) {
    w.object_begin();
    w.named_str("method", "bdev_pcache_create");
    w.named_object_begin("params");
    c.write_names(w);
    if let Some(m) = c.cache_mode {
        w.named_str("cache_mode", m.as_str());
    }
    if let Some(u) = c.uuid {
        w.named_str("uuid", &u.to_string());
    }
    if let Some(s) = c.seg_size {
        w.named_u64("seg_size", s);
    }
    if let Some(crc) = c.data_crc {
        w.named_bool("data_crc", crc);
    }
    if let Some(gc) = c.gc_percent {
        w.named_u64("gc_percent", gc as u64);
    }
    if let Some(b) = c.writeback_batch_bytes {
        w.named_u64("writeback_batch_bytes", b);
    }
    if let Some(b) = c.seq_cutoff_bytes {
        w.named_u64("seq_cutoff_bytes", b);
    }
    if let Some(l) = c.base_lag_secs {
        w.named_u64("base_lag_secs", l);
    }
    if let Some(d) = c.max_dirty_percent {
        w.named_u64("max_dirty_percent", d as u64);
    }
    if let Some(p) = c.promotion {
        write_promotion(w, p);
    }
    // force_format is never saved: a restart must load, not wipe.
    w.object_end();
    w.object_end();
}

/// `promotion`, and `promotion_hits` where the policy counts.
fn write_promotion(w: &mut Writer, p: crate::Promotion) {
    w.named_str("promotion", p.name());
    if let crate::Promotion::Nhit { hits } = p {
        w.named_u64("promotion_hits", hits as u64);
    }
}

/// The driver_specific section of bdev_get_bdevs, and the per-bdev part of
/// bdev_pcache_get_stats.
fn write_info(n: &PcacheNode, s: &crate::Stats, w: &mut Writer) {
    let sb = n.cache.superblock();
    n.opts.write_names(w);
    w.named_str("uuid", &n.cache.uuid().to_string());
    match sb.base_uuid() {
        Some(u) => w.named_str("base_uuid", &u.to_string()),
        None => w.named_null("base_uuid"),
    }
    w.named_str("cache_mode", n.cache.cache_mode().as_str());
    // Leaving writeback: what was dirty then is still being written back.
    w.named_bool("cache_mode_transition", n.cache.mode_transition());
    w.named_bool("data_crc", n.cache.data_crc());
    w.named_u64("gc_percent", s.gc_percent as u64);
    w.named_u64("writeback_batch_bytes", n.cache.writeback_batch_bytes());
    w.named_u64("seq_cutoff_bytes", n.cache.seq_cutoff());
    w.named_u64("base_lag_secs", n.cache.base_lag().as_secs());
    w.named_u64("max_dirty_percent", n.cache.max_dirty_percent() as u64);
    write_promotion(w, n.cache.promotion());
    w.named_u64("seg_size", sb.seg_size as u64);
    w.named_u64("segs_total", s.segs_total as u64);
    w.named_u64("segs_used", s.segs_used as u64);
    for (k, v) in [("key_head", s.key_head), ("key_tail", s.key_tail), ("dirty_tail", s.dirty_tail)] {
        w.named_object_begin(k);
        w.named_u64("seg", v.seg as u64);
        w.named_u64("off", v.off as u64);
        w.named_u64("seq", v.seq);
        w.object_end();
    }
    w.named_u64("dirty_bytes", s.dirty_bytes);
    // How far the base lags: the age of the oldest dirty data.
    w.named_u64("base_behind_ms", n.cache.base_behind().as_millis() as u64);
    w.named_bool("clean", n.cache.is_clean());
    w.named_u64("flushes_waiting", n.flushes_waiting() as u64);
    w.named_u64("index_dram_bytes", n.cache.index_dram_bytes());
    // What decides whether new blocks bypass a full cache (bypass.rs).
    w.named_bool("cache_full", n.cache.is_full());
    match n.cache.absorbed_percent() {
        Some(p) => w.named_u64("absorbed_percent", p as u64),
        None => w.named_null("absorbed_percent"),
    }
    match n.cache.full_hits_percent() {
        Some(p) => w.named_u64("full_hits_percent", p as u64),
        None => w.named_null("full_hits_percent"),
    }
    // Rates over the last ten seconds or so, and the time left at that rate.
    let r = n.drain_rates();
    w.named_u64("base_writes_per_sec", r.base_writes_per_sec.round() as u64);
    w.named_u64("base_flushes_per_sec", r.base_flushes_per_sec.round() as u64);
    w.named_u64("writeback_bytes_per_sec", r.writeback_bytes_per_sec.round() as u64);
    match r.eta_secs(s.dirty_bytes) {
        Some(t) => w.named_u64("drain_eta_secs", t),
        None => w.named_null("drain_eta_secs"),
    }
}

fn write_stats(n: &PcacheNode, w: &mut Writer) {
    let s = n.cache.stats();
    write_info(n, &s, w);
    for (k, v) in s.events() {
        w.named_u64(k, v);
    }
}
