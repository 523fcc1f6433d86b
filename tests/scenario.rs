//! Adversarial scenarios: any byte string is read as a short story over a few keys that
//! collide on purpose (two lists on one parcel, scans before lists, seals over parcels never
//! declared, controls lifted before they exist, time standing still or jumping a day, …),
//! and [`check`] runs it through the engine three ways and asserts what must hold for every
//! input:
//!
//! * nothing panics (bad input is refused with a receipt or a dead letter, never a crash);
//! * no two different records share an identity (consumers de-duplicate by it);
//! * the records are the same at 1 and at 3 partitions (outputs do not depend on how the
//!   keyed state is split);
//! * a snapshot restored at a point the bytes choose goes on with the same records as the
//!   engine that was never stopped (a crash restarts from a checkpoint with identical
//!   outputs), and so does a copy kept up to date by incremental checkpoints (the changes
//!   since the previous one, serialized and read back) restored there.
//!
//! The rules are the defaults, with the state kept 30 days or 1 (the bytes choose: stories
//! jump 30 hours at a time, so the retention drops state mid-story).
//!
//! The integration tests run it on seeded random bytes (`scenario::` tests); `fuzz/` runs the
//! same [`check`] under libFuzzer (`cargo +nightly fuzz run engine`, see the README).

use cbec_operators::engine::{Engine, EngineChanges, EngineCut, Out};
use cbec_operators::rules::Rules;
use cbec_operators::tracked::{Cut, Incremental};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Decoded, Decoder, Entity, EventTime, Topic};
use serde_json::{Value, json};

/// Reads choices from the bytes; zeros once they run out.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn pick(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn of<'s>(&mut self, xs: &[&'s str]) -> &'s str {
        xs[self.pick(xs.len())]
    }
    fn more(&self) -> bool {
        self.at < self.data.len()
    }
}

/// One step of a story: an input message, or event time moving on.
#[derive(Clone)]
pub enum Step {
    /// A message as it would arrive on its topic, and when it was sent (Unix ms: the story's
    /// clock at that step).
    Message(Topic, Vec<u8>, i64),
    /// The watermark moves to this time.
    Advance(EventTime),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Message(t, payload, _) => write!(f, "{}: {}", t.short(), String::from_utf8_lossy(payload)),
            Step::Advance(t) => write!(f, "advance to {}", t.to_rfc3339()),
        }
    }
}

const START: i64 = 1_794_326_400_000; // 2026-11-11T00:00:00+08:00

/// The story `data` tells: up to 48 steps over three orders and parcels, two companies,
/// two vehicles and four control ids.
pub fn story(data: &[u8]) -> Vec<Step> {
    let mut b = Bytes { data, at: 0 };
    let mut now = START;
    let mut steps = Vec::new();
    while b.more() && steps.len() < 48 {
        // Time stands still, moves a second, an hour or 30 hours (past the payment wait).
        now += [0, 1_000, 3_600_000, 30 * 3_600_000][b.pick(4)];
        let t = EventTime(now);
        let (ceb, rfc) = (t.to_ceb(), t.to_rfc3339());
        let k = b.pick(3);
        let order_no = format!("O{k}");
        let lno = format!("L{}", if b.pick(4) == 0 { (k + 1) % 3 } else { k });
        let ebc = b.of(&["E0", "E1"]);
        let item = b.of(&["I0", "I1"]);
        let parcels = |b: &mut Bytes| -> Vec<String> {
            let mask = 1 + b.pick(7);
            (0..3).filter(|i| mask & (1 << i) != 0).map(|i| format!("L{i}")).collect()
        };
        let op = b.pick(14);
        if op >= 12 {
            // A path straight through (declaration, or sorting, seal and exit), so that the
            // stories reach deep states as well as odd ones.
            let at = |ms: i64| EventTime(now + ms);
            let bundle: Vec<(Topic, Value)> = if op == 12 {
                vec![
                    (
                        Topic::Goods,
                        json!({"ebcCode": ebc, "itemNo": item, "itemName": "x", "gcode": "8517130000", "gname": "x", "gmodel": "x", "unit": "011", "appType": "1", "appTime": ceb}),
                    ),
                    (
                        Topic::Orders,
                        json!({"orderNo": order_no, "orderType": "E", "ebpCode": "P1", "ebcCode": ebc, "goodsValue": "100", "freight": "10", "currency": "142", "appType": "1", "appTime": at(1).to_ceb(),
                        "items": [{"gnum": 1, "itemNo": item, "itemName": "x", "unit": "011", "currency": "142", "qty": "1", "price": "100", "totalPrice": "100"}]}),
                    ),
                    (
                        Topic::Lists,
                        json!({"orderNo": order_no, "logisticsNo": lno, "logisticsCode": "LC", "ebpCode": "P1", "ebcCode": ebc, "ownerCode": ebc,
                        "agentCode": "A1", "customsCode": "5141", "portCode": "5141", "ieDate": &ceb[..8], "statisticsFlag": b.of(&["A", "B", "B"]),
                        "tradeMode": "9610", "trafMode": "4", "country": "502", "POD": "502", "freight": "10", "insuredFee": "0", "packNo": 1,
                        "grossWeight": "1", "netWeight": "1", "appType": "1", "appStatus": "2", "appTime": at(2).to_ceb(), "copNo": "C",
                        "items": [{"gnum": 1, "itemNo": item, "gcode": "8517130000", "gname": "x", "gmodel": "x", "country": "502", "currency": "142",
                                   "qty": "1", "qty1": "1", "unit": "011", "unit1": "011", "price": "100", "totalPrice": "100"}]}),
                    ),
                    (
                        Topic::Payments,
                        json!({"orderNo": order_no, "ebpCode": "P1", "ebcCode": ebc, "payCode": "PAY1", "payName": "p", "payNo": "N1", "charge": "110", "currency": "142", "accountingDate": at(3).to_ceb()}),
                    ),
                    (
                        Topic::Waybills,
                        json!({"logisticsNo": lno, "logisticsCode": "LC", "freight": "10", "insuredFee": "0", "currency": "142", "grossWeight": "1", "packNo": 1, "goodsInfo": "x", "appTime": at(4).to_ceb()}),
                    ),
                ]
            } else {
                let seal = b.of(&["S0", "S1"]);
                vec![
                    (
                        Topic::Controls,
                        json!({"id": "VEH0", "kind": "vehicle", "target": {"vehicleNo": "V0"}, "officer": "o", "reason": "r", "time": rfc}),
                    ),
                    (
                        Topic::Arrivals,
                        json!({"customsCode": "5141", "operatorCode": "OP", "domesticTrafNo": "T", "appTime": at(1).to_ceb(), "items": [{"logisticsNo": lno}]}),
                    ),
                    (
                        Topic::Scans,
                        json!({"logisticsNo": lno, "lineId": "LINE1", "scanId": "SX", "scanTime": at(2).to_rfc3339(), "xray": "clear"}),
                    ),
                    (
                        Topic::Seals,
                        json!({"kind": "sealed", "sealNo": seal, "vehicleNo": "V0", "logisticsNos": [lno], "time": at(3).to_rfc3339()}),
                    ),
                    (
                        Topic::Seals,
                        json!({"kind": "verified", "sealNo": seal, "vehicleNo": "V0", "portCode": "5141", "intact": true, "time": at(4).to_rfc3339()}),
                    ),
                    (
                        Topic::Departures,
                        json!({"customsCode": "5141", "logisticsCode": "LC", "trafMode": "4", "voyageNo": "V", "leaveTime": at(5).to_ceb(), "items": [{"logisticsNo": lno}]}),
                    ),
                ]
            };
            now += 5;
            steps.extend(bundle.into_iter().map(|(t, v)| Step::Message(t, serde_json::to_vec(&v).expect("json"), now)));
            continue;
        }
        let (topic, v): (Topic, Value) = match op {
            0 => (
                Topic::Goods,
                json!({"ebcCode": ebc, "itemNo": item, "itemName": "x", "gcode": b.of(&["8517130000", "0101210000", "12345", "9999990000"]),
                       "gname": "x", "gmodel": "x", "unit": "011", "appType": b.of(&["1", "1", "3"]), "appTime": ceb}),
            ),
            1 => (
                Topic::Orders,
                json!({"orderNo": order_no, "orderType": "E", "ebpCode": "P1", "ebcCode": ebc, "goodsValue": b.of(&["100", "90", "0"]),
                       "freight": b.of(&["10", "0"]), "currency": b.of(&["142", "502"]), "appType": b.of(&["1", "2"]), "appTime": ceb,
                       "items": [{"gnum": 1, "itemNo": item, "itemName": "x", "unit": "011", "currency": "142", "qty": "1", "price": "100", "totalPrice": "100"}]}),
            ),
            2 => {
                let gcode = b.of(&["8517130000", "0101210000", "8517120000"]);
                (
                    Topic::Lists,
                    json!({"orderNo": order_no, "logisticsNo": lno, "logisticsCode": "LC", "ebpCode": "P1", "ebcCode": ebc, "ownerCode": ebc,
                           "agentCode": "A1", "customsCode": "5141", "portCode": "5141", "ieDate": &ceb[..8], "statisticsFlag": b.of(&["A", "B"]),
                           "tradeMode": "9610", "trafMode": "4", "country": "502", "POD": "502", "freight": "10", "insuredFee": "0", "packNo": 1,
                           "grossWeight": "1", "netWeight": "1", "appType": b.of(&["1", "2"]), "appStatus": "2", "appTime": ceb, "copNo": "C",
                           "items": [{"gnum": 1, "itemNo": item, "gcode": gcode, "gname": "x", "gmodel": "x", "country": "502", "currency": "142",
                                      "qty": "1", "qty1": "1", "unit": "011", "unit1": "011", "price": "100", "totalPrice": b.of(&["100", "90"])}]}),
                )
            }
            3 => (
                Topic::Payments,
                json!({"orderNo": order_no, "ebpCode": "P1", "ebcCode": ebc, "payCode": b.of(&["PAY1", "PAY2"]), "payName": "p",
                       "payNo": b.of(&["N1", "N2"]), "charge": b.of(&["110", "100", "0"]), "currency": b.of(&["142", "502"]), "accountingDate": ceb}),
            ),
            4 => (
                Topic::Waybills,
                json!({"logisticsNo": lno, "logisticsCode": "LC", "freight": "10", "insuredFee": "0", "currency": "142", "grossWeight": "1",
                       "packNo": 1, "goodsInfo": "x", "appTime": ceb}),
            ),
            5 => {
                let items: Vec<Value> = parcels(&mut b).into_iter().map(|l| json!({"logisticsNo": l})).collect();
                (
                    Topic::Arrivals,
                    json!({"customsCode": "5141", "operatorCode": "OP", "domesticTrafNo": "T", "appTime": ceb, "items": items}),
                )
            }
            6 => {
                let xray = b.of(&["clear", "suspect", ""]);
                let mut v = json!({"logisticsNo": lno, "lineId": "LINE1", "scanId": format!("S{}", b.pick(4)), "scanTime": rfc});
                if !xray.is_empty() {
                    v["xray"] = json!(xray);
                }
                (Topic::Scans, v)
            }
            7 => (
                Topic::Seals,
                json!({"kind": "sealed", "sealNo": b.of(&["S0", "S1"]), "vehicleNo": b.of(&["V0", "V1"]), "logisticsNos": parcels(&mut b), "time": rfc}),
            ),
            8 => (
                Topic::Seals,
                json!({"kind": "verified", "sealNo": b.of(&["S0", "S1"]), "vehicleNo": b.of(&["V0", "V1"]), "portCode": "5141",
                       "intact": b.pick(4) != 0, "time": rfc}),
            ),
            9 => {
                let items: Vec<Value> = parcels(&mut b).into_iter().map(|l| json!({"logisticsNo": l})).collect();
                (
                    Topic::Departures,
                    json!({"customsCode": "5141", "logisticsCode": "LC", "trafMode": "4", "voyageNo": "V", "leaveTime": ceb, "items": items}),
                )
            }
            10 => {
                let kind = b.of(&["control", "review", "verified", "inspection_rate", "vehicle", "lift"]);
                let target = match kind {
                    "inspection_rate" => json!({"rate": b.of(&["0", "0.5", "1"])}),
                    "vehicle" => json!({"vehicleNo": b.of(&["V0", "V1"])}),
                    "lift" => json!({"controlId": format!("C{}", b.pick(4))}),
                    _ => match b.pick(4) {
                        0 => json!({"orderNo": order_no}),
                        1 => json!({"logisticsNo": lno}),
                        2 => json!({"ebcCode": ebc}),
                        _ => json!({"gcodePrefix": b.of(&["85", "8517", "01"])}),
                    },
                };
                (
                    Topic::Controls,
                    json!({"id": format!("C{}", b.pick(4)), "kind": kind, "target": target, "officer": "o", "reason": "r", "time": rfc}),
                )
            }
            _ => {
                steps.push(Step::Advance(t));
                continue;
            }
        };
        steps.push(Step::Message(topic, serde_json::to_vec(&v).expect("json"), now));
    }
    steps
}

/// The story's entities as the engine would get them: each message decoded (one that does
/// not decode is a dead letter, not the engine's), event time moving before each entity as
/// the runtime moves it.
fn entities(steps: &[Step]) -> Vec<Result<Entity, EventTime>> {
    let mut d = Decoder::new();
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Message(topic, payload, _) => match d.decode(*topic, payload) {
                Decoded::One(Ok(e)) => Some(Ok(e)),
                _ => None,
            },
            Step::Advance(t) => Some(Err(*t)),
        })
        .collect()
}

/// How a run is interrupted.
#[derive(Clone, Copy)]
enum Restart {
    /// Never.
    No,
    /// Before input `at`, from a whole snapshot of the engine.
    Whole { at: usize },
    /// Before input `at`, from a copy kept up to date by the engine's incremental
    /// checkpoints (cut before every input `i` with `i % every == phase`, and at `at`), each
    /// cut serialized and read back as a checkpoint file holds it; a cut's entries are
    /// copied after it, `phase` of them before each input, the rest at the next cut.
    Incremental { at: usize, every: usize, phase: usize },
}

/// Brings `copy` up to date with `cut`, through its serialized form.
fn apply_cut(cut: EngineCut, copy: &mut Option<Engine>) {
    let cut = match cut {
        Cut::Changes(c) => Cut::Changes(
            serde_json::from_slice(&serde_json::to_vec(&c).expect("changes serialize")).expect("changes read back"),
        ),
        whole => whole,
    };
    cut.apply_to(copy).expect("the changes apply to the copy");
}

/// Completes the cut whose entries the engine still owes (as the runtime does before it
/// cuts again or waits for the writer) and brings `copy` up to date with it.
fn complete(e: &mut Engine, copy: &mut Option<Engine>, owed: &mut Option<EngineChanges>) {
    if let Some(mut c) = owed.take() {
        e.finish_cut(&mut c);
        apply_cut(Cut::Changes(c), copy);
    }
}

/// Completes the open cut and begins the next one: a whole one applies to `copy` at
/// once, changes are completed later (the entries copied a few per input meanwhile, or
/// before an input writes one).
fn checkpoint(e: &mut Engine, copy: &mut Option<Engine>, owed: &mut Option<EngineChanges>) {
    complete(e, copy, owed);
    match e.begin_cut() {
        Cut::Changes(c) => *owed = Some(c),
        whole => apply_cut(whole, copy),
    }
}

/// The records of `input` under `rules` at `partitions`, interrupted as `restart` says,
/// then every timer fired.
fn run(
    input: &[Result<Entity, EventTime>],
    rules: &Rules,
    partitions: usize,
    restart: Restart,
    hs: &Nomenclature,
) -> (Vec<String>, Vec<Out>) {
    let mut e = Engine::new(rules.clone(), hs.clone(), partitions);
    let mut copy: Option<Engine> = None;
    let mut owed: Option<EngineChanges> = None;
    let mut out = Vec::new();
    for (i, x) in input.iter().enumerate() {
        match restart {
            Restart::No => {}
            Restart::Whole { at } if at == i => {
                e = Engine::restore(&e.snapshot(), hs.clone()).expect("a snapshot restores");
            }
            Restart::Whole { .. } => {}
            Restart::Incremental { at, every, phase } => {
                e.copy_owed(phase);
                if i % every == phase || i == at {
                    checkpoint(&mut e, &mut copy, &mut owed);
                }
                if i == at {
                    complete(&mut e, &mut copy, &mut owed);
                    let saved = copy.as_ref().expect("a checkpoint was taken").snapshot();
                    e = Engine::restore(&saved, hs.clone()).expect("the copy restores");
                    copy = Some(e.clone());
                    e.track();
                }
            }
        }
        match x {
            Ok(entity) => {
                e.advance(entity.event_time(), &mut out);
                e.process(entity.clone(), &mut out);
            }
            Err(t) => e.advance(*t, &mut out),
        }
    }
    e.advance(EventTime::MAX, &mut out);
    (out.iter().map(|o: &Out| format!("{o:?}")).collect(), out)
}

/// Asserts that no two different records share an identity (a consumer de-duplicating by
/// identity after a restart would drop one of them); the same record twice is allowed.
fn identities_are_unique(out: &[Out], steps: &[Step]) {
    let mut seen: std::collections::HashMap<(&str, String), String> = std::collections::HashMap::new();
    for o in out {
        let key = match o {
            Out::Declared(d) => ("declared", d.invt_no.to_string()),
            Out::Receipt(r) => ("receipts", r.id.to_string()),
            Out::Return(r) => ("returns", r.id.clone()),
            Out::Channel(c) => ("channels", c.id.to_string()),
            Out::Sorting(x) => ("sorting", x.id.to_string()),
            Out::Release(r) => ("releases", r.id.clone()),
            Out::Exited(x) => ("exited", x.seq.to_string()),
        };
        let text = format!("{o:?}");
        if let Some(before) = seen.get(&key) {
            assert_eq!(before, &text, "two different records with identity {key:?} for {steps:?}");
        } else {
            seen.insert(key, text);
        }
    }
}

/// Runs the story `data` tells and asserts the properties in the module's documentation
/// (panics when one fails). Returns the story's records (at 1 partition).
pub fn check(data: &[u8], hs: &Nomenclature) -> Vec<String> {
    let steps = story(data);
    let input = entities(&steps);
    // The first bytes choose the rules (state kept 30 days or 1) and where runs restart.
    let byte = |i: usize| usize::from(data.get(i).copied().unwrap_or(0));
    let rules = Rules { state_retention_days: if byte(1) % 2 == 0 { 30 } else { 1 }, ..Rules::default() };
    let one = run(&input, &rules, 1, Restart::No, hs).0;
    // Identities: over the story with each message once (a message sent twice may get a
    // second record under the first one's identity: a duplicate for consumers to drop).
    let mut seen = std::collections::HashSet::new();
    let once: Vec<Step> = steps
        .iter()
        .filter(|s| match s {
            Step::Message(t, payload, _) => seen.insert((t.short(), payload.clone())),
            Step::Advance(_) => true,
        })
        .cloned()
        .collect();
    identities_are_unique(&run(&entities(&once), &rules, 1, Restart::No, hs).1, &once);
    let three = run(&input, &rules, 3, Restart::No, hs).0;
    assert_eq!(one, three, "records differ at 1 and 3 partitions for {steps:?}");
    if !input.is_empty() {
        let at = byte(0) % input.len();
        let whole = run(&input, &rules, 1, Restart::Whole { at }, hs).0;
        assert_eq!(one, whole, "records differ after a restore before input {at} of {steps:?}");
        let every = 1 + byte(2) % 4;
        let incremental = run(&input, &rules, 2, Restart::Incremental { at, every, phase: byte(3) % every }, hs).0;
        assert_eq!(
            one, incremental,
            "records differ after a restore from incremental checkpoints before input {at} of {steps:?}"
        );
    }
    one
}
