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

/// Maps bytes `[at, at+len)` of a list of buffers onto its pieces: calls
/// `f(buffer, range in that buffer, offset of the piece in the copy)`.
pub(crate) fn for_each_piece<B>(
    bufs: impl Iterator<Item = B>,
    len_of: impl Fn(&B) -> usize,
    mut at: u64,
    mut len: u64,
    mut f: impl FnMut(B, std::ops::Range<usize>, u64) -> Result<()>,
) -> Result<()> {
    let mut done = 0u64;
    for b in bufs {
        if len == 0 {
            break;
        }
        let sl = len_of(&b) as u64;
        if at >= sl {
            at -= sl;
            continue;
        }
        let n = (sl - at).min(len);
        f(b, at as usize..(at + n) as usize, done)?;
        done += n;
        len -= n;
        at = 0;
    }
    Ok(())
}

/// Stores bytes `[at, at+len)` of `iov` at media offset `dst`.
pub fn gather_to_media(media: &dyn Media, dst: u64, iov: &[IoSlice], at: u64, len: u64) -> Result<()> {
    for_each_piece(iov.iter(), |s| s.len(), at, len, |s, r, done| media.write(dst + done, &s[r]))
}

/// crc32c of bytes `[at, at+len)` of `iov` (the data CRC of a key).
pub fn crc_of(iov: &[IoSlice], at: u64, len: u64) -> u32 {
    let mut crc = crate::format::CRC_SEED;
    let _ = for_each_piece(
        iov.iter(),
        |s| s.len(),
        at,
        len,
        |s, r, _| {
            crc = crc32c::crc32c_append(crc, &s[r]);
            Ok(())
        },
    );
    crc
}

/// Copies `len` bytes at media offset `src` into `iov` starting at byte `at`.
pub fn scatter_from_media(media: &dyn Media, src: u64, iov: &mut [IoSliceMut], at: u64, len: u64) -> Result<()> {
    for_each_piece(iov.iter_mut(), |s| s.len(), at, len, |s, r, done| media.read(src + done, &mut s[r]))
}

/// Zeroes `len` bytes of `iov` starting at byte `at`.
pub fn zero(iov: &mut [IoSliceMut], at: u64, len: u64) {
    let _ = for_each_piece(
        iov.iter_mut(),
        |s| s.len(),
        at,
        len,
        |s, r, _| {
            s[r].fill(0);
            Ok(())
        },
    );
}

/// Copies `src` into `iov` starting at byte `at`.
pub fn scatter_from_slice(src: &[u8], iov: &mut [IoSliceMut], at: u64) {
    let _ = for_each_piece(
        iov.iter_mut(),
        |s| s.len(),
        at,
        src.len() as u64,
        |s, r, done| {
            let n = r.len();
            s[r].copy_from_slice(&src[done as usize..done as usize + n]);
            Ok(())
        },
    );
}
