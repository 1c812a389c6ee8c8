//! The slow device behind the cache, as the engine sees it.
//!
//! I/O is asynchronous: the engine submits and returns; the host calls the
//! completion whenever the I/O finishes (inline is fine). Buffers are owned, so
//! nothing borrowed has to outlive a call.

use std::sync::Mutex;

use crate::error::{Error, Result};

pub type Done = Box<dyn FnOnce(Result<()>) + Send>;
pub type ReadDone = Box<dyn FnOnce(Vec<u8>, Result<()>) + Send>;

pub trait BaseDevice: Send + Sync {
    fn size(&self) -> u64;
    fn block_size(&self) -> u32;
    /// Writes `data` at `offset`; calls `done` when it completes.
    fn write(&self, offset: u64, data: Vec<u8>, done: Done);
    /// Writes `len` zero bytes at `offset` (a zero key's writeback). Bases
    /// with a cheaper way (SPDK's write_zeroes) override it.
    fn write_zeroes(&self, offset: u64, len: u64, done: Done) {
        self.write(offset, vec![0u8; len as usize], done)
    }
    /// Makes every completed write durable; calls `done` when it is.
    fn flush(&self, done: Done);
    /// Reads `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: Vec<u8>, done: ReadDone);
}

/// A base device in DRAM that completes inline; for tests and tools.
/// It keeps a durable image (as of the last flush) beside the visible one.
pub struct MemBase {
    state: Mutex<MemBaseState>,
    block_size: u32,
}

struct MemBaseState {
    visible: Vec<u8>,
    durable: Vec<u8>,
    /// Writes completed since the last flush, in completion order.
    unflushed: Vec<(u64, Vec<u8>)>,
    fail_writes: bool,
}

impl MemBase {
    pub fn new(size: usize, block_size: u32) -> Self {
        Self::from_image(vec![0; size], block_size)
    }

    pub fn from_image(image: Vec<u8>, block_size: u32) -> Self {
        MemBase {
            state: Mutex::new(MemBaseState { visible: image.clone(), durable: image, unflushed: Vec::new(), fail_writes: false }),
            block_size,
        }
    }

    /// The contents as a power failure would leave them (only flushed writes).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The contents after a power failure of a disk with a volatile cache: the
    /// flushed image plus an arbitrary (seeded) subset of the later writes.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let s = self.lock();
        let mut img = s.durable.clone();
        let mut rng = crate::pmem::SplitMix64(seed);
        for (off, data) in &s.unflushed {
            if rng.next() & 1 == 1 {
                img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        img
    }

    pub fn visible_image(&self) -> Vec<u8> {
        self.lock().visible.clone()
    }

    /// Makes every later write fail with an I/O error (a dying disk).
    pub fn set_fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemBaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BaseDevice for MemBase {
    fn size(&self) -> u64 {
        self.lock().visible.len() as u64
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn write(&self, offset: u64, data: Vec<u8>, done: Done) {
        let r = {
            let mut s = self.lock();
            let end = offset as usize + data.len();
            if s.fail_writes {
                Err(Error::Io("base write failed (injected)".into()))
            } else if end > s.visible.len() {
                Err(Error::Io(format!("base write beyond end at {offset}")))
            } else {
                s.visible[offset as usize..end].copy_from_slice(&data);
                s.unflushed.push((offset, data));
                Ok(())
            }
        };
        done(r);
    }
    fn flush(&self, done: Done) {
        {
            let mut s = self.lock();
            s.durable = s.visible.clone();
            s.unflushed.clear();
        }
        done(Ok(()));
    }
    fn read(&self, offset: u64, mut buf: Vec<u8>, done: ReadDone) {
        let r = {
            let s = self.lock();
            let end = offset as usize + buf.len();
            if end > s.visible.len() {
                Err(Error::Io(format!("base read beyond end at {offset}")))
            } else {
                buf.copy_from_slice(&s.visible[offset as usize..end]);
                Ok(())
            }
        };
        done(buf, r);
    }
}

/// A base device on a regular file or block device, with synchronous
/// pread/pwrite completing inline; for the bench and the offline tools.
pub struct FileBase {
    file: std::fs::File,
    size: u64,
    block_size: u32,
}

impl FileBase {
    pub fn open(path: &std::path::Path, block_size: u32) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        use std::io::{Seek, SeekFrom};
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::Io(format!("cannot size {}: {e}", path.display())))?;
        Ok(FileBase { file, size, block_size })
    }
}

impl BaseDevice for FileBase {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn write(&self, offset: u64, data: Vec<u8>, done: Done) {
        use std::os::unix::fs::FileExt;
        done(self.file.write_all_at(&data, offset).map_err(|e| Error::Io(format!("base write at {offset}: {e}"))));
    }
    fn flush(&self, done: Done) {
        done(self.file.sync_data().map_err(|e| Error::Io(format!("base flush: {e}"))));
    }
    fn read(&self, offset: u64, mut buf: Vec<u8>, done: ReadDone) {
        use std::os::unix::fs::FileExt;
        let r = self.file.read_exact_at(&mut buf, offset).map_err(|e| Error::Io(format!("base read at {offset}: {e}")));
        done(buf, r);
    }
}
