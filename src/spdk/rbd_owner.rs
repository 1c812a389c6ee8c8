//! Ownership of a Ceph RBD base. A pcache over an RBD image (bdev_rbd) may
//! hold data the image lacks, so it records itself in the image's metadata,
//! key `pcache.owner`, which every client of the image sees (`rbd
//! image-meta get POOL/IMAGE pcache.owner`): a second pcache over the same
//! image, on this node or any other, is refused with the owner named. The
//! key goes when the pcache goes away clean (delete with flush), and stays
//! while its pmem holds dirty data.
//!
//! Image metadata rather than an RBD exclusive lock: a lock belongs to a
//! client connection and is broken when that client dies, which is exactly
//! when the dirty data it stood for is still in the dead node's pmem; the
//! key outlives the process, as the data does.
//!
//! librados and librbd are opened at run time (libloading) from the
//! libraries bdev_rbd itself links, so the module builds, loads and runs
//! where Ceph is not installed; only an RBD base needs them.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use spdk_sys as sys;

/// The metadata key.
pub const KEY: &str = "pcache.owner";
/// bdev_rbd's product name.
const RBD_PRODUCT: &str = "Ceph Rbd Disk";

/// An RBD image as bdev_rbd describes it (its dump_info_json): enough to
/// connect to its cluster as bdev_rbd did.
#[derive(Debug, Clone, Default)]
pub struct RbdImage {
    pub pool: String,
    pub image: String,
    user: Option<String>,
    config_file: Option<String>,
    key_file: Option<String>,
    /// Ceph options bdev_rbd was given (config_param of its cluster, or
    /// config of the bdev).
    options: Vec<(String, String)>,
}

impl std::fmt::Display for RbdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)
    }
}

/// Who owns an image: this pcache's identity as written into the key.
pub struct Owner {
    /// The cache's UUID (its superblock's), which identifies it across
    /// restarts and nodes.
    pub uuid: String,
    pub name: String,
    pub cache_bdev: String,
}

impl Owner {
    fn value(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("uuid={} name={} cache_bdev={} host={}", self.uuid, self.name, self.cache_bdev, host.trim())
    }

    /// Whether `value` (a key's) names this cache.
    fn is(&self, value: &str) -> bool {
        value.split_whitespace().any(|f| f == format!("uuid={}", self.uuid))
    }
}

/// The RBD image behind `bdev`, if bdev_rbd serves it; None for any other
/// bdev.
///
/// # Safety
/// `bdev` is a registered bdev, used on the app thread.
pub unsafe fn image_of(bdev: *mut sys::spdk_bdev) -> Result<Option<RbdImage>, String> {
    // SAFETY: bdev is a registered bdev (caller's contract); its product name is NULL or a C string
    // that lives as long as the bdev.
    let product = unsafe { sys::spdk_bdev_get_product_name(bdev) };
    // SAFETY: as above; product is not NULL here.
    if product.is_null() || unsafe { CStr::from_ptr(product) }.to_bytes() != RBD_PRODUCT.as_bytes() {
        return Ok(None);
    }
    // SAFETY: bdev is a registered bdev, on the app thread (caller's contract).
    let json = unsafe { dump_info(bdev) }?;
    let v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("bdev_rbd's description does not parse: {e}"))?;
    let rbd = &v["rbd"];
    let s = |k: &str| rbd[k].as_str().map(str::to_owned);
    let (Some(pool), Some(image)) = (s("pool_name"), s("rbd_name")) else {
        return Err(format!("bdev_rbd's description names no pool or image: {json}"));
    };
    let mut options = Vec::new();
    for k in ["config_param", "config"] {
        if let Some(o) = rbd[k].as_object() {
            options.extend(o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))));
        }
    }
    Ok(Some(RbdImage {
        pool,
        image,
        user: s("user_id"),
        config_file: s("config_file"),
        key_file: s("key_file"),
        options,
    }))
}

/// `bdev`'s driver-specific JSON (what bdev_get_bdevs shows), as text.
///
/// # Safety
/// `bdev` is a registered bdev, used on the app thread.
unsafe fn dump_info(bdev: *mut sys::spdk_bdev) -> Result<String, String> {
    /// The writer's output callback: SPDK passes the Vec given to spdk_json_write_begin and the
    /// next bytes of the text.
    unsafe extern "C" fn collect(ctx: *mut c_void, data: *const c_void, size: usize) -> c_int {
        // SAFETY: ctx is the Vec below; data holds size bytes.
        unsafe { (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data as *const u8, size)) };
        0
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: collect gets `out`, which outlives the writer (ended below, before out is read).
    let w = unsafe { sys::spdk_json_write_begin(Some(collect), &mut out as *mut Vec<u8> as *mut c_void, 0) };
    if w.is_null() {
        return Err("no memory for a JSON writer".into());
    }
    // SAFETY: w is the live writer begun above, ended once, here; bdev is registered and this is
    // the app thread (caller's contract), so it may dump its description into w.
    let rc = unsafe {
        sys::spdk_json_write_object_begin(w);
        let rc = sys::spdk_bdev_dump_info_json(bdev, w);
        sys::spdk_json_write_object_end(w);
        sys::spdk_json_write_end(w);
        rc
    };
    if rc != 0 {
        return Err(format!("bdev_rbd's description failed: rc {rc}"));
    }
    String::from_utf8(out).map_err(|_| "bdev_rbd's description is not UTF-8".into())
}

/// Records `me` as the owner of `img`, or refuses if another cache is.
pub fn claim(img: &RbdImage, me: &Owner) -> Result<(), String> {
    let i = Image::open(img)?;
    match i.get(KEY)? {
        Some(v) if !me.is(&v) => Err(format!(
            "RBD image {img} belongs to another pcache ({v}): its dirty data may be in that cache. \
             Delete that pcache with flush first; if its cache is lost, the image holds an older \
             consistent state, and `rbd image-meta remove {img} {KEY}` releases it"
        )),
        _ => i.set(KEY, &me.value()),
    }
}

/// Removes the key if it names `me`.
pub fn release(img: &RbdImage, me: &Owner) -> Result<(), String> {
    let i = Image::open(img)?;
    match i.get(KEY)? {
        Some(v) if me.is(&v) => i.remove(KEY),
        _ => Ok(()),
    }
}

type RadosT = *mut c_void;

/// The librados and librbd calls used, from the libraries opened once.
struct Api {
    _rados: libloading::Library,
    _rbd: libloading::Library,
    rados_create: unsafe extern "C" fn(*mut RadosT, *const c_char) -> c_int,
    rados_conf_read_file: unsafe extern "C" fn(RadosT, *const c_char) -> c_int,
    rados_conf_set: unsafe extern "C" fn(RadosT, *const c_char, *const c_char) -> c_int,
    rados_connect: unsafe extern "C" fn(RadosT) -> c_int,
    rados_shutdown: unsafe extern "C" fn(RadosT),
    rados_ioctx_create: unsafe extern "C" fn(RadosT, *const c_char, *mut *mut c_void) -> c_int,
    rados_ioctx_destroy: unsafe extern "C" fn(*mut c_void),
    rbd_open: unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_void, *const c_char) -> c_int,
    rbd_close: unsafe extern "C" fn(*mut c_void) -> c_int,
    rbd_metadata_get: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, *mut usize) -> c_int,
    rbd_metadata_set: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int,
    rbd_metadata_remove: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
}

fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: librados and librbd are plain C libraries whose
        // initializers have no preconditions (bdev_rbd has loaded them
        // already); each symbol is given the type of its declaration in
        // rados/librados.h and rbd/librbd.h.
        unsafe {
            let rados = libloading::Library::new("librados.so.2").map_err(|e| format!("cannot load librados: {e}"))?;
            let rbd = libloading::Library::new("librbd.so.1").map_err(|e| format!("cannot load librbd: {e}"))?;
            macro_rules! sym {
                ($lib:expr, $name:ident) => {
                    *$lib
                        .get(concat!(stringify!($name), "\0").as_bytes())
                        .map_err(|e| format!("{}: {e}", stringify!($name)))?
                };
            }
            Ok(Api {
                rados_create: sym!(rados, rados_create),
                rados_conf_read_file: sym!(rados, rados_conf_read_file),
                rados_conf_set: sym!(rados, rados_conf_set),
                rados_connect: sym!(rados, rados_connect),
                rados_shutdown: sym!(rados, rados_shutdown),
                rados_ioctx_create: sym!(rados, rados_ioctx_create),
                rados_ioctx_destroy: sym!(rados, rados_ioctx_destroy),
                rbd_open: sym!(rbd, rbd_open),
                rbd_close: sym!(rbd, rbd_close),
                rbd_metadata_get: sym!(rbd, rbd_metadata_get),
                rbd_metadata_set: sym!(rbd, rbd_metadata_set),
                rbd_metadata_remove: sym!(rbd, rbd_metadata_remove),
                _rados: rados,
                _rbd: rbd,
            })
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"))
}

fn ceph_err(what: &str, rc: c_int) -> String {
    format!("{what}: {}", std::io::Error::from_raw_os_error(-rc))
}

/// An open image, with the cluster connection and pool context it came from
/// (closed in reverse order on drop).
struct Image {
    api: &'static Api,
    cluster: RadosT,
    ioctx: *mut c_void,
    image: *mut c_void,
}

impl Image {
    /// Connects as bdev_rbd did and opens the image. Blocks for the
    /// connection (at most 10 s): called when a pcache is created or goes.
    fn open(img: &RbdImage) -> Result<Image, String> {
        let api = api()?;
        let mut i =
            Image { api, cluster: std::ptr::null_mut(), ioctx: std::ptr::null_mut(), image: std::ptr::null_mut() };
        let user = img.user.as_deref().map(cstr).transpose()?;
        // SAFETY: each call gets the handles the calls before it made (or
        // null where the API allows it) and C strings alive across it;
        // Drop releases what was made.
        unsafe {
            let rc = (api.rados_create)(&mut i.cluster, user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr()));
            if rc < 0 {
                i.cluster = std::ptr::null_mut();
                return Err(ceph_err("rados_create", rc));
            }
            let file = img.config_file.as_deref().map(cstr).transpose()?;
            let rc = (api.rados_conf_read_file)(i.cluster, file.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()));
            if rc < 0 && file.is_some() {
                return Err(ceph_err(&format!("reading {}", img.config_file.as_deref().unwrap_or("")), rc));
            }
            let mut opts = img.options.clone();
            if let Some(k) = &img.key_file {
                opts.push(("keyring".into(), k.clone()));
            }
            opts.push(("client_mount_timeout".into(), "10".into()));
            opts.push(("rados_osd_op_timeout".into(), "10".into()));
            for (k, v) in &opts {
                let rc = (api.rados_conf_set)(i.cluster, cstr(k)?.as_ptr(), cstr(v)?.as_ptr());
                if rc < 0 {
                    return Err(ceph_err(&format!("Ceph option {k}={v}"), rc));
                }
            }
            let rc = (api.rados_connect)(i.cluster);
            if rc < 0 {
                return Err(ceph_err("connecting to the Ceph cluster", rc));
            }
            let rc = (api.rados_ioctx_create)(i.cluster, cstr(&img.pool)?.as_ptr(), &mut i.ioctx);
            if rc < 0 {
                i.ioctx = std::ptr::null_mut();
                return Err(ceph_err(&format!("pool {}", img.pool), rc));
            }
            let rc = (api.rbd_open)(i.ioctx, cstr(&img.image)?.as_ptr(), &mut i.image, std::ptr::null());
            if rc < 0 {
                i.image = std::ptr::null_mut();
                return Err(ceph_err(&format!("RBD image {img}"), rc));
            }
        }
        Ok(i)
    }

    fn get(&self, key: &str) -> Result<Option<String>, String> {
        let k = cstr(key)?;
        let mut buf = vec![0u8; 256];
        loop {
            let mut len = buf.len();
            // SAFETY: an open image; buf holds len bytes.
            let rc = unsafe {
                (self.api.rbd_metadata_get)(self.image, k.as_ptr(), buf.as_mut_ptr() as *mut c_char, &mut len)
            };
            match rc {
                0 => {
                    let v = CStr::from_bytes_until_nul(&buf[..len.min(buf.len())])
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned());
                    return Ok(Some(v));
                }
                rc if rc == -libc::ENOENT => return Ok(None),
                rc if rc == -libc::ERANGE && len > buf.len() => buf.resize(len, 0),
                rc => return Err(ceph_err(&format!("reading image metadata {key}"), rc)),
            }
        }
    }

    fn set(&self, key: &str, value: &str) -> Result<(), String> {
        // SAFETY: an open image; C strings alive across the call.
        let rc = unsafe { (self.api.rbd_metadata_set)(self.image, cstr(key)?.as_ptr(), cstr(value)?.as_ptr()) };
        if rc < 0 {
            return Err(ceph_err(&format!("setting image metadata {key}"), rc));
        }
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), String> {
        // SAFETY: an open image; a C string alive across the call.
        let rc = unsafe { (self.api.rbd_metadata_remove)(self.image, cstr(key)?.as_ptr()) };
        if rc < 0 && rc != -libc::ENOENT {
            return Err(ceph_err(&format!("removing image metadata {key}"), rc));
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: handles made by open(), each released once, image first.
        unsafe {
            if !self.image.is_null() {
                (self.api.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (self.api.rados_ioctx_destroy)(self.ioctx);
            }
            if !self.cluster.is_null() {
                (self.api.rados_shutdown)(self.cluster);
            }
        }
    }
}
