//! Batched writes (Cache::write_batch): one result per request, a bad request
//! fails alone, a batch that runs out of space defers its tail in order, and
//! what a batch wrote reads back — after a restart too — as if its requests
//! had been written one after another.

mod common;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

use common::*;
use pcache::pmem::{Media, MemMedia};
use pcache::{Error, MemBase, WriteOutcome};

const BASE_SECTORS: u64 = 4096; // 2 MiB

/// Reads every sector and checks it against `model` (sector -> write id).
fn check(cache: &pcache::Cache, base: &MemBase, model: &[u64], what: &str) {
    let got = read_through(cache, base, 0, 0, (BASE_SECTORS * 512) as usize);
    for s in 0..BASE_SECTORS {
        let have = who_wrote(&got[s as usize * 512..(s as usize + 1) * 512], s);
        assert_eq!(have, Some(model[s as usize]), "{what}: sector {s}");
    }
}

#[test]
fn a_bad_request_fails_alone() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(16)));
    let base = base((BASE_SECTORS * 512) as usize);
    let cache = open(media, &config(BASE_SECTORS * 512, 1));
    let end = BASE_SECTORS * 512;
    let writes = vec![
        (0, write_data(1, 0, 8)),
        (end - 512, write_data(2, BASE_SECTORS - 1, 2)), // runs past the end
        (4096 + 100, vec![7u8; 512]),                    // not sector-aligned
        (8192, write_data(3, 16, 8)),
    ];
    let out = write_batch_all(&cache, &base, 0, &writes);
    assert_eq!(cache.io_ops(), 2, "the front end's operations (for pacing) count the good writes");
    assert!(matches!(out[0], Ok(WriteOutcome::Done)), "{:?}", out[0]);
    assert!(matches!(out[1], Err(Error::InvalidArgument(_))), "{:?}", out[1]);
    assert!(matches!(out[2], Err(Error::InvalidArgument(_))), "{:?}", out[2]);
    assert!(matches!(out[3], Ok(WriteOutcome::Done)), "{:?}", out[3]);
    let mut model = vec![0u64; BASE_SECTORS as usize];
    model[..8].fill(1);
    model[16..24].fill(3);
    check(&cache, &base, &model, "after the batch");
    let st = cache.stats();
    assert_eq!((st.write_ops, st.write_bytes), (2, 8192), "only the good requests count");
}

#[test]
fn overlapping_requests_of_a_batch_replay_in_order() {
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(32)));
    let base = base((BASE_SECTORS * 512) as usize);
    let cfg = config(BASE_SECTORS * 512, 2);
    let mut model = vec![0u64; BASE_SECTORS as usize];
    let mut rng = SmallRng::seed_from_u64(11);
    let mut id = 0u64;
    {
        let cache = open(media.clone(), &cfg);
        assert_eq!(cache.workers(), 2, "a data head for each of the two workers");
        for round in 0..40 {
            // Requests crowd into a few 4 KiB blocks, so most overlap an
            // earlier one of the same batch; some are long and cross
            // segments (64 KiB in these tests).
            let mut writes = Vec::new();
            for _ in 0..1 + rng.next_u64() % 12 {
                id += 1;
                let long = rng.next_u64() % 8 == 0;
                let n = if long { 64 + rng.next_u64() % 192 } else { 1 + rng.next_u64() % 16 };
                let first = (rng.next_u64() % 6) * 8 + rng.next_u64() % 8 + (round % 4) * 600;
                writes.push((first * 512, write_data(id, first, n)));
                model[first as usize..(first + n) as usize].fill(id);
            }
            for r in write_batch_all(&cache, &base, round as usize % 2, &writes) {
                r.unwrap();
            }
            if round % 5 == 4 {
                cache.flush().unwrap();
            }
        }
        check(&cache, &base, &model, "before restart");
        cache.flush().unwrap();
        // No orderly close: the open ksets were flushed, the heads are not
        // released — as after a power failure past the flush.
    }
    let cache = open(media, &cfg);
    check(&cache, &base, &model, "after replay");
}

#[test]
fn a_batch_without_space_defers_its_tail_in_order() {
    // 12 segments of 64 KiB, most of them kept back for the key log: a
    // batch of 1 MiB cannot fit.
    let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(12)));
    let base = base((BASE_SECTORS * 512) as usize);
    let cache = open(media, &config(BASE_SECTORS * 512, 1));
    let mut model = vec![0u64; BASE_SECTORS as usize];
    let writes: Vec<_> = (0..64u64)
        .map(|i| {
            // 16 KiB each; every fourth one rewrites the start of the one before.
            let first = if i % 4 == 3 { (i - 1) * 32 } else { i * 32 };
            (first * 512, write_data(i + 1, first, 32))
        })
        .collect();
    let iovs: Vec<[std::io::IoSlice; 1]> = writes.iter().map(|(_, d)| [std::io::IoSlice::new(d)]).collect();
    let reqs: Vec<pcache::WriteReq> =
        writes.iter().zip(&iovs).map(|((off, _), iov)| pcache::WriteReq { offset: *off, data: iov }).collect();
    let mut out = Vec::new();
    cache.write_batch(0, &reqs, &mut out);
    let first_deferred = out.iter().position(|r| matches!(r, Ok(WriteOutcome::Deferred { .. })));
    let Some(d) = first_deferred else { panic!("1 MiB fitted in a cache of a few segments: {out:?}") };
    assert!(d > 0, "nothing of the batch went in");
    for (i, r) in out.iter().enumerate() {
        match (i < d, r) {
            (true, Ok(WriteOutcome::Done)) => {}
            (false, Ok(WriteOutcome::Deferred { written })) if i == d || *written == 0 => {}
            _ => panic!("request {i}: {r:?} (first deferred: {d})"),
        }
    }
    assert!(cache.stats().deferred_writes >= (64 - d) as u64);
    // The host resubmits what was deferred, in order, while background work frees space.
    for ((off, data), r) in writes.iter().zip(&out) {
        if let Ok(WriteOutcome::Deferred { written }) = r {
            write_all(&cache, &base, 0, off + written, &data[*written as usize..]);
        }
    }
    for (i, (off, data)) in writes.iter().enumerate() {
        let first = off / 512;
        model[first as usize..first as usize + data.len() / 512].fill(i as u64 + 1);
    }
    check(&cache, &base, &model, "after the deferred tail was written");
}

/// A request whose second piece finds its range taken (a bypass is writing
/// it to the base) defers with exactly its first piece written, in a batch
/// of several and alone; the rest, resubmitted once the bypass ended, reads
/// back with the first piece. Pieces split at the 4 MiB subtree boundary.
#[test]
fn a_request_stopped_after_its_first_piece_says_how_much_went_in() {
    const SUB: u64 = 4 << 20;
    let size = 2 * SUB;
    for several in [true, false] {
        let media: Arc<dyn Media> = Arc::new(MemMedia::new(media_len(64)));
        let base = base(size as usize);
        let cache = open(media, &config(size, 1));
        // Any write of 64 KiB or more bypasses: [SUB, SUB + 64 KiB) is taken.
        cache.set_seq_cutoff(1);
        let b = cache.begin_bypass(0, SUB, 64 << 10).expect("a bypass is granted on an empty cache");
        cache.set_seq_cutoff(0);
        let other = write_data(1, 0, 8);
        let split = write_data(2, SUB / 512 - 8, 16); // 4 KiB on each side of SUB
        let mut writes = vec![(SUB - 4096, split.clone())];
        if several {
            writes.insert(0, (0, other.clone()));
        }
        let out = write_batch_all_once(&cache, &writes);
        let last = out.last().expect("one result per request");
        assert!(
            matches!(last, Ok(WriteOutcome::Deferred { written: 4096 })),
            "several: {several}: {last:?} (all: {out:?})"
        );
        if several {
            assert!(matches!(out[0], Ok(WriteOutcome::Done)), "{:?}", out[0]);
        }
        cache.end_bypass(b, true);
        write_all(&cache, &base, 0, SUB, &split[4096..]);
        let got = read_through(&cache, &base, 0, SUB - 4096, 8192);
        assert_eq!(got, split, "several: {several}: the split request reads back whole");
        if several {
            assert_eq!(read_through(&cache, &base, 0, 0, 4096), other);
        }
    }
}

/// One call of write_batch (no resubmission), its results.
fn write_batch_all_once(cache: &pcache::Cache, writes: &[(u64, Vec<u8>)]) -> Vec<pcache::Result<WriteOutcome>> {
    let iovs: Vec<[std::io::IoSlice; 1]> = writes.iter().map(|(_, d)| [std::io::IoSlice::new(d)]).collect();
    let reqs: Vec<pcache::WriteReq> =
        writes.iter().zip(&iovs).map(|((off, _), iov)| pcache::WriteReq { offset: *off, data: iov }).collect();
    let mut out = Vec::new();
    cache.write_batch(0, &reqs, &mut out);
    out
}
