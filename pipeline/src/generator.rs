//! `cbec gen`: a deterministic (seeded) generator of one consistent story across every input
//! topic — goods registrations → orders → stored lists → payments → waybills → arrivals and
//! sorting-line scans (X-ray) → officer verifications → seals → port verification →
//! departures — with Zipf-distributed company volume, 1–3 items per order, HS codes drawn
//! from the nomenclature, several ports, destinations and currencies, a curve with a peak,
//! and configurable rates of late, duplicated, inconsistent, missing and malformed messages.
//! It also computes what a correct pipeline must conclude ([`Expected`]).

use cbec_operators::ids;
use cbec_operators::rules::{Rules, sampled};
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Dec, EventTime, Topic};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// Generator settings (`cbec gen --help` documents each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    /// Seed: same seed, same files.
    pub seed: u64,
    /// Orders (parcels) in the story.
    pub orders: usize,
    /// E-commerce companies (Zipf-distributed volume).
    pub companies: usize,
    /// Story start (RFC 3339).
    pub start: String,
    /// Story length in seconds (orders spread over it with a peak).
    pub duration_s: i64,
    /// Share of payments arriving late (after the waybill).
    pub late: f64,
    /// Share of messages sent twice.
    pub duplicate: f64,
    /// Share of payments with a wrong amount.
    pub amount_mismatch: f64,
    /// Share of payments in another currency.
    pub currency_mismatch: f64,
    /// Share of payments from another company.
    pub company_mismatch: f64,
    /// Share of orders paid twice with different `payNo`.
    pub duplicate_payment: f64,
    /// Share of orders never paid.
    pub missing_payment: f64,
    /// Share of parcels never collected (no waybill).
    pub missing_waybill: f64,
    /// Malformed messages added, as a share of all messages.
    pub malformed: f64,
    /// Share of items with certificate-related goods.
    pub certificate: f64,
    /// Share of items with tax-related goods.
    pub tax: f64,
    /// Share of items never registered.
    pub unregistered: f64,
    /// Share of scans with an X-ray `suspect`.
    pub xray_suspect: f64,
    /// Share of seals found broken at the port.
    pub broken_seal: f64,
    /// Share of lists with `statisticsFlag` A (not summarized).
    pub simplified: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1111,
            orders: 20_000,
            companies: 2_000,
            start: "2026-11-11T20:00:00+08:00".into(),
            duration_s: 3600,
            late: 0.02,
            duplicate: 0.01,
            amount_mismatch: 0.01,
            currency_mismatch: 0.005,
            company_mismatch: 0.005,
            duplicate_payment: 0.002,
            missing_payment: 0.01,
            missing_waybill: 0.005,
            malformed: 0.001,
            certificate: 0.02,
            tax: 0.01,
            unregistered: 0.002,
            xray_suspect: 0.01,
            broken_seal: 0.01,
            simplified: 0.1,
        }
    }
}

/// What a correct pipeline must conclude for the story.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expected {
    /// Messages generated per topic (including duplicates and malformed ones).
    pub messages: BTreeMap<String, u64>,
    /// Malformed messages, and messages dated a century after they arrive (each must end in
    /// the dead-letter topic).
    pub malformed: u64,
    /// Lists that must be declared (collected by a waybill).
    pub declared: u64,
    /// Returned orders with their reasons.
    pub returns: BTreeMap<String, Vec<String>>,
    /// Count of lists per red reason (every reason that must fire).
    pub red_reasons: BTreeMap<String, u64>,
    /// Lists that must be tax-related.
    pub tax_related: u64,
    /// Summary totals per period `YYYYMM`: (lists, Σ totalPrice).
    pub summaries: BTreeMap<u32, (i64, Dec)>,
    /// Parcels that must exit.
    pub exited: u64,
}

/// A generated story: messages per topic in arrival order as (key, payload).
pub struct Generated {
    /// Messages.
    pub topics: BTreeMap<Topic, Vec<(String, Vec<u8>)>>,
    /// Arrival time (ms) of each message, parallel to `topics`.
    pub arrival: BTreeMap<Topic, Vec<i64>>,
    /// Expected conclusions.
    pub expected: Expected,
}

struct Product {
    item_no: String,
    gcode: String,
    name: &'static str,
    unit: &'static str,
    price: i64,
}

const NAMES: [&str; 8] = ["phone case", "tea", "toy", "dress", "lamp", "shoes", "headphones", "cup"];
const UNITS: [&str; 4] = ["011", "035", "007", "006"];
const COUNTRIES: [&str; 6] = ["502", "303", "304", "116", "601", "132"];
const PORTS: [&str; 3] = ["5141", "2244", "2233"];
const CURRENCIES: [&str; 3] = ["142", "502", "300"];

fn pick_code(rng: &mut StdRng, pool: &[&str], fallback: &str) -> String {
    let sub = if pool.is_empty() { fallback } else { pool[rng.random_range(0..pool.len())] };
    format!("{sub}{:04}", rng.random_range(0..10_000))
}

/// Generates the story.
pub fn generate(g: &GenConfig, rules: &Rules, hs: &Nomenclature) -> Generated {
    let mut rng = StdRng::seed_from_u64(g.seed);
    let start = EventTime::parse_rfc3339(&g.start).unwrap_or(EventTime(1_794_398_400_000));
    // Real goods: leave out chapters 98/99 ("commodities not specified", national use).
    let subs: Vec<&str> =
        hs.subheadings().into_iter().filter(|s| !s.starts_with("98") && !s.starts_with("99")).collect();
    let plain: Vec<&str> = subs
        .iter()
        .copied()
        .filter(|s| {
            rules.certificate_rule(&format!("{s}0000")).is_none() && rules.tax_rule(&format!("{s}0000")).is_none()
        })
        .collect();
    let cert: Vec<&str> =
        subs.iter().copied().filter(|s| rules.certificate_rule(&format!("{s}0000")).is_some()).collect();
    let tax: Vec<&str> = subs
        .iter()
        .copied()
        .filter(|s| {
            rules.tax_rule(&format!("{s}0000")).is_some() && rules.certificate_rule(&format!("{s}0000")).is_none()
        })
        .collect();
    // Catalog.
    let mut products: Vec<Product> = Vec::new();
    let mut mk = |rng: &mut StdRng, pool: &[&str], fb: &str, n: usize, tag: &str| {
        for i in 0..n {
            products.push(Product {
                item_no: format!("{tag}{i:05}"),
                gcode: pick_code(rng, pool, fb),
                name: NAMES[i % NAMES.len()],
                unit: UNITS[i % UNITS.len()],
                price: rng.random_range(5..500),
            });
        }
    };
    mk(&mut rng, &plain, "851713", 2000, "P");
    mk(&mut rng, &cert, "300490", 100, "C");
    mk(&mut rng, &tax, "720211", 100, "T");
    let (n_plain, n_cert) = (2000usize, 100usize);
    // Zipf over companies.
    let weights: Vec<f64> = (1..=g.companies.max(1)).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let total_w: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total_w;
        cdf.push(acc);
    }
    let controlled_company = format!("EBC{:05}", 5.min(g.companies.saturating_sub(1)));

    // Per topic: (arrival time, sequence, key, payload).
    type Queued = Vec<(i64, u64, String, Vec<u8>)>;
    let mut out: BTreeMap<Topic, Queued> = BTreeMap::new();
    let mut n_msg = 0u64;
    let mut emit = |rng: &mut StdRng, t: Topic, at: EventTime, key: String, v: serde_json::Value, dup_ok: bool| {
        let bytes = serde_json::to_vec(&v).expect("json");
        let q = out.entry(t).or_default();
        n_msg += 1;
        q.push((at.0, n_msg, key.clone(), bytes.clone()));
        if dup_ok && rng.random::<f64>() < g.duplicate {
            n_msg += 1;
            q.push((at.0, n_msg, key, bytes));
        }
    };
    let mut ex = Expected::default();
    let day0 = start.plus_ms(-86_400_000);
    // Supervision set-up: vehicles, one company under manual control.
    for v in 0..10 {
        emit(
            &mut rng,
            Topic::Controls,
            day0,
            format!("VEH{v}"),
            json!({"id": format!("VEH{v}"), "kind": "vehicle", "target": {"vehicleNo": format!("粤B{v:05}")}, "officer": "site-officer", "reason": "supervision vehicle filed", "time": day0.to_rfc3339()}),
            false,
        );
    }
    emit(
        &mut rng,
        Topic::Controls,
        day0,
        "MC1".into(),
        json!({"id": "MC1", "kind": "control", "target": {"ebcCode": controlled_company}, "officer": "risk-officer", "reason": "risk profile", "time": day0.to_rfc3339()}),
        false,
    );
    let mut registered: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
    let mut never: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
    let mut released: Vec<(i64, String)> = Vec::new();
    let mut arrivals: Vec<(i64, String)> = Vec::new();
    let mut summaries_pending: BTreeMap<String, (u32, Dec, bool)> = BTreeMap::new();
    let (rate, _) = (rules.inspection_rate, ());
    for i in 0..g.orders {
        let u = i as f64 / g.orders.max(1) as f64;
        let shaped = u - 0.12 * (2.0 * std::f64::consts::PI * u).sin() / (2.0 * std::f64::consts::PI);
        let t = start.plus_ms((shaped * g.duration_s as f64 * 1000.0) as i64);
        let r: f64 = rng.random();
        let c = cdf.partition_point(|x| *x < r).min(g.companies.saturating_sub(1));
        let ebc = format!("EBC{c:05}");
        let order_no = format!("O{:09}", i + 1);
        let lno = format!("LP{:010}", i + 1);
        let port = PORTS[rng.random_range(0..PORTS.len())];
        let country = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
        let currency = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
        let n_items = rng.random_range(1..=3);
        let mut items_o = Vec::new();
        let mut items_l = Vec::new();
        let mut total = Dec::ZERO;
        let mut certificate = false;
        let mut is_tax = false;
        let mut unregistered = false;
        for k in 0..n_items {
            let x: f64 = rng.random();
            let pi = if x < g.certificate {
                n_plain + rng.random_range(0..n_cert)
            } else if x < g.certificate + g.tax {
                n_plain + n_cert + rng.random_range(0..100)
            } else {
                rng.random_range(0..n_plain)
            };
            let p = &products[pi];
            certificate |= rules.certificate_rule(&p.gcode).is_some();
            is_tax |= rules.tax_rule(&p.gcode).is_some();
            if never.contains(&(c, pi)) {
                unregistered = true;
            } else if !registered.contains(&(c, pi)) {
                if rng.random::<f64>() < g.unregistered {
                    never.insert((c, pi));
                    unregistered = true;
                } else {
                    registered.insert((c, pi));
                    emit(
                        &mut rng,
                        Topic::Goods,
                        day0,
                        format!("{ebc}/{}", p.item_no),
                        json!({"ebcCode": ebc, "itemNo": p.item_no, "itemName": p.name, "gcode": p.gcode, "gname": p.name, "gmodel": "std", "unit": p.unit, "appType": "1", "appTime": day0.to_ceb()}),
                        false,
                    );
                }
            }
            let qty = rng.random_range(1..=3);
            let line = Dec::from_int(p.price * qty);
            total = total.add(line);
            items_o.push(json!({"gnum": k + 1, "itemNo": p.item_no, "itemName": p.name, "unit": p.unit, "currency": currency, "qty": qty.to_string(), "price": p.price.to_string(), "totalPrice": line.to_string()}));
            items_l.push(json!({"gnum": k + 1, "itemNo": p.item_no, "gcode": p.gcode, "gname": p.name, "gmodel": "std", "country": country, "currency": currency, "qty": qty.to_string(), "qty1": qty.to_string(), "unit": p.unit, "unit1": p.unit, "price": p.price.to_string(), "totalPrice": line.to_string()}));
        }
        let freight = Dec::from_int(rng.random_range(0..30));
        emit(
            &mut rng,
            Topic::Orders,
            t,
            order_no.clone(),
            json!({"orderNo": order_no, "orderType": "E", "ebpCode": "EBP0001", "ebcCode": ebc, "goodsValue": total.to_string(), "freight": freight.to_string(), "currency": currency, "appType": "1", "appTime": t.to_ceb(), "items": items_o}),
            true,
        );
        let flag = if rng.random::<f64>() < g.simplified { "A" } else { "B" };
        let ie_date = t.to_ceb()[..8].to_string();
        emit(
            &mut rng,
            Topic::Lists,
            t.plus_ms(1000),
            order_no.clone(),
            json!({"orderNo": order_no, "logisticsNo": lno, "logisticsCode": "LOG0001", "ebpCode": "EBP0001", "ebcCode": ebc, "ownerCode": ebc, "agentCode": "AGT0001", "customsCode": port, "portCode": port, "ieDate": ie_date, "statisticsFlag": flag, "tradeMode": "9610", "trafMode": "4", "country": country, "POD": country, "freight": freight.to_string(), "insuredFee": "0", "packNo": 1, "grossWeight": "1.5", "netWeight": "1.2", "appType": "1", "appStatus": "1", "copNo": format!("COP{i}"), "appTime": t.plus_ms(1000).to_ceb(), "items": items_l}),
            true,
        );
        // Payment.
        let mut reasons: Vec<&str> = Vec::new();
        let pay_missing = rng.random::<f64>() < g.missing_payment;
        if pay_missing {
            reasons.push("payment_missing");
        } else {
            let mut charge = total.add(freight);
            let mut pcur = currency.to_string();
            let mut pebc = ebc.clone();
            let x: f64 = rng.random();
            if x < g.amount_mismatch {
                charge = charge.add(Dec::from_int(1));
                reasons.push("amount_mismatch");
            } else if x < g.amount_mismatch + g.currency_mismatch {
                pcur = if currency == "142" { "502".into() } else { "142".into() };
                reasons.push("currency_mismatch");
            } else if x < g.amount_mismatch + g.currency_mismatch + g.company_mismatch {
                pebc = format!("{ebc}X");
                reasons.push("ebc_mismatch");
            } else if x < g.amount_mismatch + g.currency_mismatch + g.company_mismatch + g.duplicate_payment {
                reasons.push("duplicate_payment");
            }
            let pt = t.plus_ms(2000);
            let arrive = if rng.random::<f64>() < g.late { t.plus_ms(120_000) } else { pt };
            emit(
                &mut rng,
                Topic::Payments,
                arrive,
                order_no.clone(),
                json!({"orderNo": order_no, "ebpCode": "EBP0001", "ebcCode": pebc, "payCode": "PAY0001", "payName": "cbec pay", "payNo": format!("PN{i}"), "charge": charge.to_string(), "currency": pcur, "accountingDate": pt.to_ceb()}),
                true,
            );
            if reasons == ["duplicate_payment"] {
                emit(
                    &mut rng,
                    Topic::Payments,
                    pt.plus_ms(1),
                    order_no.clone(),
                    json!({"orderNo": order_no, "ebpCode": "EBP0001", "ebcCode": pebc, "payCode": "PAY0001", "payName": "cbec pay", "payNo": format!("PN{i}b"), "charge": charge.to_string(), "currency": pcur, "accountingDate": pt.plus_ms(1).to_ceb()}),
                    false,
                );
            }
        }
        if !reasons.is_empty() {
            ex.returns.insert(order_no.clone(), reasons.iter().map(|s| s.to_string()).collect());
        }
        let returned_at_scan = !reasons.is_empty() && !pay_missing;
        // Collection.
        if rng.random::<f64>() < g.missing_waybill {
            continue;
        }
        let wt = t.plus_ms(60_000);
        emit(
            &mut rng,
            Topic::Waybills,
            wt,
            lno.clone(),
            json!({"logisticsNo": lno, "logisticsCode": "LOG0001", "freight": freight.to_string(), "insuredFee": "0", "currency": currency, "grossWeight": "1.5", "packNo": 1, "goodsInfo": "parcel", "appTime": wt.to_ceb()}),
            true,
        );
        ex.declared += 1;
        if is_tax {
            ex.tax_related += 1;
        }
        let year: i32 = wt.to_ceb()[..4].parse().unwrap_or(2026);
        let invt = ids::invt_no(port, year, ids::invt_serial(rules.instance, port, year, &lno, 0));
        let mut red = Vec::new();
        if certificate {
            red.push("certificate_required");
        }
        if unregistered {
            red.push("goods_unregistered");
        }
        if ebc == controlled_company {
            red.push("manual_control");
        }
        let is_sampled = sampled(&rules.sampling_key, &invt, rate);
        for r in &red {
            *ex.red_reasons.entry(r.to_string()).or_default() += 1;
        }
        arrivals.push((t.plus_ms(600_000).0, lno.clone()));
        let suspect = rng.random::<f64>() < g.xray_suspect;
        let st = t.plus_ms(900_000);
        emit(
            &mut rng,
            Topic::Scans,
            st,
            lno.clone(),
            json!({"logisticsNo": lno, "lineId": format!("LINE{}", i % 4), "scanId": format!("S{i}a"), "scanTime": st.to_rfc3339(), "xray": if suspect { "suspect" } else { "clear" }}),
            true,
        );
        if returned_at_scan {
            continue;
        }
        let mut release_at = st;
        if !red.is_empty() || is_sampled || suspect {
            let vt = t.plus_ms(1_000_000);
            emit(
                &mut rng,
                Topic::Controls,
                vt,
                format!("VF{i}"),
                json!({"id": format!("VF{i}"), "kind": "verified", "target": {"logisticsNo": lno}, "officer": "site-officer", "reason": "inspected", "time": vt.to_rfc3339()}),
                false,
            );
            release_at = t.plus_ms(1_100_000);
            emit(
                &mut rng,
                Topic::Scans,
                release_at,
                lno.clone(),
                json!({"logisticsNo": lno, "lineId": format!("LINE{}", i % 4), "scanId": format!("S{i}b"), "scanTime": release_at.to_rfc3339(), "xray": "clear"}),
                true,
            );
        }
        released.push((release_at.0, lno.clone()));
        let consistent = reasons.is_empty();
        summaries_pending.insert(lno, (ie_date[..6].parse().unwrap_or(0), total, consistent && flag == "B" && !is_tax));
    }
    // Arrivals in batches of 10 parcels.
    arrivals.sort();
    for (k, chunk) in arrivals.chunks(10).enumerate() {
        let at = EventTime(chunk.last().map_or(0, |c| c.0));
        let items: Vec<_> = chunk.iter().map(|(_, l)| json!({"logisticsNo": l})).collect();
        emit(
            &mut rng,
            Topic::Arrivals,
            at,
            format!("ARR{k}"),
            json!({"customsCode": "5141", "operatorCode": "SITE0001", "domesticTrafNo": format!("TRUCK{k}"), "appTime": at.to_ceb(), "items": items}),
            true,
        );
    }
    // Seals of up to 20 released parcels, verified at the port, then departure.
    released.sort();
    for (k, chunk) in released.chunks(20).enumerate() {
        let last = EventTime(chunk.last().map_or(0, |c| c.0));
        let seal = format!("SEAL{k:06}");
        let vehicle = format!("粤B{:05}", k % 10);
        let lnos: Vec<&String> = chunk.iter().map(|(_, l)| l).collect();
        let sealed_at = last.plus_ms(60_000);
        emit(
            &mut rng,
            Topic::Seals,
            sealed_at,
            seal.clone(),
            json!({"kind": "sealed", "sealNo": seal, "vehicleNo": vehicle, "logisticsNos": lnos, "time": sealed_at.to_rfc3339()}),
            true,
        );
        let broken = rng.random::<f64>() < g.broken_seal;
        let port_at = sealed_at.plus_ms(1_800_000);
        emit(
            &mut rng,
            Topic::Seals,
            port_at,
            seal.clone(),
            json!({"kind": "verified", "sealNo": seal, "vehicleNo": vehicle, "portCode": "5141", "intact": !broken, "time": port_at.to_rfc3339()}),
            true,
        );
        if broken {
            continue;
        }
        let leave = port_at.plus_ms(600_000);
        let items: Vec<_> = lnos.iter().map(|l| json!({"logisticsNo": l})).collect();
        emit(
            &mut rng,
            Topic::Departures,
            leave,
            format!("DEP{k}"),
            json!({"customsCode": "5141", "logisticsCode": "LOG0001", "trafMode": "4", "voyageNo": format!("V{k}"), "leaveTime": leave.to_ceb(), "items": items}),
            true,
        );
        for l in lnos {
            ex.exited += 1;
            if let Some((p, v, true)) = summaries_pending.get(l) {
                let e = ex.summaries.entry(*p).or_insert((0, Dec::ZERO));
                e.0 += 1;
                e.1 = e.1.add(*v);
            }
        }
    }
    // Malformed messages, spread over the topics, every kind on every topic in turn; one
    // kind is well-formed but dated a century after it arrives (`future_time`).
    let total_msgs: usize = out.values().map(Vec::len).sum();
    let n_bad = (total_msgs as f64 * g.malformed).round() as usize;
    for b in 0..n_bad {
        let topic = Topic::ALL[b % Topic::ALL.len()];
        let at = start.plus_ms(rng.random_range(0..g.duration_s.max(1) * 1000));
        let payload: Vec<u8> = match (b + b / Topic::ALL.len()) % 5 {
            0 => b"{\"orderNo\": \"truncated".to_vec(),
            1 => b"<ceb:CEB303Message xmlns:ceb=\"http://www.chinaport.gov.cn/ceb\"><ceb:Order>".to_vec(),
            2 => b"{\"logisticsNo\": 12, \"charge\": \"-5\"}".to_vec(),
            3 => vec![0xff, 0xfe, b'{', 0x00],
            _ => {
                let q = out.get(&topic).map_or(&[][..], Vec::as_slice);
                let pick = (!q.is_empty()).then(|| rng.random_range(0..q.len()));
                pick.and_then(|i| a_century_later(topic, &q[i].3)).unwrap_or_else(|| b"{}".to_vec())
            }
        };
        let q = out.entry(topic).or_default();
        n_msg += 1;
        q.push((at.0, n_msg, format!("BAD{b}"), payload));
        ex.malformed += 1;
    }
    let mut topics = BTreeMap::new();
    let mut arrival = BTreeMap::new();
    for (t, mut v) in out {
        v.sort_by_key(|(at, n, _, _)| (*at, *n));
        ex.messages.insert(t.short().to_string(), v.len() as u64);
        arrival.insert(t, v.iter().map(|(at, _, _, _)| *at).collect());
        topics.insert(t, v.into_iter().map(|(_, _, k, p)| (k, p)).collect());
    }
    Generated { topics, arrival, expected: ex }
}

/// The field holding a topic's event time in the generated JSON.
fn time_field(t: Topic) -> &'static str {
    match t {
        Topic::Payments => "accountingDate",
        Topic::Scans => "scanTime",
        Topic::Departures => "leaveTime",
        Topic::Seals | Topic::Controls => "time",
        _ => "appTime",
    }
}

/// A generated message of topic `t` with its event time a hundred years later (CEB and
/// RFC 3339 times both start with the year).
fn a_century_later(t: Topic, payload: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let field = v.get_mut(time_field(t))?;
    let text = field.as_str()?;
    let year: u32 = text.get(..4)?.parse().ok()?;
    *field = serde_json::Value::String(format!("{}{}", year + 100, &text[4..]));
    serde_json::to_vec(&v).ok()
}

impl Generated {
    /// The story as the embedded mode's inputs: each topic's messages with their arrival
    /// times (when they were sent).
    pub fn inputs(&self) -> Vec<(Topic, crate::embedded::TopicInput)> {
        self.topics
            .iter()
            .map(|(t, v)| {
                let sent = self.arrival[t].iter().copied().zip(v.iter().map(|(_, p)| p.clone()));
                (*t, crate::embedded::TopicInput::Messages(sent.collect()))
            })
            .collect()
    }
}

/// Every message of the story merged in arrival order, as one feed would carry it: topic,
/// key, payload.
pub fn merged(g: &Generated) -> Vec<(Topic, String, Vec<u8>)> {
    merged_sent(g).into_iter().map(|(t, _, k, p)| (t, k, p)).collect()
}

/// [`merged`] with each message's arrival time (Unix milliseconds: when it was sent), which
/// bounds its event time as the runtime does (`max_lead_ms`): topic, arrival, key, payload.
pub fn merged_sent(g: &Generated) -> Vec<(Topic, i64, String, Vec<u8>)> {
    let mut all: Vec<(i64, u8, usize, Topic)> = Vec::new();
    for (t, times) in &g.arrival {
        all.extend(times.iter().enumerate().map(|(i, at)| (*at, crate::sequencer::rank(*t), i, *t)));
    }
    all.sort_unstable();
    all.into_iter()
        .map(|(at, _, i, t)| {
            let (k, p) = &g.topics[&t][i];
            (t, at, k.clone(), p.clone())
        })
        .collect()
}

/// Writes the story as `<topic>.jsonl` files plus `expected.json`.
pub fn write_dir(g: &Generated, dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    for (t, msgs) in &g.topics {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{}.jsonl", t.short())))?);
        for (_, p) in msgs {
            // A malformed message must stay on one line: newlines inside are escaped away.
            let line: Vec<u8> = p.iter().map(|b| if *b == b'\n' { b' ' } else { *b }).collect();
            f.write_all(&line)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    std::fs::write(dir.join("expected.json"), serde_json::to_vec_pretty(&g.expected)?)?;
    Ok(())
}

/// CEB message, entity element, and (head, body-row) elements of a topic's CEB XML form.
type CebForm = (&'static str, &'static str, Option<(&'static str, &'static str)>);

/// The CEB XML form of the topics that have one.
fn ceb_form(t: Topic) -> Option<CebForm> {
    Some(match t {
        Topic::Orders => ("CEB303Message", "Order", Some(("OrderHead", "OrderList"))),
        Topic::Lists => ("CEB603Message", "Inventory", Some(("InventoryHead", "InventoryList"))),
        Topic::Payments => ("CEB403Message", "Receipts", None),
        Topic::Waybills => ("CEB505Message", "Logistics", None),
        Topic::Arrivals => ("CEB507Message", "Arrival", Some(("ArrivalHead", "ArrivalList"))),
        Topic::Departures => ("CEB509Message", "Departure", Some(("DepartureHead", "DepartureList"))),
        _ => return None,
    })
}

fn xml_text(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn xml_fields(out: &mut String, obj: &serde_json::Map<String, serde_json::Value>) {
    for (k, v) in obj {
        if k != "items" {
            out.push_str(&format!("<ceb:{k}>{}</ceb:{k}>", xml_text(v)));
        }
    }
}

/// One CEB XML document carrying `entities` (JSON objects of one topic).
pub fn ceb_document(
    t: Topic,
    entities: &[serde_json::Map<String, serde_json::Value>],
    doc_no: usize,
) -> Option<String> {
    let (msg, ent, parts) = ceb_form(t)?;
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ceb:{msg} guid=\"cbec-gen-{doc_no}\" version=\"1.0\" xmlns:ceb=\"http://www.chinaport.gov.cn/ceb\">\n"
    );
    for e in entities {
        x.push_str(&format!("<ceb:{ent}>"));
        match parts {
            Some((head, list)) => {
                x.push_str(&format!("<ceb:{head}>"));
                xml_fields(&mut x, e);
                x.push_str(&format!("</ceb:{head}>"));
                for row in e.get("items").and_then(|v| v.as_array()).into_iter().flatten() {
                    if let Some(r) = row.as_object() {
                        x.push_str(&format!("<ceb:{list}>"));
                        xml_fields(&mut x, r);
                        x.push_str(&format!("</ceb:{list}>"));
                    }
                }
            }
            None => xml_fields(&mut x, e),
        }
        x.push_str(&format!("</ceb:{ent}>\n"));
    }
    x.push_str("<ceb:BaseTransfer><ceb:copCode>GEN0001</ceb:copCode><ceb:copName>cbec gen</ceb:copName><ceb:dxpMode>DXP</ceb:dxpMode><ceb:dxpId>DXPGEN0000000001</ceb:dxpId></ceb:BaseTransfer>\n");
    x.push_str(&format!("</ceb:{msg}>\n"));
    Some(x)
}

/// Writes the story with CEB XML for the topics that have a CEB form (a folder per topic,
/// documents of up to 100 entities, in story order) and JSON lines for the others; messages
/// that are not JSON objects (the malformed ones) go to `<topic>.bad.jsonl`.
pub fn write_dir_xml(g: &Generated, dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    for (t, msgs) in &g.topics {
        if ceb_form(*t).is_none() {
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{}.jsonl", t.short())))?);
            for (_, p) in msgs {
                let line: Vec<u8> = p.iter().map(|b| if *b == b'\n' { b' ' } else { *b }).collect();
                f.write_all(&line)?;
                f.write_all(b"\n")?;
            }
            continue;
        }
        let sub = dir.join(t.short());
        std::fs::create_dir_all(&sub)?;
        let mut bad = Vec::new();
        let mut doc: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
        let mut n = 0usize;
        let flush = |doc: &mut Vec<serde_json::Map<String, serde_json::Value>>, n: &mut usize| -> anyhow::Result<()> {
            if let Some(x) = ceb_document(*t, doc, *n).filter(|_| !doc.is_empty()) {
                std::fs::write(sub.join(format!("{:06}.xml", *n)), x)?;
                *n += 1;
            }
            doc.clear();
            Ok(())
        };
        for (_, p) in msgs {
            match serde_json::from_slice::<serde_json::Value>(p) {
                Ok(serde_json::Value::Object(o))
                    if o.contains_key("appTime") || o.contains_key("accountingDate") || o.contains_key("leaveTime") =>
                {
                    doc.push(o);
                    if doc.len() == 100 {
                        flush(&mut doc, &mut n)?;
                    }
                }
                _ => bad.push(p),
            }
        }
        flush(&mut doc, &mut n)?;
        if !bad.is_empty() {
            let mut f = std::fs::File::create(dir.join(format!("{}.bad.jsonl", t.short())))?;
            for p in bad {
                let line: Vec<u8> = p.iter().map(|b| if *b == b'\n' { b' ' } else { *b }).collect();
                f.write_all(&line)?;
                f.write_all(b"\n")?;
            }
        }
    }
    std::fs::write(dir.join("expected.json"), serde_json::to_vec_pretty(&g.expected)?)?;
    Ok(())
}
