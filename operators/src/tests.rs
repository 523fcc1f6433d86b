//! Scenario tests (one parcel through every branch of CONTRACT §4) and properties
//! (partition independence, snapshot/restore, sampling rate, summaries).

use crate::engine::{Engine, Out};
use crate::rules::{Rules, sampled};
use crate::summarize::Summarize;
use crate::tracked::{Cut, Incremental};
use crate::{Operator, ids};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Dec, Decoded, Decoder, Entity, EventTime, Summary, Topic, status};
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;

fn ent(topic: Topic, v: serde_json::Value) -> Entity {
    match Decoder::new().decode(topic, &serde_json::to_vec(&v).unwrap()) {
        Decoded::One(Ok(e)) => e,
        other => panic!("test entity does not decode: {other:?} {v}"),
    }
}

fn hs() -> Nomenclature {
    let p = std::env::var("CBEC_HS_FILE")
        .unwrap_or_else(|_| cbec_schemas::shared_path("data/hs/harmonized-system.csv").display().to_string());
    Nomenclature::load(std::path::Path::new(&p)).expect("HS nomenclature for tests")
}

/// One parcel's story, with knobs for each branch.
#[derive(Clone)]
struct Story {
    n: usize,
    ebc: String,
    gcode: String,
    value: &'static str,
    charge: &'static str,
    pay_currency: &'static str,
    pay_ebc: Option<String>,
    flag: &'static str,
}

impl Story {
    fn new(n: usize) -> Story {
        Story {
            n,
            ebc: format!("EBC{:03}", n % 7),
            gcode: "8517130000".into(),
            value: "100",
            charge: "110",
            pay_currency: "142",
            pay_ebc: None,
            flag: "B",
        }
    }
    fn order_no(&self) -> String {
        format!("ORD{:06}", self.n)
    }
    fn lno(&self) -> String {
        format!("LP{:08}", self.n)
    }
    fn t(&self, minutes: i64) -> String {
        EventTime(EventTime::parse_ceb("20261111000000").unwrap().0 + (self.n as i64) * 1000 + minutes * 60_000)
            .to_ceb()
    }
    fn rfc(&self, minutes: i64) -> String {
        EventTime(EventTime::parse_ceb("20261111000000").unwrap().0 + (self.n as i64) * 1000 + minutes * 60_000)
            .to_rfc3339()
    }
    fn goods(&self) -> Entity {
        ent(
            Topic::Goods,
            json!({"ebcCode": self.ebc, "itemNo": format!("IT{}", self.gcode), "itemName": "phone", "gcode": self.gcode, "gname": "phone", "gmodel": "x", "unit": "011", "appType": "1", "appTime": "20261101000000"}),
        )
    }
    fn order(&self) -> Entity {
        ent(
            Topic::Orders,
            json!({"orderNo": self.order_no(), "orderType": "E", "ebpCode": "EBP1", "ebcCode": self.ebc, "goodsValue": self.value, "freight": "10", "currency": "142", "appTime": self.t(0),
            "items": [{"gnum": 1, "itemNo": format!("IT{}", self.gcode), "itemName": "phone", "unit": "011", "currency": "142", "qty": "1", "price": "100", "totalPrice": "100"}]}),
        )
    }
    fn list(&self) -> Entity {
        ent(
            Topic::Lists,
            json!({"orderNo": self.order_no(), "logisticsNo": self.lno(), "logisticsCode": "LOG1", "ebpCode": "EBP1", "ebcCode": self.ebc, "ownerCode": self.ebc, "agentCode": "AG1", "customsCode": "5141", "portCode": "5141", "ieDate": "20261111", "statisticsFlag": self.flag, "tradeMode": "9610", "trafMode": "4", "country": "USA", "POD": "USLAX", "freight": "10", "insuredFee": "0", "packNo": 1, "grossWeight": "1.2", "netWeight": "1", "appType": "1", "appStatus": "1", "appTime": self.t(1), "copNo": "C1",
            "items": [{"gnum": 1, "itemNo": format!("IT{}", self.gcode), "gcode": self.gcode, "gname": "phone", "gmodel": "x", "country": "USA", "currency": "142", "qty": "1", "qty1": "1", "unit": "011", "unit1": "011", "price": "100", "totalPrice": "100"}]}),
        )
    }
    fn payment(&self, pay_no: &str) -> Entity {
        ent(
            Topic::Payments,
            json!({"orderNo": self.order_no(), "ebpCode": "EBP1", "ebcCode": self.pay_ebc.clone().unwrap_or(self.ebc.clone()), "payCode": "PAY1", "payName": "pay", "payNo": pay_no, "charge": self.charge, "currency": self.pay_currency, "accountingDate": self.t(2)}),
        )
    }
    fn waybill(&self) -> Entity {
        ent(
            Topic::Waybills,
            json!({"logisticsNo": self.lno(), "logisticsCode": "LOG1", "freight": "10", "insuredFee": "0", "currency": "142", "grossWeight": "1.2", "packNo": 1, "goodsInfo": "phone", "appTime": self.t(30)}),
        )
    }
    fn scan(&self, id: &str, xray: Option<&str>, minutes: i64) -> Entity {
        ent(
            Topic::Scans,
            json!({"logisticsNo": self.lno(), "lineId": "L1", "scanId": id, "scanTime": self.rfc(minutes), "xray": xray}),
        )
    }
    fn happy(&self) -> Vec<Entity> {
        vec![self.order(), self.list(), self.payment("P1"), self.waybill()]
    }
}

fn control(id: &str, kind: &str, target: serde_json::Value) -> Entity {
    ent(
        Topic::Controls,
        json!({"id": id, "kind": kind, "target": target, "officer": "officer7", "reason": "test", "time": "2026-11-10T00:00:00+08:00"}),
    )
}

fn rules() -> Rules {
    Rules { inspection_rate: Dec::ZERO, ..Rules::default() }
}

fn run(engine: &mut Engine, input: Vec<Entity>) -> Vec<Out> {
    let mut out = Vec::new();
    for e in input {
        engine.process(e, &mut out);
    }
    out
}

fn ports(out: &[Out]) -> Vec<String> {
    out.iter().filter_map(|o| if let Out::Sorting(s) = o { Some(s.port.to_string()) } else { None }).collect()
}
fn statuses(out: &[Out]) -> Vec<i32> {
    out.iter().filter_map(|o| if let Out::Receipt(r) = o { Some(r.return_status) } else { None }).collect()
}
fn channel(out: &[Out]) -> (String, Vec<String>) {
    out.iter()
        .find_map(|o| {
            if let Out::Channel(c) = o {
                Some((c.channel.to_string(), c.reasons.iter().map(|r| r.code.to_string()).collect()))
            } else {
                None
            }
        })
        .expect("a channel decision")
}

/// Story `s`'s parcel from goods registration to exit: green, released, sealed, exited.
fn walk_to_exit(s: &Story) -> Vec<Entity> {
    let mut input = vec![s.goods(), control("V1", "vehicle", json!({"vehicleNo": "粤B12345"}))];
    input.extend(s.happy());
    input.push(s.scan("S1", Some("clear"), 40));
    input.push(ent(Topic::Seals, json!({"kind": "sealed", "sealNo": "SEAL1", "vehicleNo": "粤B12345", "logisticsNos": [s.lno()], "time": s.rfc(50)})));
    input.push(ent(Topic::Seals, json!({"kind": "verified", "sealNo": "SEAL1", "vehicleNo": "粤B12345", "portCode": "5141", "intact": true, "time": s.rfc(90)})));
    input.push(ent(Topic::Departures, json!({"customsCode": "5141", "logisticsCode": "LOG1", "trafMode": "4", "leaveTime": s.t(120), "items": [{"logisticsNo": s.lno()}]})));
    input
}

#[test]
fn green_parcel_walks_to_exit_and_summary() {
    let s = Story::new(1);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, walk_to_exit(&s));
    let declared: Vec<_> = out.iter().filter_map(|o| if let Out::Declared(d) = o { Some(d) } else { None }).collect();
    assert_eq!(declared.len(), 1);
    let invt = &declared[0].invt_no;
    assert!(invt.starts_with("51412026E") && invt.len() == 20, "{invt}");
    assert_eq!(declared[0].comparison, "consistent");
    assert_eq!(channel(&out), ("green".to_string(), vec![]));
    assert_eq!(ports(&out), ["release"]);
    assert_eq!(statuses(&out), [120, 120, 800, 899]);
    let verdicts: Vec<_> = out
        .iter()
        .filter_map(|o| if let Out::Release(r) = o { Some((r.stage.as_str(), r.verdict.as_str())) } else { None })
        .collect();
    assert_eq!(verdicts, [("sealed", "released"), ("port", "released")]);
    let exited: Vec<_> =
        out.iter().filter_map(|o| if let Out::Exited(x) = o { Some(x.clone()) } else { None }).collect();
    assert!(exited[0].summarizable);
    let mut sum = Summarize::default();
    let mut r = rules();
    let mut summaries: Vec<Summary> = Vec::new();
    sum.process(&mut r, exited[0].clone(), &mut summaries);
    sum.on_watermark(&mut r, EventTime::parse_rfc3339("2026-12-03T23:59:59+08:00").unwrap(), &mut summaries);
    assert!(summaries.is_empty(), "period closes only after month end + 72 h grace");
    sum.on_watermark(&mut r, EventTime::parse_rfc3339("2026-12-04T00:00:00+08:00").unwrap(), &mut summaries);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].invt_nos, vec![invt.clone()]);
    assert_eq!(summaries[0].items[0].total_price, Dec::from_int(100));
}

/// A list returned after its month's declaration was made (a second payment with another
/// `payNo` arrives after the close) is withdrawn from it: the engine says it was
/// summarizable as it last left, and summarize answers with the declaration's withdrawal,
/// whose sums with the declaration leave nothing declared. The same return before the close
/// only takes it out of the open period.
#[test]
fn a_list_returned_after_its_declaration_is_withdrawn() {
    let s = Story::new(2);
    let late_payment = |t: &str| {
        ent(
            Topic::Payments,
            json!({"orderNo": s.order_no(), "ebpCode": "EBP1", "ebcCode": s.ebc, "payCode": "PAY1", "payName": "pay", "payNo": "P2", "charge": s.charge, "currency": "142", "accountingDate": t}),
        )
    };
    let close = EventTime::parse_rfc3339("2026-12-04T00:00:00+08:00").unwrap();
    let (mut r, mut sums) = (rules(), Vec::new());
    // After the close.
    let mut e = Engine::new(rules(), hs(), 1);
    let mut sum = Summarize::default();
    let exits = |out: Vec<Out>| -> Vec<crate::engine::Exited> {
        out.into_iter().filter_map(|o| if let Out::Exited(x) = o { Some(x) } else { None }).collect()
    };
    let first = exits(run(&mut e, walk_to_exit(&s)));
    assert_eq!(first.len(), 1);
    assert!(first[0].summarizable && !first[0].was_summarizable, "a first exit was nothing before");
    sum.process(&mut r, first[0].clone(), &mut sums);
    sum.on_watermark(&mut r, close, &mut sums);
    assert_eq!(sums.len(), 1, "November declared");
    let out = run(&mut e, vec![late_payment("20261205000000")]);
    assert!(out.iter().any(|o| matches!(o, Out::Return(x) if x.reasons.iter().any(|r| r == "duplicate_payment"))));
    let again = exits(out);
    assert_eq!(again.len(), 1);
    assert!(!again[0].summarizable && again[0].was_summarizable, "it leaves the summary");
    sum.process(&mut r, again[0].clone(), &mut sums);
    assert_eq!(sums.len(), 2, "a withdrawal");
    let (d, w) = (&sums[0], &sums[1]);
    assert!(w.withdrawal && !d.withdrawal);
    assert_eq!(w.summary_id, format!("{}/w1", d.summary_id));
    assert_eq!(w.invt_nos, d.invt_nos);
    assert_eq!((w.list_count, w.total_price), (-1, Dec::from_int(-100)));
    assert_eq!(w.items.len(), d.items.len());
    for (wi, di) in w.items.iter().zip(&d.items) {
        assert_eq!((&wi.gcode, &wi.unit, &wi.currency, &wi.country), (&di.gcode, &di.unit, &di.currency, &di.country));
        assert_eq!(
            (wi.qty.add(di.qty), wi.qty1.add(di.qty1), wi.total_price.add(di.total_price)),
            (Dec::ZERO, Dec::ZERO, Dec::ZERO)
        );
        assert_eq!(wi.list_count + di.list_count, 0);
    }
    let wire = serde_json::to_value(w).unwrap();
    assert_eq!((wire["withdrawal"].as_bool(), wire["listCount"].as_i64()), (Some(true), Some(-1)));
    assert!(serde_json::to_value(d).unwrap().get("withdrawal").is_none(), "declarations look as they did");
    // Before the close: out of the open period, no record, nothing declared.
    let mut e = Engine::new(rules(), hs(), 1);
    let mut sum = Summarize::default();
    let mut sums = Vec::new();
    let mut out = run(&mut e, walk_to_exit(&s));
    out.extend(run(&mut e, vec![late_payment("20261120000000")]));
    for x in exits(out) {
        sum.process(&mut r, x, &mut sums);
    }
    assert!(sums.is_empty());
    sum.on_watermark(&mut r, close, &mut sums);
    assert!(sums.is_empty(), "the returned list is in no declaration: {sums:?}");
}

/// Whatever the order in which lists exit, are returned and become consistent again, and
/// wherever periods close and the state is restored from its cuts: once everything is
/// closed, the records net (declarations minus withdrawals) to each list that is
/// summarizable as it last left exactly once, with its amount, per declaration form; and a
/// state restored from its cuts goes on with the same records.
#[test]
fn declarations_net_of_withdrawals_cover_each_summarizable_list_once() {
    let lists: Vec<crate::engine::Exited> = story_exits().into_iter().filter(|x| x.summarizable).take(60).collect();
    for seed in 0..20u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut s, mut r) = (Summarize::default(), rules());
        let mut copy = None;
        through_file(s.cut(), &mut copy);
        let mut restored: Option<Summarize> = None;
        let (mut out, mut out_restored) = (Vec::new(), Vec::new());
        let mut last: Vec<Option<bool>> = vec![None; lists.len()];
        let close = EventTime::parse_rfc3339("2026-12-04T00:00:00+08:00").unwrap();
        let mut wm = EventTime::parse_rfc3339("2026-11-20T00:00:00+08:00").unwrap();
        for _ in 0..400 {
            let step = rng.random_range(0..20);
            if step == 0 {
                // Event time moves on: the period closes (again, for late lists) at the close.
                wm = if wm < close { close } else { EventTime(wm.0 + 3_600_000) };
                s.on_watermark(&mut r, wm, &mut out);
                if let Some(c) = &mut restored {
                    c.on_watermark(&mut r, wm, &mut out_restored);
                }
            } else if step == 1 {
                through_file(s.cut(), &mut copy);
                if restored.is_none() {
                    restored = copy.clone();
                    out_restored = out.clone();
                }
            } else {
                let i = rng.random_range(0..lists.len());
                let now = rng.random_bool(0.6);
                if last[i] == Some(true) && now {
                    continue; // consistent stays consistent: the engine sends nothing
                }
                let x = crate::engine::Exited {
                    summarizable: now,
                    was_summarizable: last[i] == Some(true),
                    ..lists[i].clone()
                };
                last[i] = Some(now);
                if let Some(c) = &mut restored {
                    c.process(&mut r, x.clone(), &mut out_restored);
                }
                s.process(&mut r, x, &mut out);
            }
        }
        s.on_watermark(&mut r, EventTime::MAX, &mut out);
        if let Some(c) = &mut restored {
            c.on_watermark(&mut r, EventTime::MAX, &mut out_restored);
            assert_eq!(out_restored, out, "seed {seed}: the restored state went on alike");
        }
        // Net lists and amounts per form.
        let mut net: BTreeMap<String, BTreeMap<String, (i64, Dec)>> = BTreeMap::new();
        for d in &out {
            let sign = if d.withdrawal { -1 } else { 1 };
            for invt in &d.invt_nos {
                let list = lists.iter().find(|x| x.invt_no.as_str() == invt).unwrap();
                let total: Dec = list.list.items.iter().map(|i| i.total_price).sum();
                let e =
                    net.entry(crate::summarize::form_of(d)).or_default().entry(invt.clone()).or_insert((0, Dec::ZERO));
                (e.0, e.1) = (e.0 + sign, if sign > 0 { e.1.add(total) } else { e.1.sub(total) });
            }
            assert_eq!(d.list_count, sign * d.invt_nos.len() as i64);
            assert_eq!(d.total_price, d.items.iter().map(|i| i.total_price).sum::<Dec>());
        }
        let got: BTreeMap<String, (i64, Dec)> =
            net.into_values().flatten().filter(|(_, (n, t))| *n != 0 || *t != Dec::ZERO).collect();
        let want: BTreeMap<String, (i64, Dec)> = lists
            .iter()
            .zip(&last)
            .filter(|(_, l)| **l == Some(true))
            .map(|(x, _)| (x.invt_no.to_string(), (1, x.list.items.iter().map(|i| i.total_price).sum())))
            .collect();
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(s.pending(), 0);
    }
}

/// Withdrawals are numbered per form and period (`…/w1`, `…/w2`); a list withdrawn and
/// then consistent again goes into a supplementary declaration and can be withdrawn from
/// that one too; a list that was not summarizable as it last left, or whose period holds
/// it still, is not withdrawn; and a copy of the state kept by its cuts numbers the next
/// withdrawal as the state itself does.
#[test]
fn withdrawals_are_numbered_per_form_and_survive_a_restore() {
    let exited: Vec<crate::engine::Exited> = story_exits().into_iter().filter(|x| x.summarizable).collect();
    let a = exited[0].clone();
    let b = exited
        .iter()
        .find(|x| {
            x.invt_no != a.invt_no
                && x.list.ebc_code == a.list.ebc_code
                && x.list.country == a.list.country
                && x.list.port_code == a.list.port_code
                && x.list.traf_mode == a.list.traf_mode
                && x.list.ie_date.period() == a.list.ie_date.period()
        })
        .expect("two lists of one form")
        .clone();
    let (mut s, mut r, mut sums) = (Summarize::default(), rules(), Vec::new());
    let mut copy = None;
    through_file(s.cut(), &mut copy);
    for x in &exited {
        s.process(&mut r, x.clone(), &mut sums);
    }
    // Returned while its period is open: out, no record.
    let gone =
        |x: &crate::engine::Exited| crate::engine::Exited { summarizable: false, was_summarizable: true, ..x.clone() };
    let c = exited.iter().find(|x| x.invt_no != a.invt_no && x.invt_no != b.invt_no).unwrap();
    s.process(&mut r, gone(c), &mut sums);
    assert!(sums.is_empty());
    s.on_watermark(&mut r, EventTime::MAX, &mut sums);
    assert!(sums.iter().all(|d| !d.invt_nos.contains(&c.invt_no.to_string())));
    let declared = sums.len();
    let mut one = |s: &mut Summarize, x: crate::engine::Exited| {
        let mut out = Vec::new();
        s.process(&mut r, x, &mut out);
        s.on_watermark(&mut r, EventTime::MAX, &mut out);
        assert!(out.len() <= 1, "{out:?}");
        out.pop()
    };
    let wa = one(&mut s, gone(&a)).expect("a withdrawn");
    assert!(wa.summary_id.ends_with("/w1") && wa.withdrawal, "{}", wa.summary_id);
    assert_eq!(wa.invt_nos, vec![a.invt_no.to_string()]);
    // Not summarizable as it last left (returned again, another reason): nothing.
    assert_eq!(one(&mut s, crate::engine::Exited { was_summarizable: false, ..gone(&a) }), None);
    // Consistent again: a supplementary declaration; returned again: withdrawn from it.
    let sup = one(&mut s, a.clone()).expect("a supplementary declaration");
    assert!(sup.summary_id.ends_with("/2") && !sup.withdrawal, "{}", sup.summary_id);
    through_file(s.cut(), &mut copy);
    let mut restored = copy.take().unwrap();
    let next = one(&mut s, gone(&b)).expect("b withdrawn");
    assert!(next.summary_id.ends_with("/w2"), "per form: {}", next.summary_id);
    assert_eq!(one(&mut restored, gone(&b)), Some(next), "the restored copy numbers alike");
    let again = one(&mut s, gone(&a)).expect("a withdrawn from its supplementary declaration");
    assert!(again.summary_id.ends_with("/w3"), "{}", again.summary_id);
    assert_eq!(sums.len(), declared);
}

#[test]
fn order_number_comparison_returns_every_failing_reason() {
    let cases: Vec<(Story, Vec<&str>)> = vec![
        (Story { value: "90", ..Story::new(2) }, vec!["amount_mismatch"]),
        (Story { charge: "109.99", ..Story::new(3) }, vec!["amount_mismatch"]),
        (Story { pay_currency: "502", ..Story::new(4) }, vec!["currency_mismatch"]),
        (Story { pay_ebc: Some("OTHER".into()), ..Story::new(5) }, vec!["ebc_mismatch"]),
        (
            Story { pay_ebc: Some("OTHER".into()), pay_currency: "502", ..Story::new(6) },
            vec!["currency_mismatch", "ebc_mismatch"],
        ),
    ];
    for (s, want) in cases {
        let mut e = Engine::new(rules(), hs(), 1);
        let out = run(&mut e, s.happy());
        let returns: Vec<_> =
            out.iter().filter_map(|o| if let Out::Return(r) = o { Some(r.reasons.clone()) } else { None }).collect();
        assert_eq!(returns, vec![want.iter().map(|x| x.to_string()).collect::<Vec<_>>()], "story {}", s.n);
        let out2 = run(&mut e, vec![s.scan("S", None, 40)]);
        assert_eq!(ports(&out2), ["hold"], "a returned list is held at the sorting line");
    }
    // Duplicate payment, and a list whose payment never comes: returned after the wait.
    let s = Story::new(7);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, vec![s.order(), s.list(), s.payment("P1"), s.payment("P2")]);
    assert!(out.iter().any(|o| matches!(o, Out::Return(r) if r.reasons == ["duplicate_payment"])));
    let s = Story::new(8);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.order(), s.list()]);
    assert!(!out.iter().any(|o| matches!(o, Out::Return(_))), "no return before the wait is over");
    let list_time = EventTime::parse_ceb(&s.t(1)).unwrap();
    e.advance(list_time.plus_ms(24 * 3_600_000 - 1), &mut out);
    assert!(!out.iter().any(|o| matches!(o, Out::Return(_))));
    e.advance(list_time.plus_ms(24 * 3_600_000), &mut out);
    let r: Vec<_> = out.iter().filter_map(|o| if let Out::Return(r) = o { Some(r) } else { None }).collect();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].reasons, ["payment_missing"]);
    assert_eq!(r[0].time, list_time.plus_ms(24 * 3_600_000), "stamped with the event time of the timer");
    // A later correcting payment clears the return.
    let out = run(&mut e, vec![s.payment("P9")]);
    assert!(out.iter().any(|o| matches!(o, Out::Return(r) if r.cleared && r.reasons.is_empty())));
}

/// The receipts that say a declared list's comparison became consistent after its
/// declaration, as (`id`, `payCode`).
fn consistent_after(out: &[Out]) -> Vec<(String, Option<String>)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Receipt(r)
                if r.return_status == status::ACCEPTED && r.return_info.contains("comparison consistent") =>
            {
                Some((r.id.to_string(), r.pay_code.as_deref().map(String::from)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_comparison_concluded_after_declaration_names_the_payment_firm() {
    let declared = |out: &[Out]| -> Vec<(String, String, Option<String>)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Declared(d) => {
                    Some((d.invt_no.to_string(), d.comparison.to_string(), d.pay_code.as_deref().map(String::from)))
                }
                _ => None,
            })
            .collect()
    };
    // Paid before collection: the declared list names the firm; no second word on it.
    let s = Story::new(11);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, s.happy());
    let d = declared(&out);
    assert_eq!((d.len(), d[0].1.as_str(), d[0].2.as_deref()), (1, "consistent", Some("PAY1")));
    assert!(consistent_after(&out).is_empty(), "{out:?}");
    // Paid after collection: declared pending with no firm; the payment's arrival says
    // consistent, with the firm, under an identity of its own.
    let s = Story::new(12);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, vec![s.order(), s.list(), s.waybill()]);
    let d = declared(&out);
    assert_eq!((d.len(), d[0].1.as_str(), d[0].2.as_deref()), (1, "pending", None));
    assert!(consistent_after(&out).is_empty());
    let out = run(&mut e, vec![s.payment("P1")]);
    let paid_at = EventTime::parse_ceb(&s.t(2)).unwrap().0;
    assert_eq!(
        consistent_after(&out),
        vec![(format!("{}/120/{paid_at}/{}/0", d[0].0, s.order_no()), Some("PAY1".to_string()))]
    );
    // The same payment again changes nothing.
    assert!(consistent_after(&run(&mut e, vec![s.payment("P1")])).is_empty());
    // Returned for a missing payment after the wait, then cleared by one: said again.
    let s = Story::new(13);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.order(), s.list(), s.waybill()]);
    e.advance(EventTime::parse_ceb(&s.t(1)).unwrap().plus_ms(24 * 3_600_000), &mut out);
    assert!(out.iter().any(|o| matches!(o, Out::Return(r) if r.reasons == ["payment_missing"])));
    let out = run(&mut e, vec![s.payment("P9")]);
    assert!(out.iter().any(|o| matches!(o, Out::Return(r) if r.cleared)));
    assert_eq!(consistent_after(&out).iter().map(|x| x.1.as_deref()).collect::<Vec<_>>(), [Some("PAY1")]);
    // Consistent before collection but not yet declared: the declaration says it all.
    let s = Story::new(14);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.order(), s.list(), s.payment("P1")]);
    out.extend(run(&mut e, vec![s.waybill()]));
    assert_eq!(declared(&out)[0].2.as_deref(), Some("PAY1"));
    assert!(consistent_after(&out).is_empty());
}

#[test]
fn red_channel_reasons_and_sorting_ports() {
    // Certificate-related goods: certificate port until verified, then release.
    let s = Story { gcode: "3004900000".into(), ..Story::new(10) };
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.goods()]);
    out.extend(run(&mut e, s.happy()));
    assert_eq!(channel(&out), ("red".into(), vec!["certificate_required".into()]));
    let out = run(&mut e, vec![s.scan("S1", None, 40)]);
    assert_eq!(ports(&out), ["certificate"]);
    let out = run(&mut e, vec![control("C9", "verified", json!({"logisticsNo": s.lno()})), s.scan("S2", None, 41)]);
    assert_eq!(ports(&out), ["release"]);
    let Out::Sorting(d) = out.iter().find(|o| matches!(o, Out::Sorting(_))).unwrap() else { unreachable!() };
    assert_eq!(d.control_ids, ["C9"], "the applied control is visible by id");
    assert_eq!(statuses(&out), [399, 800]);

    // Manual control on the company: red, inspect; X-ray suspect on a green list: inspect.
    let s = Story::new(11);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.goods(), control("M1", "control", json!({"ebcCode": s.ebc}))]);
    out.extend(run(&mut e, s.happy()));
    out.extend(run(&mut e, vec![s.scan("S1", None, 40)]));
    assert_eq!(channel(&out).1, ["manual_control"]);
    assert_eq!(ports(&out), ["inspect"]);
    assert!(statuses(&out).contains(&500));

    // Manual control on a commodity group (gcode prefix): the list with such goods is red
    // and inspected, a list with other goods is not.
    for (n, prefix, channel_is, port) in [(18, "8517", "red", "inspect"), (19, "6109", "green", "release")] {
        let s = Story::new(n);
        let mut e = Engine::new(rules(), hs(), 1);
        let mut out = run(&mut e, vec![s.goods(), control("G1", "control", json!({"gcodePrefix": prefix}))]);
        out.extend(run(&mut e, s.happy()));
        out.extend(run(&mut e, vec![s.scan("S1", None, 40)]));
        assert_eq!(channel(&out).0, channel_is, "prefix {prefix}");
        assert_eq!(ports(&out), [port], "prefix {prefix}");
    }
    // ... and a control on the group placed after the list was declared green holds its
    // parcels at the sorting line.
    let s = Story::new(20);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.goods()]);
    out.extend(run(&mut e, s.happy()));
    assert_eq!(channel(&out).0, "green");
    let out = run(&mut e, vec![control("G2", "control", json!({"gcodePrefix": "85171"})), s.scan("S1", None, 40)]);
    assert_eq!(ports(&out), ["inspect"]);

    let s = Story::new(12);
    let mut e = Engine::new(rules(), hs(), 1);
    let mut out = run(&mut e, vec![s.goods()]);
    out.extend(run(&mut e, s.happy()));
    out.extend(run(&mut e, vec![s.scan("S1", Some("suspect"), 40)]));
    assert_eq!(channel(&out).0, "green");
    assert_eq!(ports(&out), ["inspect"]);

    // A monitoring post's review moves a green list to inspection before it leaves the line;
    // after release a review no longer applies. A lift cancels a control.
    let s = Story::new(13);
    let mut e = Engine::new(rules(), hs(), 1);
    run(&mut e, vec![s.goods()]);
    run(&mut e, s.happy());
    let out = run(&mut e, vec![control("R1", "review", json!({"orderNo": s.order_no()})), s.scan("S1", None, 40)]);
    assert_eq!(ports(&out), ["inspect"]);
    let out = run(&mut e, vec![control("L1", "lift", json!({"controlId": "R1"})), s.scan("S2", None, 41)]);
    assert_eq!(ports(&out), ["release"]);

    // Unregistered goods and a gcode differing from the registration.
    let s = Story::new(14);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, s.happy());
    assert_eq!(channel(&out).1, ["goods_unregistered"]);
    let s2 = Story { gcode: "8517620000".into(), ..Story::new(15) };
    let mut e = Engine::new(rules(), hs(), 1);
    let mut g = s2.goods();
    if let Entity::Goods(x) = &mut g {
        x.gcode = "8517130000".into();
    }
    let mut out = run(&mut e, vec![g]);
    out.extend(run(&mut e, s2.happy()));
    assert_eq!(channel(&out).1, ["hs_mismatch"]);

    // Sampling at rate 1: every list is red with `sampled`.
    let s = Story::new(16);
    let mut e = Engine::new(Rules { inspection_rate: Dec::from_int(1), ..Rules::default() }, hs(), 1);
    let mut out = run(&mut e, vec![s.goods()]);
    out.extend(run(&mut e, s.happy()));
    assert_eq!(channel(&out).1, ["sampled"]);
    // Tax-related goods are flagged.
    let s = Story { gcode: "7202110000".into(), ..Story::new(17) };
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, s.happy());
    assert!(out.iter().any(|o| matches!(o, Out::Channel(c) if c.tax_related)));
}

#[test]
fn goods_registration_is_reviewed_against_the_nomenclature() {
    let mut e = Engine::new(rules(), hs(), 1);
    let mut s = Story::new(20);
    let ok = run(&mut e, vec![s.goods()]);
    s.gcode = "0101990000".into();
    let unknown = run(&mut e, vec![s.goods()]);
    s.gcode = "85171".into();
    let malformed = run(&mut e, vec![s.goods()]);
    assert_eq!((statuses(&ok), statuses(&unknown), statuses(&malformed)), (vec![120], vec![-302], vec![-301]));
}

#[test]
fn declared_lists_are_immutable() {
    let s = Story::new(30);
    let mut e = Engine::new(rules(), hs(), 1);
    let out = run(&mut e, s.happy());
    assert_eq!(out.iter().filter(|o| matches!(o, Out::Declared(_))).count(), 1);
    let again = run(&mut e, vec![s.list(), s.waybill()]);
    assert!(again.is_empty(), "identical redelivery is idempotent: {again:?}");
    let mut changed = s.list();
    if let Entity::List(l) = &mut changed {
        l.gross_weight = Dec::from_int(9);
    }
    let out = run(&mut e, vec![changed]);
    assert_eq!(statuses(&out), [-401]);
    assert!(!out.iter().any(|o| matches!(o, Out::Declared(_))));
}

#[test]
fn holds_and_refusals() {
    let s = Story::new(40);
    let mut e = Engine::new(rules(), hs(), 1);
    assert_eq!(ports(&run(&mut e, vec![s.scan("S0", None, 0)])), ["hold"]);
    run(&mut e, vec![s.goods()]);
    run(&mut e, s.happy());
    // Exit without port release is an error receipt.
    let out = run(
        &mut e,
        vec![ent(
            Topic::Departures,
            json!({"customsCode": "5141", "logisticsCode": "LOG1", "trafMode": "4", "leaveTime": s.t(60), "items": [{"logisticsNo": s.lno()}]}),
        )],
    );
    assert_eq!(statuses(&out), [-501]);
    // A seal over a parcel not released at the site, on an unfiled vehicle, is held; so is
    // everything under it at the port; an unknown seal too.
    let out = run(
        &mut e,
        vec![
            ent(
                Topic::Seals,
                json!({"kind": "sealed", "sealNo": "S9", "vehicleNo": "V9", "logisticsNos": [s.lno()], "time": s.rfc(50)}),
            ),
            ent(
                Topic::Seals,
                json!({"kind": "verified", "sealNo": "S9", "vehicleNo": "V9", "portCode": "5141", "intact": true, "time": s.rfc(70)}),
            ),
            ent(
                Topic::Seals,
                json!({"kind": "verified", "sealNo": "NOPE", "vehicleNo": "V9", "portCode": "5141", "intact": true, "time": s.rfc(70)}),
            ),
        ],
    );
    let v: Vec<_> = out
        .iter()
        .filter_map(|o| if let Out::Release(r) = o { Some((r.verdict.clone(), r.reasons.len())) } else { None })
        .collect();
    assert_eq!(v, [("held".to_string(), 2), ("held".to_string(), 1), ("held".to_string(), 1)]);
    // A broken seal holds released parcels.
    let s = Story::new(41);
    let mut e = Engine::new(rules(), hs(), 1);
    run(&mut e, vec![s.goods(), control("V1", "vehicle", json!({"vehicleNo": "V1"}))]);
    run(&mut e, s.happy());
    run(&mut e, vec![s.scan("S", None, 40)]);
    let out = run(
        &mut e,
        vec![
            ent(
                Topic::Seals,
                json!({"kind": "sealed", "sealNo": "S1", "vehicleNo": "V1", "logisticsNos": [s.lno()], "time": s.rfc(50)}),
            ),
            ent(
                Topic::Seals,
                json!({"kind": "verified", "sealNo": "S1", "vehicleNo": "V1", "portCode": "5141", "intact": false, "time": s.rfc(70)}),
            ),
        ],
    );
    let v: Vec<_> =
        out.iter().filter_map(|o| if let Out::Release(r) = o { Some(r.verdict.clone()) } else { None }).collect();
    assert_eq!(v, ["released", "held"]);
}

/// A mixed story of `n` parcels in event-time order, with some of every branch.
fn story(n: usize, seed: u64) -> Vec<Entity> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![
        control("V1", "vehicle", json!({"vehicleNo": "V1"})),
        control("M1", "control", json!({"ebcCode": "EBC003"})),
    ];
    let mut by_time: Vec<(i64, usize, Entity)> = Vec::new();
    let mut seq = 0usize;
    let mut push = |t: i64, e: Entity| {
        seq += 1;
        by_time.push((t, seq, e));
    };
    for i in 0..n {
        let mut s = Story::new(i);
        if rng.random::<f64>() < 0.1 {
            s.value = "90";
        }
        if rng.random::<f64>() < 0.1 {
            s.flag = "A";
        }
        let base = i as i64 * 1000;
        push(base, s.goods());
        push(base + 1, s.order());
        push(base + 2, s.list());
        if rng.random::<f64>() < 0.95 {
            push(base + 3, s.payment("P1"));
        }
        push(base + 4, s.waybill());
        push(base + 5, s.scan("S1", if rng.random::<f64>() < 0.05 { Some("suspect") } else { Some("clear") }, 40));
        push(
            base + 6,
            ent(
                Topic::Seals,
                json!({"kind": "sealed", "sealNo": format!("SL{i}"), "vehicleNo": "V1", "logisticsNos": [s.lno()], "time": s.rfc(50)}),
            ),
        );
        push(
            base + 7,
            ent(
                Topic::Seals,
                json!({"kind": "verified", "sealNo": format!("SL{i}"), "vehicleNo": "V1", "portCode": "5141", "intact": true, "time": s.rfc(60)}),
            ),
        );
        push(
            base + 8,
            ent(
                Topic::Departures,
                json!({"customsCode": "5141", "logisticsCode": "LOG1", "trafMode": "4", "leaveTime": s.t(70), "items": [{"logisticsNo": s.lno()}]}),
            ),
        );
    }
    by_time.sort_by_key(|(t, s, _)| (*t, *s));
    v.extend(by_time.into_iter().map(|(_, _, e)| e));
    v
}

fn run_all(parts: usize, input: &[Entity], snapshot_at: Option<usize>) -> (Vec<String>, Vec<Summary>) {
    let mut e = Engine::new(Rules::default(), hs(), parts);
    let mut out = Vec::new();
    for (i, x) in input.iter().enumerate() {
        if snapshot_at == Some(i) {
            e = Engine::restore(&e.snapshot(), hs()).unwrap();
        }
        e.process(x.clone(), &mut out);
    }
    e.advance(EventTime::MAX, &mut out);
    let mut sum = Summarize::default();
    let mut r = Rules::default();
    let mut summaries = Vec::new();
    let mut lines = Vec::new();
    for o in out {
        match o {
            Out::Exited(x) => {
                lines.push(format!("Exited summarizable={}", x.summarizable));
                sum.process(&mut r, x, &mut summaries)
            }
            other => lines.push(format!("{other:?}")),
        }
    }
    sum.on_watermark(&mut r, EventTime::MAX, &mut summaries);
    (lines, summaries)
}

#[test]
fn same_output_at_1_2_and_4_partitions_and_after_restore() {
    let input = story(300, 7);
    let (one, s1) = run_all(1, &input, None);
    assert!(one.len() > 300 * 5, "{}", one.len());
    for parts in [2, 4] {
        let (x, s) = run_all(parts, &input, None);
        assert!(x == one, "partitions {parts}: outputs differ");
        assert_eq!(s, s1);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for _ in 0..3 {
        let at = rng.random_range(0..input.len());
        let (x, s) = run_all(2, &input, Some(at));
        assert!(x == one, "snapshot + restore at {at}: outputs differ");
        assert_eq!(s, s1);
    }
}

/// Applies `f` to the first value under `key` anywhere in `v`; true when there was one.
fn edit_first(v: &mut serde_json::Value, key: &str, f: &dyn Fn(&mut serde_json::Value)) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(x) = m.get_mut(key).filter(|x| !x.is_null()) {
                f(x);
                return true;
            }
            m.values_mut().any(|x| edit_first(x, key, f))
        }
        serde_json::Value::Array(a) => a.iter_mut().any(|x| edit_first(x, key, f)),
        _ => false,
    }
}

#[test]
fn a_damaged_snapshot_of_compact_state_is_refused() {
    let input = story(50, 5);
    let mut e = Engine::new(Rules::default(), hs(), 2);
    let mut out = Vec::new();
    for x in &input[..input.len() / 2] {
        e.process(x.clone(), &mut out);
    }
    let good: serde_json::Value = serde_json::from_slice(&e.snapshot()).unwrap();
    assert!(Engine::restore(&serde_json::to_vec(&good).unwrap(), hs()).is_ok());
    let cut = |x: &mut serde_json::Value| {
        let s = x.as_str().expect("hex").to_string();
        *x = serde_json::Value::String(s[..s.len() - 2].to_string());
    };
    // A stored list (clear) and an order's facts (declare), each one byte short.
    for key in ["list", "facts"] {
        let mut bad = good.clone();
        assert!(edit_first(&mut bad, key, &cut), "no {key} in the snapshot");
        let err = Engine::restore(&serde_json::to_vec(&bad).unwrap(), hs()).err();
        assert!(err.is_some_and(|e| e.to_string().contains("damaged")), "{key}");
    }
    // Code tables emptied: the ids in the buffers no longer resolve.
    let mut bad = good.clone();
    assert!(edit_first(&mut bad, "codes", &|x| *x = serde_json::json!([])));
    assert!(Engine::restore(&serde_json::to_vec(&bad).unwrap(), hs()).is_err());
}

#[test]
fn summaries_cover_each_exited_list_once_with_exact_sums() {
    let input = story(500, 11);
    let (lines, summaries) = run_all(3, &input, None);
    assert!(!summaries.is_empty());
    let mut seen = std::collections::HashSet::new();
    for s in &summaries {
        for i in &s.invt_nos {
            assert!(seen.insert(i.clone()), "{i} in two declarations");
        }
        let items: Dec = s.items.iter().map(|i| i.total_price).sum();
        assert_eq!(items, s.total_price);
        // Each list of this story has one item of 100.
        assert_eq!(s.total_price, Dec::from_int(100 * s.list_count));
    }
    // Exactly the consistent B lists that exited (amount mismatches are returned; A is not summarized).
    let returned = lines.iter().filter(|l| l.starts_with("Return(")).count();
    assert!(returned > 0);
    let summarizable = lines.iter().filter(|l| *l == "Exited summarizable=true").count();
    assert_eq!(seen.len(), summarizable);
    assert!(summarizable > 200 && summarizable < 500, "{summarizable}");
}

/// The Arrow grouping of a period's lists equals a plain grouping of the same lists:
/// companies, owners, destinations and ports in declarations, items merged by (`gcode`,
/// unit, currency, country) across lists and within one list, sums and list counts per item
/// row and per declaration, both in key order.
#[test]
fn summarize_batch_equals_a_plain_grouping() {
    use crate::engine::Exited;
    use crate::summarize::{rows_batch, summarize_batch};
    use std::collections::{BTreeMap, BTreeSet};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let pick = |rng: &mut rand::rngs::StdRng, v: &[&'static str]| v[rng.random_range(0..v.len())];
    let mut lists = Vec::new();
    for n in 0..400u32 {
        // A story's list, its declaration keys and items varied.
        let Entity::List(mut l) = Story::new(n as usize).list() else { panic!("not a list") };
        l.ebc_code = pick(&mut rng, &["EBC1", "EBC2", "EBC10"]).into();
        l.owner_code = pick(&mut rng, &["OWN1", "OWN2"]).into();
        l.port_code = pick(&mut rng, &["5141", "5100"]).into();
        l.traf_mode = pick(&mut rng, &["4", "5"]).into();
        l.country = pick(&mut rng, &["USA", "GBR"]).into();
        let item = l.items[0].clone();
        l.items = (0..rng.random_range(1..4))
            .map(|_| {
                let qty = rng.random_range(1..5i64);
                let mut it = item.clone();
                it.gcode = pick(&mut rng, &["8517130000", "6109100000", "9503000000"]).into();
                it.country = pick(&mut rng, &["USA", "DEU"]).into();
                it.currency = pick(&mut rng, &["142", "502"]).into();
                it.unit = pick(&mut rng, &["011", "035"]).into();
                (it.qty, it.qty1) = (Dec::from_int(qty), Dec::from_int(qty));
                it.total_price = Dec::parse(&format!("{}.25", 10 * qty)).unwrap();
                it
            })
            .collect();
        lists.push(Exited {
            invt_no: format!("51412026E{n:011}").into(),
            summarizable: true,
            was_summarizable: false,
            list: (*l).into(),
            seq: n as u64,
        });
    }
    for flag in [1u8, 2] {
        let refs: Vec<&Exited> = lists.iter().collect();
        let got = summarize_batch(&rows_batch(&refs, flag), 202611, |_| 1);
        // Declaration key → item key → (qty, qty1, total, lists); declaration → lists.
        type Sums = (Dec, Dec, Dec, BTreeSet<String>);
        let mut want: BTreeMap<Vec<String>, BTreeMap<Vec<String>, Sums>> = BTreeMap::new();
        for e in &lists {
            let l = &e.list;
            let owner = if flag == 2 { l.owner_code.to_string() } else { String::new() };
            let head = vec![
                l.ebc_code.to_string(),
                owner,
                l.country.to_string(),
                l.port_code.to_string(),
                l.traf_mode.to_string(),
            ];
            for it in &l.items {
                let key =
                    vec![it.gcode.to_string(), it.unit.to_string(), it.currency.to_string(), it.country.to_string()];
                let row = want.entry(head.clone()).or_default().entry(key).or_default();
                row.0 = [row.0, it.qty].into_iter().sum();
                row.1 = [row.1, it.qty1].into_iter().sum();
                row.2 = [row.2, it.total_price].into_iter().sum();
                row.3.insert(e.invt_no.to_string());
            }
        }
        assert_eq!(got.len(), want.len(), "flag {flag}: declarations");
        for (s, (head, rows)) in got.iter().zip(&want) {
            assert_eq!(s.summary_id, format!("202611-{}", head.join("-")));
            let lists: BTreeSet<String> = rows.values().flat_map(|r| r.3.iter().cloned()).collect();
            assert_eq!(s.invt_nos, lists.into_iter().collect::<Vec<_>>());
            assert_eq!(s.list_count as usize, s.invt_nos.len());
            assert_eq!(s.items.len(), rows.len(), "{}", s.summary_id);
            for (g, (item, (key, r))) in s.items.iter().zip(rows).enumerate() {
                assert_eq!(item.gnum as usize, g + 1);
                assert_eq!(
                    [&item.gcode, &item.unit, &item.currency, &item.country].map(String::as_str),
                    [&key[0], &key[1], &key[2], &key[3]].map(String::as_str)
                );
                assert_eq!(
                    (item.qty, item.qty1, item.total_price, item.list_count as usize),
                    (r.0, r.1, r.2, r.3.len())
                );
            }
            assert_eq!(s.total_price, rows.values().map(|r| r.2).sum::<Dec>());
        }
    }
}

#[test]
fn sampling_rate_is_met_reproducible_and_keyed() {
    let n = 100_000u32;
    for rate in ["0.01", "0.05", "0.20"] {
        let r = Dec::parse(rate).unwrap();
        let p = r.scaled() as f64 / 100_000.0;
        let hits = (0..n).filter(|i| sampled("key-A", &format!("51412026E{i:011}"), r)).count() as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((hits - n as f64 * p).abs() <= 3.0 * sigma, "rate {rate}: {hits} hits");
    }
    let r = Dec::parse("0.05").unwrap();
    let a: Vec<bool> = (0..5000).map(|i| sampled("key-A", &format!("I{i}"), r)).collect();
    let a2: Vec<bool> = (0..5000).map(|i| sampled("key-A", &format!("I{i}"), r)).collect();
    let b: Vec<bool> = (0..5000).map(|i| sampled("key-B", &format!("I{i}"), r)).collect();
    assert_eq!(a, a2);
    assert_ne!(a, b);
}

#[test]
fn invt_numbers_are_unique_over_a_million_lists() {
    let mut used = std::collections::HashSet::new();
    let mut probes = 0;
    for i in 0..1_000_000u32 {
        let l = format!("LP{i:010}");
        let mut attempt = 0;
        let serial = loop {
            let s = ids::invt_serial(0, "5141", 2026, &l, attempt);
            if used.insert(s) {
                break s;
            }
            attempt += 1;
            probes += 1;
        };
        let invt = ids::invt_no("5141", 2026, serial);
        assert_eq!(invt.len(), 20);
    }
    assert_eq!(used.len(), 1_000_000);
    assert!(probes < 1000, "{probes}");
}

#[test]
fn rules_parse_from_toml_with_defaults() {
    let r = Rules::from_toml("inspection_rate = \"0.1\"\nsummary_flag = 2\n").unwrap();
    assert_eq!(r.inspection_rate, Dec::parse("0.1").unwrap());
    assert_eq!(r.payment_wait_hours, 24);
    assert!(Rules::from_toml("nope = 1").is_err(), "unknown fields are refused");
    let mut r = Rules::default();
    r.merge_tariff("hscode_prefix,licence,export_duty\n2903,L1,0\n2601,,0.2\n").unwrap();
    assert_eq!((r.certificate_rule("2903000000"), r.tax_rule("2601000000")), (Some("2903"), Some("2601")));
}

/// The same story with the parcels' events interleaved differently (each parcel's own
/// events keep their order; registrations and standing controls come first) gives the same
/// records.
#[test]
fn shuffling_within_per_key_order_gives_the_same_records() {
    fn stories(n: usize, seed: u64) -> (Vec<Entity>, Vec<Vec<Entity>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let head = vec![
            control("V1", "vehicle", json!({"vehicleNo": "V1"})),
            control("M1", "control", json!({"ebcCode": "EBC003"})),
        ];
        let mut goods = Vec::new();
        let mut per_parcel = Vec::new();
        for i in 0..n {
            let mut s = Story::new(i);
            if rng.random::<f64>() < 0.1 {
                s.value = "90";
            }
            goods.push(s.goods());
            let mut v = vec![s.order(), s.list()];
            if rng.random::<f64>() < 0.9 {
                v.push(s.payment("P1"));
            }
            v.push(s.waybill());
            v.push(s.scan("S1", Some("clear"), 40));
            v.push(ent(Topic::Seals, json!({"kind": "sealed", "sealNo": format!("SL{i}"), "vehicleNo": "V1", "logisticsNos": [s.lno()], "time": s.rfc(50)})));
            v.push(ent(Topic::Seals, json!({"kind": "verified", "sealNo": format!("SL{i}"), "vehicleNo": "V1", "portCode": "5141", "intact": true, "time": s.rfc(60)})));
            v.push(ent(Topic::Departures, json!({"customsCode": "5141", "logisticsCode": "LOG1", "trafMode": "4", "leaveTime": s.t(70), "items": [{"logisticsNo": s.lno()}]})));
            per_parcel.push(v);
        }
        let mut first = head;
        first.extend(goods);
        (first, per_parcel)
    }
    fn interleave(first: &[Entity], parcels: &[Vec<Entity>], seed: Option<u64>) -> Vec<Entity> {
        let mut out = first.to_vec();
        let mut cursors = vec![0usize; parcels.len()];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.unwrap_or(0));
        loop {
            let open: Vec<usize> = (0..parcels.len()).filter(|p| cursors[*p] < parcels[*p].len()).collect();
            if open.is_empty() {
                return out;
            }
            let p = match seed {
                Some(_) => open[rng.random_range(0..open.len())],
                None => open[0],
            };
            out.push(parcels[p][cursors[p]].clone());
            cursors[p] += 1;
        }
    }
    let (first, parcels) = stories(120, 3);
    let sorted = |input: Vec<Entity>| {
        let (mut lines, summaries) = run_all(2, &input, None);
        lines.sort();
        (lines, summaries)
    };
    let base = sorted(interleave(&first, &parcels, None));
    assert!(base.0.len() > 120 * 5);
    for seed in [1, 2, 3] {
        let other = sorted(interleave(&first, &parcels, Some(seed)));
        assert!(other.0 == base.0, "shuffle {seed}: records differ");
        assert_eq!(other.1, base.1, "shuffle {seed}: summaries differ");
    }
}

#[test]
fn sizing_the_state_up_front_changes_no_output() {
    let input = story(200, 5);
    let (plain, _) = run_all(2, &input, None);
    let mut e = Engine::new(Rules::default(), hs(), 2);
    e.reserve(10_000);
    let mut out = Vec::new();
    for x in &input {
        e.process(x.clone(), &mut out);
    }
    e.advance(EventTime::MAX, &mut out);
    let lines: Vec<String> = out
        .iter()
        .map(|o| match o {
            Out::Exited(x) => format!("Exited summarizable={}", x.summarizable),
            other => format!("{other:?}"),
        })
        .collect();
    assert!(lines.len() > 200 * 5);
    assert_eq!(lines, plain);
}

#[test]
fn return_reasons_are_a_set_listed_and_serialized_in_name_order() {
    use crate::declare::Reasons;
    let mut r = Reasons::default();
    for x in [Reasons::PAYMENT_MISSING, Reasons::AMOUNT_MISMATCH, Reasons::EBC_MISMATCH, Reasons::AMOUNT_MISMATCH] {
        r.insert(x);
    }
    assert_eq!(r.to_vec(), ["amount_mismatch", "ebc_mismatch", "payment_missing"]);
    assert_eq!(r.to_string(), "amount_mismatch,ebc_mismatch,payment_missing");
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, r#"["amount_mismatch","ebc_mismatch","payment_missing"]"#);
    assert_eq!(serde_json::from_str::<Reasons>(&json).unwrap(), r);
    assert!(serde_json::from_str::<Reasons>(r#"["no_such_reason"]"#).is_err());
    let mut names = Reasons::NAMES.to_vec();
    names.sort_unstable();
    assert_eq!(names, Reasons::NAMES, "bit order is name order");
}

/// Feeds `input` the way the runtime does: event time advanced to just before each entity.
fn feed(e: &mut Engine, input: Vec<Entity>) -> Vec<Out> {
    let mut out = Vec::new();
    for x in input {
        e.advance(EventTime(x.event_time().0 - 1), &mut out);
        e.process(x, &mut out);
    }
    out
}

/// `x` with its event time moved to `t` (a later message about the same key).
fn at(mut x: Entity, t: &str) -> Entity {
    let t = EventTime::parse_ceb(t).unwrap();
    match &mut x {
        Entity::Waybill(w) => w.app_time = t,
        Entity::List(l) => l.app_time = t,
        other => panic!("not retimed here: {other:?}"),
    }
    x
}

/// A parcel's, its order's and its seal's state is dropped once event time is more than
/// the retention past the last message about them; a later message starts afresh: a second
/// waybill is then no refused second activation, a seal is unknown. Kept forever with 0.
#[test]
fn state_past_the_retention_is_dropped_and_a_later_message_starts_afresh() {
    let s = Story::new(50);
    let later = |minutes: i64| s.t(minutes);
    let days = |d: i64| d * 24 * 60;
    let outcome = |retention_days: u32| {
        let mut e = Engine::new(Rules { state_retention_days: retention_days, ..rules() }, hs(), 2);
        let mut input = s.happy();
        input.push(ent(
            Topic::Seals,
            json!({"kind": "sealed", "sealNo": "SEAL1", "vehicleNo": "V1", "logisticsNos": [s.lno()], "time": s.rfc(50)}),
        ));
        let out = feed(&mut e, input);
        assert_eq!(out.iter().filter(|o| matches!(o, Out::Declared(_))).count(), 1);
        assert_eq!(e.keys(), (1, 1));
        let mut none = Vec::new();
        e.advance(EventTime::parse_ceb(&later(days(1))).unwrap(), &mut none);
        let kept_a_day = e.keys();
        e.advance(EventTime::parse_ceb(&later(days(4))).unwrap(), &mut none);
        assert!(none.is_empty(), "dropping state emits nothing: {none:?}");
        let old_is_expired = e.expired_at(EventTime::parse_ceb(&s.t(30)).unwrap());
        let new_is_expired = e.expired_at(EventTime::parse_ceb(&later(days(4))).unwrap());
        let keys = e.keys();
        let out = feed(
            &mut e,
            vec![
                at(s.waybill(), &later(days(4) + 1)),
                ent(
                    Topic::Seals,
                    json!({"kind": "verified", "sealNo": "SEAL1", "vehicleNo": "V1", "portCode": "5141", "intact": true, "time": s.rfc(days(4) + 2)}),
                ),
            ],
        );
        let seal: Vec<String> =
            out.iter().filter_map(|o| if let Out::Release(r) = o { Some(r.reasons.join(";")) } else { None }).collect();
        (kept_a_day, keys, e.expired_keys(), old_is_expired, new_is_expired, statuses(&out), seal)
    };
    let (a_day, keys, expired, old, new, receipts, seal) = outcome(2);
    assert_eq!((a_day, keys, expired), ((1, 1), (0, 0), (1, 1)));
    assert!(old && !new, "a message from before the retention is expired, a current one is not");
    assert_eq!(receipts, Vec::<i32>::new(), "a fresh waybill without a list activates nothing");
    assert_eq!(seal, ["unknown seal"]);
    let (a_day, keys, expired, old, new, receipts, seal) = outcome(0);
    assert_eq!((a_day, keys, expired, old, new), ((1, 1), (1, 1), (0, 0), false, false));
    assert_eq!(receipts, [status::ERR_IMMUTABLE], "kept forever: the second activation is refused");
    assert_ne!(seal, ["unknown seal"]);
}

/// Controls aimed at one parcel or order live as long as the state they apply to: a
/// parcel kept alive by its messages keeps its controls past the retention after them
/// (still released by its `verified`), and once a parcel's state is dropped its controls
/// go with it: the same numbers declared afresh are judged without them.
#[test]
fn aimed_controls_live_as_long_as_the_parcel_they_apply_to() {
    let (a, b) = (Story::new(70), Story::new(71));
    let days = |d: f64| (d * 24.0 * 60.0) as i64;
    let mut e = Engine::new(Rules { state_retention_days: 2, ..rules() }, hs(), 2);
    let mut input = vec![a.goods(), b.goods()];
    input.extend(a.happy());
    input.extend(b.happy());
    input.extend([
        control("CA", "control", json!({"logisticsNo": a.lno()})),
        control("CB", "control", json!({"orderNo": b.order_no()})),
        a.scan("S0", None, 35),
        b.scan("S0", None, 36),
        control("VA", "verified", json!({"logisticsNo": a.lno()})),
        control("VB", "verified", json!({"logisticsNo": b.lno()})),
    ]);
    // Only A is heard of again, every day and a half.
    input.extend([1.5, 3.0, 4.5, 6.0].iter().enumerate().map(|(i, d)| a.scan(&format!("S{}", i + 1), None, days(*d))));
    let out = feed(&mut e, input);
    let sorting: Vec<(String, String, Vec<String>)> = out
        .iter()
        .filter_map(|o| match o {
            Out::Sorting(s) if s.logistics_no == a.lno() => {
                Some((s.port.to_string(), s.reasons.join(","), s.control_ids.iter().map(ToString::to_string).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sorting[0].0, "inspect", "{sorting:?}");
    for (port, reasons, ids) in &sorting[1..] {
        assert_eq!(
            (port.as_str(), ids.as_slice()),
            ("release", &["CA".to_string(), "VA".to_string()][..]),
            "{reasons}"
        );
    }
    assert_eq!(sorting.len(), 5);
    assert_eq!(e.keys().1, 1, "B's parcel was dropped, A's kept");
    assert_eq!(e.controls_held(), (2, 2), "B's controls went with it, A's stay");
    // B's numbers come back: a list and a waybill declare them afresh, without CB.
    let t = |m: i64| b.t(days(6.0) + m);
    let out = feed(&mut e, vec![at(b.list(), &t(1)), at(b.waybill(), &t(2)), b.scan("S9", None, days(6.0) + 3)]);
    let (channel, reasons) = channel(&out);
    assert_eq!(channel, "green", "{reasons:?}");
    assert_eq!(ports(&out), ["release"]);
}

/// An order whose payment wait is still running is kept whatever the retention, and so is
/// its parcel (the retention is at least the wait): the wait's return still reaches it.
#[test]
fn a_running_payment_wait_outlives_a_shorter_retention() {
    let s = Story::new(60);
    let mut e = Engine::new(Rules { state_retention_days: 1, payment_wait_hours: 72, ..rules() }, hs(), 1);
    feed(&mut e, vec![s.order(), s.list(), s.waybill()]);
    let mut out = Vec::new();
    e.advance(EventTime::parse_ceb(&s.t(60 * 60)).unwrap(), &mut out);
    assert!(out.is_empty() && e.keys() == (1, 1), "60 h: still waiting");
    e.advance(EventTime::parse_ceb(&s.t(80 * 60)).unwrap(), &mut out);
    let returns: Vec<_> =
        out.iter().filter_map(|o| if let Out::Return(r) = o { Some(r.reasons.clone()) } else { None }).collect();
    assert_eq!(returns, [vec!["payment_missing".to_string()]]);
    assert_eq!(statuses(&out), [status::RETURNED], "the parcel answers the return");
    e.advance(EventTime::parse_ceb(&s.t(30 * 24 * 60)).unwrap(), &mut out);
    assert_eq!(e.keys(), (0, 0), "then both go");
}

/// Freeing memory is bounded per watermark step, so stale state may still be in memory
/// when a message reaches it; it is treated as gone all the same. The outputs do not
/// depend on how far the sweep got, nor on a snapshot taken mid-sweep.
#[test]
fn stale_state_is_gone_whether_or_not_the_sweep_reached_it() {
    // More keys than the steps below can sweep (each step before an entity sweeps too).
    let stories: Vec<Story> = (0..crate::retention::SWEEP_BUDGET * 4 + 40).map(|n| Story::new(1000 + n)).collect();
    let last = stories.last().unwrap().clone();
    let t = |d: i64, m: i64| last.t(d * 24 * 60 + m);
    let run = |steps: i64, restore: bool| {
        let mut e = Engine::new(Rules { state_retention_days: 2, ..rules() }, hs(), 1);
        let mut input: Vec<Entity> = stories.iter().flat_map(Story::happy).collect();
        input.sort_by_key(Entity::event_time);
        feed(&mut e, input);
        let mut out = Vec::new();
        for i in 1..=steps {
            e.advance(EventTime::parse_ceb(&t(10, 0)).unwrap().plus_ms(-(steps - i) * 3_600_000), &mut out);
        }
        if restore {
            e = Engine::restore(&e.snapshot(), hs()).unwrap();
        }
        let in_memory = e.keys();
        out.extend(feed(&mut e, vec![at(last.list(), &t(10, 1)), at(last.waybill(), &t(10, 2))]));
        (in_memory, out.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>())
    };
    let (swept, all) = run(500, false);
    assert_eq!(swept, (0, 0));
    assert!(all.iter().any(|o| o.starts_with("Declared")), "the list is declared afresh: {all:?}");
    for restore in [false, true] {
        let (left, out) = run(1, restore);
        assert!(left.0 > 0 && left.1 > 0, "one step frees at most a budget: {left:?}");
        assert_eq!(out, all);
    }
}

/// Brings `copy` up to date with `cut` through its serialized form, as a checkpoint file
/// holds it.
fn through_file<S: Incremental>(cut: Cut<S, S::Changes>, copy: &mut Option<S>) {
    let cut = match cut {
        Cut::Changes(c) => Cut::Changes(serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap()),
        whole => whole,
    };
    cut.apply_to(copy).unwrap();
}

/// The state as a value (maps compare whatever their iteration order; so does the set of
/// `invtNo` serials, a list in the snapshot).
fn state_value(e: &Engine) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&e.snapshot()).unwrap();
    if let Some(serde_json::Value::Array(s)) = v.pointer_mut("/shared/serials") {
        s.sort_by_key(|x| x.as_u64());
    }
    v
}

/// Changes written before the thirteenth session hold the whole control table after a
/// control (until the twelfth session) or the controls applied (the twelfth), not what the
/// table did: they still load, and the copy they bring up to date equals the engine.
#[test]
fn changes_written_by_earlier_sessions_still_apply() {
    let mut e = Engine::new(rules(), hs(), 2);
    let mut out = Vec::new();
    let Cut::Whole(first) = e.cut() else { panic!("the first cut is whole") };
    e.process(control("M1", "control", json!({"ebcCode": "EBC001"})), &mut out);
    e.process(control("V1", "verified", json!({"logisticsNo": "LP1"})), &mut out);
    let Cut::Changes(c) = e.cut() else { panic!("changes expected") };
    let now = serde_json::to_value(&c).unwrap();
    let ops = now["control_ops"].as_array().cloned().unwrap_or_default();
    assert_eq!(ops.len(), 2, "{now}");
    assert!(now.get("controls_applied").is_none() && now.get("controls").is_none(), "{now}");
    let whole_table = {
        let mut old = now.clone();
        old["control_ops"] = json!([]);
        old["controls"] = state_value(&e)["shared"]["controls"].clone();
        old
    };
    let applied = {
        let mut old = now.clone();
        old["control_ops"] = json!([]);
        old["controls_applied"] = ops.iter().map(|op| op["apply"][0].clone()).collect();
        old
    };
    for (name, old) in [("the whole table", whole_table), ("the controls applied", applied)] {
        let mut copy = (*first).clone();
        copy.apply(serde_json::from_value(old).unwrap()).unwrap();
        assert!(state_value(&copy) == state_value(&e), "the copy differs from the engine with {name}");
    }
    // A table as written before (no ages): it loads, its aimed controls held for good.
    let mut table = state_value(&e)["shared"]["controls"].clone();
    for k in ["aimed", "aimed_by_day", "cutoff"] {
        assert!(table.as_object_mut().unwrap().remove(k).is_some(), "{k}");
    }
    let old: crate::controls::ControlTable = serde_json::from_value(table).unwrap();
    assert_eq!((old.len(), old.aimed_len()), (2, 0));
}

/// The partitions an engine stage routes its exits over are pinned once: a second pin
/// changes nothing, and the count goes through a whole checkpoint (and the snapshot), and
/// through changes to a copy made before it was pinned.
#[test]
fn the_handover_partitions_are_pinned_once_and_kept_by_checkpoints() {
    let mut e = Engine::new(rules(), hs(), 2);
    let mut copy = None;
    through_file(e.cut(), &mut copy);
    assert_eq!(e.handover(), None);
    assert_eq!(e.pin_handover(4), 4);
    assert_eq!(e.pin_handover(6), 4, "pinned by the first");
    through_file(e.cut(), &mut copy);
    assert_eq!(copy.as_ref().and_then(Engine::handover), Some(4), "through changes");
    let restored = Engine::restore(&e.snapshot(), hs()).unwrap();
    assert_eq!(restored.handover(), Some(4), "through the snapshot");
    assert!(state_value(copy.as_ref().unwrap()) == state_value(&e));
}

/// A cut in two steps ([`Engine::begin_cut`], the entries copied later): the engine goes on
/// processing between the cut and its completion — writing to entries the cut still owes,
/// removing them, firing timers, the retention dropping state — and copies a few owed
/// entries between items; the completed changes bring the copy to the engine's state *at
/// the cut*, not after it.
#[test]
fn a_cut_completed_later_holds_the_state_at_the_cut() {
    let input = story(600, 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let rules = Rules { state_retention_days: 1, ..rules() };
    let mut e = Engine::new(rules, hs(), 2);
    let mut copy: Option<Engine> = None;
    let mut out = Vec::new();
    // (the changes being completed, the engine's state at their cut, items since)
    let mut open: Option<(crate::engine::EngineChanges, serde_json::Value, usize)> = None;
    let (mut completed, mut written_meanwhile) = (0, 0);
    let finish = |e: &mut Engine, copy: &mut Option<Engine>, open: &mut Option<_>, at: &str| {
        let Some((mut c, at_cut, _)) = open.take() else { return };
        e.finish_cut(&mut c);
        through_file(Cut::Changes(c), copy);
        let got = state_value(copy.as_ref().unwrap());
        assert!(got == at_cut, "the copy differs from the engine at the cut, {at}");
    };
    let last = input.last().unwrap().event_time();
    let n = input.len();
    for (i, x) in input.into_iter().enumerate() {
        e.advance(EventTime(x.event_time().0 - 1), &mut out);
        e.process(x, &mut out);
        if let Some((_, _, since)) = &mut open {
            *since += 1;
            written_meanwhile += 1;
            let done = e.copy_owed(rng.random_range(0..4));
            if (done && rng.random::<f64>() < 0.3) || *since > 60 {
                finish(&mut e, &mut copy, &mut open, &format!("after input {i}"));
                completed += 1;
            }
        } else if rng.random::<f64>() < 0.02 || i + 1 == n {
            match e.begin_cut() {
                Cut::Changes(c) => open = Some((c, state_value(&e), 0)),
                whole => {
                    through_file(whole, &mut copy);
                    assert!(state_value(copy.as_ref().unwrap()) == state_value(&e), "a whole cut, after input {i}");
                }
            }
        }
    }
    // Days pass with a cut open across a day and more (the one begun at the last input
    // first): timers fire and the retention drops entries — orders, parcels, seals,
    // bills — the cut still owes.
    for h in 1..=72 {
        if open.is_none() {
            match e.begin_cut() {
                Cut::Changes(c) => open = Some((c, state_value(&e), 0)),
                whole => through_file(whole, &mut copy),
            }
        }
        e.advance(last.plus_ms(h * 3_600_000), &mut out);
        if h % 50 == 0 {
            finish(&mut e, &mut copy, &mut open, &format!("{h} h after the last input"));
            completed += 1;
        }
    }
    finish(&mut e, &mut copy, &mut open, "at the end");
    assert_eq!(e.keys(), (0, 0), "the retention dropped every key");
    assert!(
        completed >= 20 && written_meanwhile >= 500,
        "{completed} cuts completed later, {written_meanwhile} items meanwhile"
    );
}

/// Incremental checkpoints: a copy kept up to date with the engine's cuts
/// ([`Incremental::cut`], serialized and read back, as a checkpoint file holds them) equals
/// the engine at every checkpoint — through orders, lists, payments, parcels, seals, goods
/// and controls, timers firing, and the retention dropping state — also when the engine was
/// restored from a checkpoint and its copy made from that.
#[test]
fn a_copy_kept_by_the_changes_equals_the_engine_at_every_checkpoint() {
    let input = story(600, 5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let rules = Rules { state_retention_days: 1, ..rules() };
    let mut e = Engine::new(rules, hs(), 2);
    let mut copy = None;
    let mut out = Vec::new();
    let (mut full, mut deltas) = (0, 0);
    let mut checkpoint = |e: &mut Engine, copy: &mut Option<Engine>, at: &str| {
        let (changed, held) = e.changed_keys();
        let c = e.cut();
        let whole = c.is_whole();
        assert_eq!(
            whole,
            full + deltas == 0 || crate::engine::whole_copy_is_cheaper(changed, held),
            "{changed} of {held} keys changed {at}"
        );
        *(if whole { &mut full } else { &mut deltas }) += 1;
        through_file(c, copy);
        assert!(state_value(copy.as_ref().unwrap()) == state_value(e), "the copy differs from the engine {at}");
    };
    let last = input.last().unwrap().event_time();
    for (i, x) in input.into_iter().enumerate() {
        e.advance(EventTime(x.event_time().0 - 1), &mut out);
        e.process(x, &mut out);
        if rng.random::<f64>() < 0.01 {
            checkpoint(&mut e, &mut copy, &format!("after input {i}"));
        }
        if i == 2500 {
            // An officer's control in the middle of the stream.
            e.process(control("M2", "control", json!({"ebcCode": "EBC001"})), &mut out);
        }
        if i % 40 == 7 {
            // Controls aimed at parcels and orders met so far (kept longer as they are
            // touched, dropped with them), now and then lifted.
            let s = Story::new(i / 9);
            e.process(control(&format!("A{i}"), "verified", json!({"logisticsNo": s.lno()})), &mut out);
            e.process(control(&format!("B{i}"), "control", json!({"orderNo": s.order_no()})), &mut out);
            if i % 120 == 7 {
                e.process(control(&format!("L{i}"), "lift", json!({"controlId": format!("A{i}")})), &mut out);
            }
        }
        if i == 1500 {
            // A restart: the engine from its checkpoint, the writer's copy made from it.
            e = Engine::restore(&copy.as_ref().unwrap().snapshot(), hs()).unwrap();
            copy = Some(e.clone());
            e.track();
        }
    }
    // Days pass: the payment waits fire, the retention drops everything, step by step
    // (a step sweeps a bounded number of keys: the changes carry keys taken from the
    // retention queues).
    for h in 1..=72 {
        e.advance(last.plus_ms(h * 3_600_000), &mut out);
        if h % 6 == 0 || (30..40).contains(&h) {
            checkpoint(&mut e, &mut copy, &format!("{h} h after the last input"));
        }
    }
    assert_eq!(e.keys(), (0, 0), "the retention dropped every key");
    assert_eq!(e.controls_held(), (3, 0), "and every aimed control (V1, M1 and M2 stay)");
    // A year later the serials of the story's year are dropped too.
    e.advance(EventTime::parse_ceb("20280102000000").unwrap(), &mut out);
    checkpoint(&mut e, &mut copy, "in the next year but one");
    assert!(out.iter().any(|o| matches!(o, Out::Return(_))), "a payment wait fired");
    assert!(full >= 2 && deltas > 10, "{full} whole copies, {deltas} of the changes only");
    // Changes of another engine are refused, not applied (a checkpoint directory mixed up).
    let Cut::Changes(c) = e.cut() else { panic!("changes expected") };
    let err = Engine::new(Rules::default(), hs(), 3).apply(c).unwrap_err();
    assert!(err.contains("partitions"), "{err}");
}

/// The exits of a 300-parcel story, an hour of event time after its last message.
fn story_exits() -> Vec<crate::engine::Exited> {
    let mut e = Engine::new(rules(), hs(), 2);
    let input = story(300, 3);
    let last = input.last().unwrap().event_time();
    let mut out = feed(&mut e, input);
    e.advance(last.plus_ms(3_600_000), &mut out);
    out.into_iter()
        .filter_map(|o| match o {
            Out::Exited(x) => Some(x),
            _ => None,
        })
        .collect()
}

/// A month's close of many lists declares every one of them and frees them all (on a
/// thread of its own): nothing of a closed period stays behind.
#[test]
fn a_large_close_declares_every_list_and_frees_them() {
    let exited: Vec<_> = story_exits().into_iter().filter(|x| x.summarizable).collect();
    assert!(!exited.is_empty());
    let mut sum = Summarize::default();
    let mut r = Rules::default();
    let mut out = Vec::new();
    let mut held = Vec::new();
    for i in 0..12_000 {
        let x = &exited[i % exited.len()];
        let list = std::sync::Arc::new((*x.list).clone());
        if i % 1000 == 0 {
            held.push(std::sync::Arc::downgrade(&list));
        }
        let invt_no = format!("51412026E{i:011}").into();
        sum.process(
            &mut r,
            crate::engine::Exited { invt_no, summarizable: true, was_summarizable: false, list, seq: i as u64 + 1 },
            &mut out,
        );
    }
    assert_eq!(sum.pending(), 12_000);
    sum.on_watermark(&mut r, EventTime::MAX, &mut out);
    assert_eq!(sum.pending(), 0);
    let declared: usize = out.iter().map(|s| s.invt_nos.len()).sum();
    assert_eq!(declared, 12_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held.iter().any(|w| w.upgrade().is_some()) {
        assert!(std::time::Instant::now() < deadline, "a closed period's lists were not freed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A close at the end of time split over two threads declares what one thread does, in
/// the same order, numbers included (one declaration per company, and per owner too).
#[test]
fn a_close_in_two_declares_what_a_close_in_one_does() {
    use crate::summarize::close_period;
    let exited: Vec<_> = story_exits().into_iter().filter(|x| x.summarizable).collect();
    // 97 companies with 5 owners each over the story's lists.
    let lists: Vec<crate::engine::Exited> = (0..12_000)
        .map(|i| {
            let x = &exited[i % exited.len()];
            let mut list = (*x.list).clone();
            list.ebc_code = format!("EBC{:05}", i % 97).into();
            list.owner_code = format!("OWN{:05}", i % 5).into();
            let invt_no = format!("51412026E{i:011}").into();
            crate::engine::Exited { invt_no, seq: i as u64 + 1, list: std::sync::Arc::new(list), ..x.clone() }
        })
        .collect();
    let refs: Vec<&crate::engine::Exited> = lists.iter().collect();
    let revision = |form: &str| form.len() as u32 % 3 + 1;
    for flag in [1, 2] {
        let one = close_period(&refs, 202611, flag, &revision, false);
        let two = close_period(&refs, 202611, flag, &revision, true);
        assert!(one.len() > 10, "{} declarations", one.len());
        assert_eq!(one.iter().map(|s| s.invt_nos.len()).sum::<usize>(), 12_000);
        assert!(one == two, "flag {flag}: the declarations differ");
    }
}

/// The summarize state's copy kept by its cuts (serialized and read back) equals it,
/// through lists coming in, lists taken out (returned after they exited) and periods
/// closing with their revisions.
#[test]
fn a_summarize_copy_kept_by_its_cuts_equals_it() {
    let exited = story_exits();
    assert!(exited.len() > 200, "{}", exited.len());
    let mut s = Summarize::default();
    let mut copy = None;
    let mut r = rules();
    let (mut summaries, mut cuts) = (Vec::new(), 0);
    let mut cut = |s: &mut Summarize, copy: &mut Option<Summarize>| {
        through_file(s.cut(), copy);
        cuts += 1;
        assert_eq!(serde_json::to_value(copy.as_ref()).unwrap(), serde_json::to_value(&*s).unwrap(), "cut {cuts}");
    };
    for (i, x) in exited.iter().enumerate() {
        s.process(&mut r, x.clone(), &mut summaries);
        if i % 37 == 0 {
            // Some lists leave again (returned after they exited).
            s.process(&mut r, crate::engine::Exited { summarizable: false, ..x.clone() }, &mut summaries);
            cut(&mut s, &mut copy);
        }
    }
    cut(&mut s, &mut copy);
    s.on_watermark(&mut r, EventTime::MAX, &mut summaries);
    assert!(!summaries.is_empty());
    cut(&mut s, &mut copy);
    // A late list reopens its period: a supplementary declaration (revision 2).
    s.process(&mut r, exited[1].clone(), &mut summaries);
    s.on_watermark(&mut r, EventTime::MAX, &mut summaries);
    cut(&mut s, &mut copy);
    assert_eq!(copy.map(|c| c.pending()), Some(0));
}

/// A supplementary declaration is numbered per declaration form: a late list of one
/// company does not change the number of another's (so summarize instances, each with
/// some of the companies, number them as one instance does), and a period declared
/// before per-form numbering (a format 2 checkpoint) continues from its old count.
#[test]
fn supplementary_declarations_are_numbered_per_form() {
    let exited: Vec<crate::engine::Exited> = story_exits().into_iter().filter(|x| x.summarizable).collect();
    let a = exited[0].clone();
    let b = exited.iter().find(|x| x.list.ebc_code != a.list.ebc_code).expect("two companies").clone();
    let (mut s, mut r, mut sums) = (Summarize::default(), rules(), Vec::new());
    for x in exited.iter().filter(|x| x.invt_no != a.invt_no && x.invt_no != b.invt_no) {
        s.process(&mut r, x.clone(), &mut sums);
    }
    s.on_watermark(&mut r, EventTime::MAX, &mut sums);
    let first = sums.len();
    assert!(sums.iter().all(|s| !s.summary_id.contains('/')), "first declarations carry no revision");
    let mut late = |s: &mut Summarize, x: &crate::engine::Exited| {
        let mut out = Vec::new();
        s.process(&mut r, x.clone(), &mut out);
        s.on_watermark(&mut r, EventTime::MAX, &mut out);
        assert_eq!(out.len(), 1, "one supplementary declaration");
        out.pop().unwrap()
    };
    let sa = late(&mut s, &a);
    assert!(sa.summary_id.ends_with("/2"), "{}", sa.summary_id);
    assert!(sa.summary_id.contains(&crate::summarize::form_of(&sa)));
    let sb = late(&mut s, &b);
    assert!(sb.summary_id.ends_with("/2"), "another form's first supplementary is /2: {}", sb.summary_id);
    let again = crate::engine::Exited { invt_no: format!("{}X", a.invt_no).into(), ..a.clone() };
    assert!(late(&mut s, &again).summary_id.ends_with("/3"));
    assert!(first > 1);
    // A state from before per-form numbering: the period was declared once, all forms.
    let period = a.list.ie_date.period();
    let mut old: Summarize =
        serde_json::from_value(serde_json::json!({"open": {}, "revisions": {period.to_string(): 1}}))
            .expect("a format 2 summarize state loads");
    assert!(late(&mut old, &a).summary_id.ends_with("/2"), "continues from the period's count");
}

/// Exits are numbered 1, 2, … in the engine's order, the same at any partition count, and
/// a restored engine goes on from its checkpoint's number (what lets a summarize instance
/// skip the exits it already applied when they come again after a restart).
#[test]
fn exits_are_numbered_in_order_at_any_partition_count_and_across_a_restore() {
    let exits = |partitions: usize| {
        let mut e = Engine::new(rules(), hs(), partitions);
        let input = story(300, 5);
        let last = input.last().unwrap().event_time();
        let (first, second) = input.split_at(input.len() / 2);
        let mut out = feed(&mut e, first.to_vec());
        let mut e = Engine::restore(&e.snapshot(), hs()).unwrap();
        out.extend(feed(&mut e, second.to_vec()));
        e.advance(last.plus_ms(40 * 86_400_000), &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Out::Exited(x) => Some((x.seq, x.invt_no.to_string(), x.summarizable)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let one = exits(1);
    assert!(one.len() > 100, "{}", one.len());
    assert!(one.iter().any(|x| !x.2), "some lists leave their summary again (returned after exit)");
    assert_eq!(one.iter().map(|x| x.0).collect::<Vec<_>>(), (1..=one.len() as u64).collect::<Vec<_>>());
    assert_eq!(exits(3), one);
}
