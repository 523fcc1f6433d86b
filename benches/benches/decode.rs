//! Decoding throughput: JSON orders with simd-json (the hot path) vs serde_json, and CEB XML
//! documents, in messages/second and bytes/second.
//!
//! Run: `cargo bench -p cbec-benches --bench decode`

use cbec_benches::order_json;
use cbec_schemas::validate::Validate;
use cbec_schemas::{Decoded, Decoder, Order, Topic, xml};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

// The allocator of the `cbec` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn samples_dir() -> std::path::PathBuf {
    std::env::var_os("CBEC_CEB_SAMPLES").map(Into::into).unwrap_or_else(|| cbec_schemas::shared_path("ceb/samples"))
}

fn bench(c: &mut Criterion) {
    let msgs: Vec<Vec<u8>> = (0..1000).map(|i| order_json(i, 1 + i % 3)).collect();
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    for (unit, tp) in [("msgs", Throughput::Elements(msgs.len() as u64)), ("bytes", Throughput::Bytes(bytes as u64))] {
        let mut g = c.benchmark_group(format!("decode_json_orders_{unit}"));
        g.throughput(tp);
        g.bench_function("simd_json", |b| {
            let mut d = Decoder::new();
            b.iter(|| {
                for m in &msgs {
                    let Decoded::One(Ok(e)) = d.decode(Topic::Orders, m) else { panic!("valid order") };
                    black_box(e);
                }
            })
        });
        g.bench_function("serde_json", |b| {
            b.iter(|| {
                for m in &msgs {
                    let o: Order = serde_json::from_slice(m).expect("valid order");
                    o.validate().expect("valid");
                    black_box(o);
                }
            })
        });
        g.finish();
    }
    let doc = std::fs::read(samples_dir().join("CEB603Message.xml")).expect("official CEB603 sample");
    let mut g = c.benchmark_group("decode_xml_ceb603");
    g.throughput(Throughput::Elements(10));
    g.bench_function("entities", |b| b.iter(|| black_box(xml::decode_xml(&doc, Some(Topic::Lists)).expect("sample"))));
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("bytes", |b| b.iter(|| black_box(xml::decode_xml(&doc, Some(Topic::Lists)).expect("sample"))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
