//! Adversarial stories (`cbec_tests::scenario`) on seeded random bytes: the properties the
//! fuzz target checks, on a fixed sample every run.

use crate::support::hs;
use cbec_tests::scenario::{Step, check, story};
use rand::{RngExt, SeedableRng};

#[test]
fn adversarial_stories_keep_partition_and_restore_invariance() {
    let hs = hs();
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let (mut records, mut messages) = (0usize, 0usize);
    let mut kinds = std::collections::BTreeMap::new();
    for _ in 0..2_000 {
        let len = rng.random_range(8..160);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        messages += story(&data).iter().filter(|s| matches!(s, Step::Message(..))).count();
        let r = check(&data, &hs);
        for x in &r {
            *kinds.entry(x.split(['(', ' ']).next().unwrap_or("").to_string()).or_insert(0usize) += 1;
        }
        records += r.len();
    }
    // The sample exercises the engine: stories of messages that produce records.
    eprintln!("{messages} messages, {records} records: {kinds:?}");
    assert!(messages > 15_000 && records > 10_000, "{messages} messages, {records} records");
}
