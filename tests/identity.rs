//! Identities: the cache's own UUID, and how the base is recognised (by
//! name, or by UUID when both sides know one).

mod common;

use std::sync::Arc;

use common::*;
use pcache::format::{Superblock, SB_OFF, SB_SIZE};
use pcache::pmem::{Media, MemMedia};
use pcache::{BaseIdentity, Cache, Config, Error};
use uuid::Uuid;

const BASE: u64 = 1 << 20;

fn media() -> Arc<MemMedia> {
    Arc::new(MemMedia::new(media_len(16)))
}

fn cfg_with(base: BaseIdentity, uuid: Option<Uuid>) -> Config {
    let mut cfg = config(BASE, 1);
    cfg.base = base;
    cfg.uuid = uuid;
    cfg
}

fn base(id: &str, uuid: Option<Uuid>, stable: bool) -> BaseIdentity {
    BaseIdentity { uuid, uuid_is_stable: stable, ..BaseIdentity::named(BASE, 512, id) }
}

fn try_open(m: &Arc<MemMedia>, cfg: &Config) -> pcache::Result<Cache> {
    Cache::open(m.clone() as Arc<dyn Media>, cfg).map(|(c, _)| c)
}

fn mismatch(r: pcache::Result<Cache>) -> String {
    match r {
        Err(Error::Mismatch(m)) => m,
        Err(e) => panic!("expected a mismatch, got {e}"),
        Ok(_) => panic!("expected a mismatch, the cache opened"),
    }
}

#[test]
fn the_cache_keeps_the_uuid_it_was_formatted_with() {
    let m = media();
    let u: Uuid = "6b1f5e4c-3d2a-4b8e-9f00-112233445566".parse().unwrap();
    let c = try_open(&m, &cfg_with(base("b", None, false), Some(u))).unwrap();
    assert_eq!(c.uuid(), u);
    drop(c);
    assert_eq!(try_open(&m, &cfg_with(base("b", None, false), None)).unwrap().uuid(), u, "kept without asking");
    assert_eq!(try_open(&m, &cfg_with(base("b", None, false), Some(u))).unwrap().uuid(), u);
    let other = Uuid::new_v4();
    let msg = mismatch(try_open(&m, &cfg_with(base("b", None, false), Some(other))));
    assert!(msg.contains(&other.to_string()) && msg.contains(&u.to_string()), "names both: {msg}");
}

#[test]
fn without_a_uuid_one_is_made_at_format_and_kept() {
    let m = media();
    let u = try_open(&m, &cfg_with(base("b", None, false), None)).unwrap().uuid();
    assert!(!u.is_nil());
    assert_eq!(try_open(&m, &cfg_with(base("b", None, false), None)).unwrap().uuid(), u);
    let m2 = media();
    assert_ne!(try_open(&m2, &cfg_with(base("b", None, false), None)).unwrap().uuid(), u, "one per format");
}

#[test]
fn an_image_without_a_recorded_uuid_gets_the_same_one_at_every_open() {
    let m = media();
    drop(try_open(&m, &cfg_with(base("b", None, false), None)).unwrap());
    // As an older build formatted it: bytes 128..160 of the superblock zero.
    let mut raw = vec![0u8; SB_SIZE];
    m.read(SB_OFF, &mut raw).unwrap();
    let mut sb = Superblock::decode(&raw, m.len()).unwrap();
    sb.uuid = [0; 16];
    m.write(SB_OFF, &sb.encode()).unwrap();
    let u = try_open(&m, &cfg_with(base("b", None, false), None)).unwrap().uuid();
    assert!(!u.is_nil());
    assert_eq!(try_open(&m, &cfg_with(base("b", None, false), None)).unwrap().uuid(), u);
}

#[test]
fn a_base_is_known_by_its_uuid_where_it_has_one() {
    let m = media();
    let b = Uuid::new_v4();
    drop(try_open(&m, &cfg_with(base("nvme0n1", Some(b), true), None)).unwrap());
    // Renamed, same uuid: accepted.
    assert!(try_open(&m, &cfg_with(base("other0n1", Some(b), true), None)).is_ok());
    // Another device under the old name, with a uuid of its own: refused.
    let c = Uuid::new_v4();
    let msg = mismatch(try_open(&m, &cfg_with(base("nvme0n1", Some(c), true), None)));
    assert!(msg.contains(&b.to_string()) && msg.contains(&c.to_string()), "names both uuids: {msg}");
    // A uuid made up at this start, same name: the name decides.
    assert!(try_open(&m, &cfg_with(base("nvme0n1", Some(c), false), None)).is_ok());
    // Neither name nor uuid: refused.
    mismatch(try_open(&m, &cfg_with(base("other0n1", Some(c), false), None)));
    // No uuid known: the name decides.
    assert!(try_open(&m, &cfg_with(base("nvme0n1", None, false), None)).is_ok());
    mismatch(try_open(&m, &cfg_with(base("other0n1", None, false), None)));
}
