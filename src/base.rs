//! The slow device behind the cache, as the engine sees it.
//!
//! I/O is asynchronous: the engine submits and returns; the host calls the
//! completion whenever the I/O finishes (inline is fine). Buffers are owned, so
//! nothing borrowed has to outlive a call.

use crate::error::{Error, Result};

pub type Done = Box<dyn FnOnce(Result<()>) + Send>;
pub type ReadDone = Box<dyn FnOnce(Vec<u8>, Result<()>) + Send>;

/// `len` bytes of the cache media at byte `off`: where a piece of cached
/// data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaRange {
    pub off: u64,
    pub len: u32,
}

pub trait BaseDevice: Send + Sync {
    fn size(&self) -> u64;
    fn block_size(&self) -> u32;
    /// Writes `data` at `offset`; calls `done` when it completes.
    fn write(&self, offset: u64, data: Vec<u8>, done: Done);
    /// Writes `len` bytes at `offset` that `fill` puts into the buffer it is
    /// given; if `fill` fails nothing is written and its error is returned
    /// (`done` is then not called). Bases that stage writes in buffers of
    /// their own (DMA memory) override it to fill those directly.
    fn write_from(
        &self,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<()>,
        done: Done,
    ) -> Result<()> {
        let mut data = vec![0u8; len];
        fill(&mut data)?;
        self.write(offset, data, done);
        Ok(())
    }
    /// Writes the cache media's `parts`, back to back, at `offset`, the base
    /// taking the bytes straight from the media instead of a copy. The
    /// engine stores nothing into those ranges until `done` is called (the
    /// log never writes over data writeback has not finished with). Returns
    /// `done` uncalled when this base cannot reach the media's memory; the
    /// engine then copies through [`write_from`](BaseDevice::write_from).
    fn write_media(&self, offset: u64, parts: &[MediaRange], done: Done) -> std::result::Result<(), Done> {
        let _ = (offset, parts);
        Err(done)
    }
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
            .map_err(|e| Error::os(format!("cannot open {}", path.display()), e))?;
        use std::io::{Seek, SeekFrom};
        let size =
            (&file).seek(SeekFrom::End(0)).map_err(|e| Error::os(format!("cannot size {}", path.display()), e))?;
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
        done(self.file.write_all_at(&data, offset).map_err(|e| Error::os(format!("base write at {offset}"), e)));
    }
    fn flush(&self, done: Done) {
        done(self.file.sync_data().map_err(|e| Error::os("base flush", e)));
    }
    fn read(&self, offset: u64, mut buf: Vec<u8>, done: ReadDone) {
        use std::os::unix::fs::FileExt;
        let r = self.file.read_exact_at(&mut buf, offset).map_err(|e| Error::os(format!("base read at {offset}"), e));
        done(buf, r);
    }
}
