//! Read-only access to a cache device, for tools that must not change it
//! (`pcache inspect`, `pcache check`).
//!
//! - [`ReadOnlyFile`] reads a file or block device with pread; it needs no
//!   libpmem and no write permission.
//! - [`ReadOnly`] wraps any other media (a devdax mapping, which cannot be
//!   read with pread) and refuses every store.
//!
//! Both answer a store with an error instead of performing it, so a code path
//! that would write is caught rather than silently changing the device.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{check_range, Media};
use crate::error::{Error, Result};

fn refused(off: u64, len: u64) -> Error {
    Error::Io(format!("store of {len} bytes at offset {off} refused: the device is open read-only"))
}

/// A file or block device opened read-only.
pub struct ReadOnlyFile {
    file: std::fs::File,
    len: u64,
}

impl ReadOnlyFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::os(format!("cannot open {}", path.display()), e))?;
        use std::io::{Seek, SeekFrom};
        let len =
            (&file).seek(SeekFrom::End(0)).map_err(|e| Error::os(format!("cannot size {}", path.display()), e))?;
        Ok(ReadOnlyFile { file, len })
    }
}

impl Media for ReadOnlyFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        check_range(self.len, off, buf.len())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| Error::os(format!("read of {} bytes at offset {off}", buf.len()), e))
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        Err(refused(off, data.len() as u64))
    }

    fn zero(&self, off: u64, len: u64) -> Result<()> {
        Err(refused(off, len))
    }

    fn fence(&self) {}
}

/// Any media, with every store refused.
pub struct ReadOnly(pub Arc<dyn Media>);

impl Media for ReadOnly {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(off, buf)
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        Err(refused(off, data.len() as u64))
    }

    fn zero(&self, off: u64, len: u64) -> Result<()> {
        Err(refused(off, len))
    }

    fn fence(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pmem::MemMedia;

    #[test]
    fn stores_are_refused_and_reads_pass_through() {
        let m = Arc::new(MemMedia::from_image(vec![7u8; 4096]));
        let ro = ReadOnly(m.clone());
        let mut b = [0u8; 16];
        ro.read(100, &mut b).unwrap();
        assert_eq!(b, [7u8; 16]);
        assert!(ro.write(0, &[1]).is_err());
        assert!(ro.zero(0, 64).is_err());
        assert_eq!(m.snapshot(), vec![7u8; 4096]);

        let path = std::env::temp_dir().join(format!("pcache-ro-{}", std::process::id()));
        std::fs::write(&path, vec![9u8; 8192]).unwrap();
        let f = ReadOnlyFile::open(&path).unwrap();
        assert_eq!(f.len(), 8192);
        f.read(8000, &mut b).unwrap();
        assert_eq!(b, [9u8; 16]);
        assert!(f.read(8190, &mut b).is_err());
        assert!(f.write(0, &[1]).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
