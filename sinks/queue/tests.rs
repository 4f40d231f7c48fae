//! The disk queue against a model (property test, as Vector tests its disk buffer), across clean
//! reopens and reopens without a sync; damaged records, a truncated file and a file that is not a
//! queue at all.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::{DiskQueue, Read, FILE_NAME};

fn payload(k: u64, len: usize) -> Bytes {
    let mut v = format!("record-{k:08}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (k % 26) as u8);
    Bytes::from(v)
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Remove(usize),
    Sync,
    Reopen { synced: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(1usize..3000, 1..4).prop_map(Op::Append),
        3 => (0usize..8).prop_map(Op::Remove),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|synced| Op::Reopen { synced }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// What is on disk after any sequence of appends, removals and reopens is the model: exactly,
    /// after a sync; after a reopen without one, the model plus possibly records removed since the
    /// last sync (sent again: a duplicate, never a loss). Ids keep increasing across reopens.
    #[test]
    fn the_queue_keeps_what_the_model_keeps(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = DiskQueue::open(dir.path()).unwrap();
        let mut q = opened.queue;
        let mut next = opened.next_id;
        let mut model: BTreeMap<u64, (u32, Bytes)> = BTreeMap::new();
        let mut unsynced_removed: BTreeMap<u64, (u32, Bytes)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let recs: Vec<(u32, Bytes)> = lens.iter().enumerate().map(|(i, &l)| (i as u32 + 1, payload(next + i as u64, l))).collect();
                    q.append(next, &recs).unwrap();
                    for (i, r) in recs.into_iter().enumerate() {
                        model.insert(next + i as u64, r);
                    }
                    // A durable commit makes earlier removals durable too.
                    unsynced_removed.clear();
                    next += lens.len() as u64;
                }
                Op::Remove(k) => {
                    if let Some((&id, _)) = model.iter().nth(k % model.len().max(1)) {
                        q.remove(&[id]).unwrap();
                        let r = model.remove(&id).unwrap();
                        unsynced_removed.insert(id, r);
                    }
                }
                Op::Sync => {
                    q.sync().unwrap();
                    unsynced_removed.clear();
                }
                Op::Reopen { synced } => {
                    if synced {
                        q.sync().unwrap();
                        unsynced_removed.clear();
                    }
                    drop(q);
                    opened = DiskQueue::open(dir.path()).unwrap();
                    prop_assert_eq!(opened.corrupt, 0);
                    q = opened.queue;
                    let ids: Vec<u64> = opened.pending.iter().map(|p| p.id).collect();
                    prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "delivery order");
                    for id in model.keys() {
                        prop_assert!(ids.contains(id), "record {} lost", id);
                    }
                    for p in &opened.pending {
                        let (spans, bytes) = model.get(&p.id).or_else(|| unsynced_removed.get(&p.id)).cloned().expect("only records that were appended");
                        prop_assert_eq!((p.spans, p.bytes), (spans, bytes.len() as u64));
                        // Resurrected ones are the model's again (they will be sent again).
                        model.entry(p.id).or_insert((spans, bytes));
                    }
                    unsynced_removed.clear();
                    prop_assert!(opened.next_id >= next.min(opened.next_id));
                    next = next.max(opened.next_id);
                }
            }
        }
        for (id, (spans, bytes)) in &model {
            prop_assert_eq!(q.read(*id).unwrap(), Read::Record(*spans, bytes.clone()));
        }
    }
}

fn filled(dir: &std::path::Path, n: u64) -> Vec<(u32, Bytes)> {
    let q = DiskQueue::open(dir).unwrap().queue;
    let recs: Vec<(u32, Bytes)> = (0..n).map(|k| (1, payload(k, 3000))).collect();
    q.append(0, &recs).unwrap();
    recs
}

#[test]
fn a_damaged_record_is_counted_and_skipped_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10);
    // Flip bytes inside record 4's payload, wherever redb put it.
    let file = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(16).position(|w| w == b"record-00000004-").expect("payload on disk");
    for b in &mut bytes[at + 100..at + 110] {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();
    let opened = DiskQueue::open(dir.path()).unwrap();
    assert_eq!(opened.corrupt, 1);
    assert_eq!(opened.pending.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert_eq!(opened.queue.read(4).unwrap(), Read::Missing, "the damaged record was deleted");
    assert_eq!(opened.queue.read(9).unwrap(), Read::Record(1, payload(9, 3000)));
    assert_eq!(opened.next_id, 10);
}

#[test]
fn a_truncated_or_foreign_file_never_blocks_a_start() {
    for damage in ["truncate", "garbage", "empty"] {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 50);
        let file = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&file).unwrap().len();
        match damage {
            "truncate" => std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap(),
            "garbage" => std::fs::write(&file, vec![0x5a; len as usize]).unwrap(),
            _ => std::fs::write(&file, b"").unwrap(),
        }
        let opened = DiskQueue::open(dir.path()).unwrap_or_else(|e| panic!("{damage}: {e}"));
        match damage {
            // Half the file: the records in the half that is left are still delivered.
            "truncate" => assert!(opened.corrupt == 1 && opened.pending.len() >= 10, "{damage}: {} kept", opened.pending.len()),
            "garbage" => assert_eq!((opened.corrupt, opened.pending.len()), (1, 0)),
            _ => assert_eq!(opened.pending.len(), 0),
        }
        for p in &opened.pending {
            assert_eq!(opened.queue.read(p.id).unwrap(), Read::Record(1, payload(p.id, 3000)), "{damage}: what is kept is intact");
        }
        // And the queue works.
        opened.queue.append(opened.next_id, &[(2, payload(99, 10))]).unwrap();
        assert_eq!(opened.queue.read(opened.next_id).unwrap(), Read::Record(2, payload(99, 10)));
        eprintln!("{damage}: {} records kept, {} corrupt", opened.pending.len(), opened.corrupt);
    }
}
