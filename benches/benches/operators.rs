//! Operator throughput (events/second on one core, decoding excluded) and the cost of one
//! sorting decision.
//!
//! Run: `cargo bench -p cbec-benches --bench operators`

use cbec_operators::Operator;
use cbec_operators::clear::{Clear, ClearIn, Shared};
use cbec_operators::compact::StoredList;
use cbec_operators::declare::{Declare, DeclareIn};
use cbec_operators::engine::Engine;
use cbec_operators::rules::Rules;
use cbec_pipeline::generator::{GenConfig, generate};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Decoded, Decoder, Entity, Scan, Topic};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

// The allocator of the `cbec` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn hs() -> Nomenclature {
    let p = std::env::var("CBEC_HS_FILE")
        .unwrap_or_else(|_| cbec_schemas::shared_path("data/hs/harmonized-system.csv").display().to_string());
    Nomenclature::load(std::path::Path::new(&p)).expect("HS nomenclature")
}

/// Every entity of a generated story, in story order per topic.
fn entities(orders: usize) -> Vec<(Topic, Entity)> {
    let g = generate(&GenConfig { orders, malformed: 0.0, ..GenConfig::default() }, &Rules::default(), &hs());
    let mut d = Decoder::new();
    let mut v = Vec::new();
    for (t, msgs) in &g.topics {
        for (_, m) in msgs {
            if let Decoded::One(Ok(e)) = d.decode(*t, m) {
                v.push((*t, e));
            }
        }
    }
    v
}

/// Events between hand-offs of the collected output, as the runtime hands each event's
/// output on to the sink.
const HAND_ON: usize = 1024;

/// Drops the collected output every [`HAND_ON`] events (its drop stays inside the
/// measurement; the state the operator keeps is returned and dropped outside it, as state
/// outlives events in a running pipeline).
fn hand_on<T>(i: usize, out: &mut Vec<T>) {
    if i % HAND_ON == HAND_ON - 1 {
        black_box(out.len());
        out.clear();
    }
}

/// Feeds `input` to the engine, handing its output on as [`hand_on`] does.
fn feed_engine(mut e: Engine, input: Vec<Entity>) -> Engine {
    let mut out = Vec::with_capacity(4 * HAND_ON);
    // Event time starts where the runtime would start it, so the state retention is on
    // (every key queued for it), as in a run.
    if let Some(first) = input.first() {
        e.advance(cbec_schemas::EventTime(first.event_time().0 - 1), &mut out);
    }
    for (i, x) in input.into_iter().enumerate() {
        e.process(x, &mut out);
        hand_on(i, &mut out);
    }
    e
}

fn bench(c: &mut Criterion) {
    let all = entities(20_000);
    let declare_in: Vec<DeclareIn> = all
        .iter()
        .filter_map(|(_, e)| match e {
            Entity::Order(o) => Some(DeclareIn::Order(o.clone())),
            Entity::List(l) => Some(DeclareIn::List(l.clone())),
            Entity::Payment(p) => Some(DeclareIn::Payment(p.clone())),
            _ => None,
        })
        .collect();
    let clear_in: Vec<ClearIn> = all
        .iter()
        .filter_map(|(_, e)| match e {
            Entity::List(l) => Some(ClearIn::List(l.clone())),
            Entity::Waybill(w) => Some(ClearIn::Waybill(w.clone())),
            Entity::Scan(s) => Some(ClearIn::Scan(s.clone())),
            _ => None,
        })
        .collect();
    let mut g = c.benchmark_group("operators");
    g.sample_size(10);
    g.throughput(Throughput::Elements(declare_in.len() as u64));
    g.bench_function("declare_events", |b| {
        b.iter_batched(
            || {
                // The state retention on, as the engine turns it on in a run.
                let mut d = Declare::default();
                d.expire(i32::MIN);
                (d, declare_in.clone(), Rules::default())
            },
            |(mut d, input, mut rules)| {
                let mut out = Vec::with_capacity(2 * HAND_ON);
                for (i, x) in input.into_iter().enumerate() {
                    d.process(&mut rules, x, &mut out);
                    hand_on(i, &mut out);
                }
                d
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(clear_in.len() as u64));
    let h = hs();
    g.bench_function("clear_events", |b| {
        b.iter_batched(
            || {
                let mut cl = Clear::default();
                cl.expire(i32::MIN);
                (cl, clear_in.clone(), Shared { hs: h.clone(), ..Shared::default() })
            },
            |(mut cl, input, mut shared)| {
                let mut out = Vec::with_capacity(4 * HAND_ON);
                for (i, x) in input.into_iter().enumerate() {
                    cl.process(&mut shared, x, &mut out);
                    hand_on(i, &mut out);
                }
                (cl, shared)
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("engine_all_events", |b| {
        b.iter_batched(
            || (Engine::new(Rules::default(), h.clone(), 4), all.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()),
            |(e, input)| feed_engine(e, input),
            BatchSize::LargeInput,
        )
    });
    // Summarize: exited lists into the Arrow batch, then one period close.
    let exited: Vec<cbec_operators::engine::Exited> = all
        .iter()
        .filter_map(|(_, e)| if let Entity::List(l) = e { Some(l) } else { None })
        .enumerate()
        .map(|(i, l)| cbec_operators::engine::Exited {
            invt_no: format!("51412026E{i:011}").into(),
            summarizable: true,
            was_summarizable: false,
            list: l.clone().into(),
            seq: i as u64 + 1,
        })
        .collect();
    g.throughput(Throughput::Elements(exited.len() as u64));
    g.bench_function("summarize_lists", |b| {
        b.iter_batched(
            || (cbec_operators::summarize::Summarize::default(), exited.clone(), Rules::default()),
            |(mut s, input, mut rules)| {
                let mut out = Vec::new();
                for x in input {
                    s.process(&mut rules, x, &mut out);
                }
                s.on_watermark(&mut rules, cbec_schemas::EventTime::MAX, &mut out);
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // The compact at-rest form of a stored list: pack (interning its codes; the list is
    // dropped as clear drops it) and unpack (as activation and exit do; dropped after).
    let lists: Vec<cbec_schemas::Inventory> =
        all.iter().filter_map(|(_, e)| if let Entity::List(l) = e { Some((**l).clone()) } else { None }).collect();
    let mut codes = cbec_operators::compact::Codes::default();
    let packed: Vec<StoredList> = lists.iter().map(|l| StoredList::pack(l, &mut codes)).collect();
    let mut g = c.benchmark_group("compact");
    g.sample_size(10);
    g.throughput(Throughput::Elements(lists.len() as u64));
    g.bench_function("pack_list", |b| {
        b.iter_batched(
            || (lists.clone(), codes.clone()),
            |(input, mut codes)| {
                let v: Vec<StoredList> = input.into_iter().map(|l| StoredList::pack(&l, &mut codes)).collect();
                (v, codes)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("unpack_list", |b| {
        b.iter(|| {
            for (p, l) in packed.iter().zip(&lists) {
                black_box(p.unpack(&l.logistics_no, &codes));
            }
        })
    });
    g.finish();

    // One sorting decision against a populated engine.
    let mut engine = Engine::new(Rules::default(), h.clone(), 4);
    let mut sink = Vec::new();
    let mut scans: Vec<Scan> = Vec::new();
    for (_, e) in &all {
        if let Entity::Scan(s) = e {
            scans.push(s.clone());
        } else {
            engine.process(e.clone(), &mut sink);
        }
    }
    let mut i = 0usize;
    let mut g = c.benchmark_group("sorting");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_decision", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % scans.len();
                scans[i].clone()
            },
            |s| {
                let mut out = Vec::with_capacity(2);
                engine.process(Entity::Scan(s), &mut out);
                black_box(out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Seal operator: the story's seal events (sealed at the site, verified at the port)
    // against an engine that has seen everything before them.
    let mut engine = Engine::new(Rules::default(), h.clone(), 4);
    let mut seal_events = Vec::new();
    for (_, e) in &all {
        match e {
            Entity::Seal(_) => seal_events.push(e.clone()),
            Entity::Departure(_) => {}
            _ => engine.process(e.clone(), &mut sink),
        }
    }
    let mut g = c.benchmark_group("seals");
    g.sample_size(10);
    g.throughput(Throughput::Elements(seal_events.len() as u64));
    g.bench_function("seal_events", |b| {
        b.iter_batched(
            || (engine.clone(), seal_events.clone()),
            |(e, input)| feed_engine(e, input),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
