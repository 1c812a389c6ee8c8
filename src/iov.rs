//! Scatter/gather between caller iovecs and pmem, without staging copies.

use std::io::{IoSlice, IoSliceMut};

use crate::error::Result;
use crate::pmem::Media;

pub fn total_len(iov: &[IoSlice]) -> u64 {
    iov.iter().map(|s| s.len() as u64).sum()
}

pub fn total_len_mut(iov: &[IoSliceMut]) -> u64 {
    iov.iter().map(|s| s.len() as u64).sum()
}

/// Calls `f` for each piece of `iov` covering `[at, at+len)`.
fn pieces<'a>(iov: &'a [IoSlice], mut at: u64, mut len: u64, mut f: impl FnMut(&'a [u8]) -> Result<()>) -> Result<()> {
    for s in iov {
        if len == 0 {
            break;
        }
        let sl = s.len() as u64;
        if at >= sl {
            at -= sl;
            continue;
        }
        let n = (sl - at).min(len);
        let bytes: &'a [u8] = s;
        f(&bytes[at as usize..(at + n) as usize])?;
        len -= n;
        at = 0;
    }
    Ok(())
}

/// Stores bytes `[at, at+len)` of `iov` at media offset `dst`; returns their
/// crc32c when `want_crc`.
pub fn gather_to_media(media: &dyn Media, dst: u64, iov: &[IoSlice], at: u64, len: u64, want_crc: bool) -> Result<u32> {
    let mut off = dst;
    let mut crc = crate::format::CRC_SEED;
    pieces(iov, at, len, |p| {
        media.write(off, p)?;
        if want_crc {
            crc = crc32c::crc32c_append(crc, p);
        }
        off += p.len() as u64;
        Ok(())
    })?;
    Ok(crc)
}

/// Copies `len` bytes at media offset `src` into `iov` starting at byte `at`.
pub fn scatter_from_media(media: &dyn Media, src: u64, iov: &mut [IoSliceMut], mut at: u64, mut len: u64) -> Result<()> {
    let mut off = src;
    for s in iov.iter_mut() {
        if len == 0 {
            break;
        }
        let sl = s.len() as u64;
        if at >= sl {
            at -= sl;
            continue;
        }
        let n = (sl - at).min(len);
        media.read(off, &mut s[at as usize..(at + n) as usize])?;
        off += n;
        len -= n;
        at = 0;
    }
    Ok(())
}

/// Copies `src` into `iov` starting at byte `at`.
pub fn scatter_from_slice(src: &[u8], iov: &mut [IoSliceMut], mut at: u64) {
    let mut done = 0usize;
    for s in iov.iter_mut() {
        if done == src.len() {
            break;
        }
        let sl = s.len() as u64;
        if at >= sl {
            at -= sl;
            continue;
        }
        let n = ((sl - at) as usize).min(src.len() - done);
        s[at as usize..at as usize + n].copy_from_slice(&src[done..done + n]);
        done += n;
        at = 0;
    }
}
