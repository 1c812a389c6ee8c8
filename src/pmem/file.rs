//! A libpmem mapping of a pmem file or devdax device.
//!
//! This is the only place where the engine touches raw memory: the mapping is
//! shared by every worker, and the engine guarantees (segment ownership, index
//! locks) that no range is read while it is being written.

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;

use super::{check_range, Media};
use crate::error::{Error, Result};

const PMEM_FILE_CREATE: c_int = 1 << 0;

#[link(name = "pmem")]
extern "C" {
    fn pmem_map_file(
        path: *const c_char,
        len: usize,
        flags: c_int,
        mode: libc::mode_t,
        mapped_lenp: *mut usize,
        is_pmemp: *mut c_int,
    ) -> *mut c_void;
    fn pmem_unmap(addr: *mut c_void, len: usize) -> c_int;
    fn pmem_memcpy_nodrain(dest: *mut c_void, src: *const c_void, len: usize) -> *mut c_void;
    fn pmem_memset_nodrain(dest: *mut c_void, c: c_int, len: usize) -> *mut c_void;
    fn pmem_drain();
    fn pmem_msync(addr: *const c_void, len: usize) -> c_int;
    fn pmem_errormsg() -> *const c_char;
}

/// A mapped pmem file.
pub struct PmemFile {
    addr: *mut u8,
    len: usize,
    is_pmem: bool,
}

// SAFETY: the mapping lives until drop and is only accessed through bounds-checked
// copies; concurrent access to one range is excluded by the engine's locking.
unsafe impl Send for PmemFile {}
unsafe impl Sync for PmemFile {}

impl PmemFile {
    /// Maps an existing file or devdax device whole.
    pub fn open(path: &Path) -> Result<Self> {
        Self::map(path, 0, 0)
    }

    /// Maps `path`, creating it with `size` bytes if it does not exist.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        if path.exists() {
            return Self::open(path);
        }
        Self::map(path, size as usize, PMEM_FILE_CREATE)
    }

    fn map(path: &Path, len: usize, flags: c_int) -> Result<Self> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::InvalidArgument(format!("path {:?} contains a NUL byte", path)))?;
        let mut mapped = 0usize;
        let mut is_pmem: c_int = 0;
        // SAFETY: valid C string and out-pointers; libpmem returns NULL on failure.
        let addr = unsafe { pmem_map_file(cpath.as_ptr(), len, flags, 0o600, &mut mapped, &mut is_pmem) };
        if addr.is_null() {
            return Err(Error::Io(format!("cannot map {}: {}", path.display(), last_error())));
        }
        Ok(PmemFile { addr: addr as *mut u8, len: mapped, is_pmem: is_pmem != 0 })
    }

    /// Maps every page of the mapping writable now, keeping its contents, so
    /// that the data path takes no page faults (a file on tmpfs would
    /// otherwise allocate and zero a page on the first store to it).
    /// Best effort: kernels before 5.14 lack MADV_POPULATE_WRITE.
    pub fn prefault(&self) -> bool {
        const MADV_POPULATE_WRITE: c_int = 23;
        // SAFETY: addr/len is this live mapping; populating does not change its contents.
        unsafe { libc::madvise(self.addr as *mut c_void, self.len, MADV_POPULATE_WRITE) == 0 }
    }

    /// The first byte of the mapping, for hosts that hand pieces of it to
    /// devices (which read it themselves, under the engine's rule that no
    /// range is stored to while it is read).
    pub fn as_ptr(&self) -> *const u8 {
        self.addr
    }

    /// True when libpmem says stores reach persistence with cache flushes
    /// (real pmem, or any file with PMEM_IS_PMEM_FORCE=1).
    pub fn is_pmem(&self) -> bool {
        self.is_pmem
    }
}

fn last_error() -> String {
    // SAFETY: pmem_errormsg returns a thread-local NUL-terminated string.
    unsafe {
        let p = pmem_errormsg();
        if p.is_null() {
            return "unknown error".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

impl Media for PmemFile {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len as u64, off, buf.len())?;
        // SAFETY: range checked above; the engine excludes concurrent stores to it.
        unsafe { std::ptr::copy_nonoverlapping(self.addr.add(off as usize), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// The first line of each page: a 4 KiB copy out of a random page
    /// spends most of its time waiting for its first line (the page walk
    /// and the memory read); the CPU streams the rest of the page itself.
    fn prefetch(&self, off: u64, len: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            const PAGE: u64 = 4096;
            let end = off.saturating_add(len).min(self.len as u64);
            let mut at = off;
            // A few pages at most: a long read streams after its first page.
            for _ in 0..4 {
                if at >= end {
                    break;
                }
                // SAFETY: SSE is part of x86_64; a prefetch of an address
                // inside the mapping (checked just above) does not fault and
                // changes nothing.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.addr.add(at as usize) as *const i8) };
                at = (at / PAGE + 1) * PAGE;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (off, len);
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        check_range(self.len as u64, off, data.len())?;
        // SAFETY: range checked above; the caller owns this range of the mapping.
        unsafe {
            let dst = self.addr.add(off as usize) as *mut c_void;
            if self.is_pmem {
                pmem_memcpy_nodrain(dst, data.as_ptr() as *const c_void, data.len());
            } else {
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len());
                pmem_msync(dst, data.len());
            }
        }
        Ok(())
    }

    fn zero(&self, off: u64, len: u64) -> Result<()> {
        check_range(self.len as u64, off, len as usize)?;
        // SAFETY: range checked above; the caller owns this range of the mapping.
        unsafe {
            let dst = self.addr.add(off as usize) as *mut c_void;
            if self.is_pmem {
                pmem_memset_nodrain(dst, 0, len as usize);
            } else {
                std::ptr::write_bytes(dst as *mut u8, 0, len as usize);
                pmem_msync(dst, len as usize);
            }
        }
        Ok(())
    }

    fn fence(&self) {
        if self.is_pmem {
            // SAFETY: no arguments; orders this thread's flushed stores.
            unsafe { pmem_drain() };
        }
    }
}

impl Drop for PmemFile {
    fn drop(&mut self) {
        // SAFETY: addr/len came from pmem_map_file and are unmapped once.
        unsafe {
            pmem_unmap(self.addr as *mut c_void, self.len);
        }
    }
}
