//! Adversarial stories (`cbec_tests::scenario`) on seeded random bytes: the properties the
//! fuzz target checks, on a fixed sample every run.

use crate::support::{hs, run_dir, run_embedded};
use cbec_pipeline::generator::{Expected, Generated};
use cbec_schemas::Topic;
use cbec_tests::scenario::{Step, check, story};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;

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

/// `steps`' messages as a generated story: each topic's in story order, sent at the story's
/// clock (nothing expected of it).
fn generated(steps: &[Step]) -> Generated {
    let mut g = Generated { topics: BTreeMap::new(), arrival: BTreeMap::new(), expected: Expected::default() };
    for s in steps {
        if let Step::Message(t, payload, sent) = s {
            g.topics.entry(*t).or_default().push((String::new(), payload.clone()));
            g.arrival.entry(*t).or_default().push(*sent);
        }
    }
    g
}

/// The records of an embedded run of `steps`' messages at `partitions`.
fn pipeline_records(steps: &[Step], partitions: usize) -> Vec<String> {
    run_embedded(&generated(steps), partitions).0.iter().map(|r| format!("{r:?}")).collect()
}

/// The same stories through the whole in-process pipeline (decoding, the sequencer's
/// canonical order across topics, dead letters, the summarize stage, the end of time):
/// the same records at 1 and 4 partitions.
#[test]
fn adversarial_stories_through_the_pipeline_are_the_same_at_any_partition_count() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1818);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let len = rng.random_range(8..160);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let steps = story(&data);
        let one = pipeline_records(&steps, 1);
        let four = pipeline_records(&steps, 4);
        assert_eq!(one, four, "records differ at 1 and 4 partitions for {steps:?}");
        for x in &one {
            *kinds.entry(x.split(['(', ' ']).next().unwrap_or("").to_string()).or_default() += 1;
        }
    }
    eprintln!("{kinds:?}");
    // The sample reaches every kind of record, dead letters and summary declarations too.
    for (k, least) in [("Declared", 100), ("Sorting", 100), ("Release", 100), ("Dead", 10), ("Summary", 1)] {
        assert!(kinds.get(k).is_some_and(|n| *n >= least), "{k}: {kinds:?}");
    }
}

/// The same stories written as files twice, once as JSON lines and once with every message
/// that has a CEB form (orders, lists, waybills, payments, arrivals, departures) as CEB XML
/// documents: the two decoders give the same records, whatever odd values the story holds.
#[test]
fn adversarial_stories_as_ceb_xml_give_the_records_of_their_json() {
    use cbec_pipeline::generator::{write_dir, write_dir_xml};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1819);
    let (mut compared, mut xml_messages) = (0usize, 0usize);
    for _ in 0..60 {
        let len = rng.random_range(40..200);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let steps = story(&data);
        let g = generated(&steps);
        xml_messages += steps
            .iter()
            .filter(|s| matches!(s, Step::Message(t, ..) if !matches!(t, Topic::Goods | Topic::Scans | Topic::Seals | Topic::Controls)))
            .count();
        let (json_dir, xml_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_dir(&g, json_dir.path()).unwrap();
        write_dir_xml(&g, xml_dir.path()).unwrap();
        let (a, da) = run_dir(json_dir.path());
        let (b, db) = run_dir(xml_dir.path());
        assert!(a == b, "records from CEB XML differ from JSON lines for {steps:?}");
        assert_eq!(da, db, "dead letters for {steps:?}");
        compared += a.len();
    }
    assert!(compared > 1_000 && xml_messages > 500, "{compared} records, {xml_messages} messages as XML");
}
