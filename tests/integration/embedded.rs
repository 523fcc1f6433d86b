//! Embedded runs of generated stories against the generator's expected outcomes.

use crate::support::*;
use cbec_operators::rules::Rules;
use cbec_pipeline::config::Config;
use cbec_pipeline::generator::{GenConfig, generate, write_dir};
use cbec_pipeline::record::Record;
use cbec_schemas::Dec;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn same_seed_same_files() {
    let g = GenConfig { orders: 800, seed: 42, ..GenConfig::default() };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_dir(&generate(&g, &Rules::default(), &hs()), a.path()).unwrap();
    write_dir(&generate(&g, &Rules::default(), &hs()), b.path()).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(a.path()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(b.path().join(name)).unwrap(), "{name:?}");
        n += 1;
    }
    assert_eq!(n, 11, "10 topics + expected.json");
    let other = generate(&GenConfig { seed: 43, ..g.clone() }, &Rules::default(), &hs());
    assert_ne!(other.expected, generate(&g, &Rules::default(), &hs()).expected);
}

#[test]
fn pipeline_concludes_what_the_generator_expects() {
    let g = story(3000, 7);
    let (records, stats) = run_embedded(&g, 4);
    let ex = &g.expected;
    // Returns: exactly the injected inconsistencies, with their reasons.
    let mut returns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut red: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sampled = 0u64;
    let mut tax = 0u64;
    let mut declared = 0u64;
    let mut summaries: BTreeMap<u32, (i64, Dec)> = BTreeMap::new();
    let mut dead = 0u64;
    let mut exits = 0u64;
    for r in &records {
        match r {
            Record::Return(x) if x.cleared => {
                returns.remove(&x.order_no);
            }
            Record::Return(x) => {
                returns.insert(x.order_no.clone(), x.reasons.clone());
            }
            Record::Channel(c) => {
                for reason in &c.reasons {
                    red.entry(reason.code.to_string()).or_default().insert(c.invt_no.to_string());
                }
                sampled += c.reasons.iter().any(|r| r.code == "sampled") as u64;
                tax += c.tax_related as u64;
            }
            Record::Declared(_) => declared += 1,
            Record::Summary(s) => {
                let e = summaries.entry(s.period).or_insert((0, Dec::ZERO));
                e.0 += s.list_count;
                e.1 = e.1.add(s.total_price);
            }
            Record::Dead(_) => dead += 1,
            Record::Receipt(x) if x.return_status == 899 => exits += 1,
            _ => {}
        }
    }
    assert_eq!(returns, ex.returns);
    assert_eq!(declared, ex.declared);
    assert_eq!(tax, ex.tax_related);
    for (code, n) in &ex.red_reasons {
        assert_eq!(red.get(code).map_or(0, |s| s.len() as u64), *n, "red reason {code}");
    }
    // Sampling at the default 5%: within 3σ.
    let p = 0.05;
    let sigma = (declared as f64 * p * (1.0 - p)).sqrt();
    assert!((sampled as f64 - declared as f64 * p).abs() <= 3.0 * sigma, "{sampled} sampled of {declared}");
    assert_eq!(summaries, ex.summaries);
    assert_eq!(dead, ex.malformed);
    assert_eq!(exits, ex.exited);
    assert_eq!(stats.dead.values().sum::<u64>(), ex.malformed);
    assert!(stats.read_ahead, "generated input is read as fast as it decodes");
}

#[test]
fn same_output_at_1_2_and_4_partitions() {
    let g = story(1500, 9);
    let (one, _) = run_embedded(&g, 1);
    for p in [2, 4] {
        let (x, _) = run_embedded(&g, p);
        if x != one {
            let i = x.iter().zip(one.iter()).position(|(a, b)| a != b).unwrap_or(x.len().min(one.len()));
            eprintln!("DIFF at {i} of {} / {}", x.len(), one.len());
            for k in i.saturating_sub(3)..(i + 6).min(x.len()) {
                eprintln!("  {k}: {} {} | {} {}", x[k].topic(), x[k].id(), one[k].topic(), one[k].id());
            }
        }
        assert!(x == one, "partitions {p}: the record sequence differs");
    }
}

#[test]
fn malformed_messages_on_every_topic_go_to_the_dead_letter_topic() {
    let g = story(3000, 5);
    let (records, _) = run_embedded(&g, 2);
    let topics: BTreeSet<String> = records
        .iter()
        .filter_map(|r| if let Record::Dead(d) = r { Some(d.source_topic.clone()) } else { None })
        .collect();
    assert_eq!(topics.len(), 10, "{topics:?}");
    let codes: BTreeSet<String> =
        records.iter().filter_map(|r| if let Record::Dead(d) = r { Some(d.code.clone()) } else { None }).collect();
    assert!(codes.len() >= 3, "{codes:?}");
    assert!(codes.contains("future_time"), "a message dated a century ahead of its arrival: {codes:?}");
    // The good messages around them were processed.
    assert!(records.iter().filter(|r| matches!(r, Record::Declared(_))).count() as u64 == g.expected.declared);
}

#[test]
fn official_samples_run_through_the_pipeline_and_check() {
    let samples = shared().join("ceb/samples");
    let dir = tempfile::tempdir().unwrap();
    for (n, topic) in [
        ("303", "orders"),
        ("603", "lists"),
        ("403", "payments"),
        ("505", "waybills"),
        ("507", "arrivals"),
        ("509", "departures"),
    ] {
        std::fs::copy(samples.join(format!("CEB{n}Message.xml")), dir.path().join(format!("{topic}.xml"))).unwrap();
    }
    let out = std::process::Command::new(cbec_bin())
        .args(["check"])
        .args(
            ["orders.xml", "lists.xml", "payments.xml", "waybills.xml", "arrivals.xml", "departures.xml"]
                .map(|f| dir.path().join(f)),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("valid: CEB303=10 CEB403=10 CEB505=10 CEB507=10 CEB509=10 CEB603=10"), "{text}");
    assert!(text.contains("tolerated CEB303Message: 2 identical BaseTransfer blocks"), "{text}");
    let bad = dir.path().join("orders.jsonl");
    std::fs::write(&bad, "{\"orderNo\": \"A1\"}\nnot json\n").unwrap();
    let out = std::process::Command::new(cbec_bin()).args(["check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error missing_field") && text.contains("invalid: missing_field=1 unknown_encoding=1"),
        "{text}"
    );
    // A scan dated a century after its file was written, as `cbec run` dead-letters it; with
    // the bound off (`CBEC_MAX_LEAD_MS=0`) it is valid.
    let other = tempfile::tempdir().unwrap();
    let ahead = other.path().join("scans.jsonl");
    std::fs::write(
        &ahead,
        r#"{"logisticsNo": "LP1", "lineId": "L1", "scanId": "S1", "scanTime": "2126-11-11T12:00:00Z", "xray": null}"#,
    )
    .unwrap();
    let check = |lead: &str| {
        let out = std::process::Command::new(cbec_bin())
            .args(["check"])
            .arg(&ahead)
            .env("CBEC_MAX_LEAD_MS", lead)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = check("3600000");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("error future_time") && text.contains("invalid: future_time=1"), "{text}");
    let (code, text) = check("0");
    assert_eq!(code, Some(0), "{text}");
    // And through `cbec run --input`.
    let o = tempfile::tempdir().unwrap();
    std::fs::remove_file(&bad).unwrap();
    let out = std::process::Command::new(cbec_bin())
        .args(["run", "--metrics-addr", "", "--input"])
        .arg(dir.path())
        .arg("--output")
        .arg(o.path())
        .env("CBEC_HS_FILE", shared().join("data/hs/harmonized-system.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let declared = std::fs::read_to_string(o.path().join("cbec.declared.jsonl")).unwrap();
    assert_eq!(declared.lines().count(), 1, "one parcel L2018050700001: ten identical lists, one declaration");
}

#[test]
fn the_embedded_default_runs_with_no_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(cbec_bin())
        .args(["run", "--orders", "1000", "--metrics-addr", ""])
        .current_dir(dir.path())
        .env("CBEC_HS_FILE", shared().join("data/hs/harmonized-system.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "cbec run report",
        "in  cbec.orders",
        "out cbec.sorting",
        "returns:",
        "red of",
        "sorting ports:",
        "summary declarations:",
        "p99",
        "controls held at end:",
    ] {
        assert!(report.contains(needle), "{needle} missing from:\n{report}");
    }
    for t in ["declared", "receipts", "returns", "channels", "sorting", "releases", "summaries", "dlq"] {
        assert!(dir.path().join(format!("cbec-out/cbec.{t}.jsonl")).exists(), "{t}");
    }
    assert!(dir.path().join("cbec-out/tables/declared").is_dir());
}

#[test]
fn the_same_story_as_ceb_xml_gives_the_same_records() {
    use cbec_pipeline::generator::write_dir_xml;
    let g = story(1200, 13);
    let (json_dir, xml_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_dir(&g, json_dir.path()).unwrap();
    write_dir_xml(&g, xml_dir.path()).unwrap();
    assert!(xml_dir.path().join("orders/000000.xml").exists());
    let (a, da) = run_dir(json_dir.path());
    let (b, db) = run_dir(xml_dir.path());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "records from CEB XML differ from JSON lines");
    assert_eq!((da, db), (g.expected.malformed as usize, g.expected.malformed as usize));
}

/// `cbec run --input <input>` with the configuration `config` (TOML): its report and each
/// output topic's lines, sorted (two threads write some topics).
fn run_input(input: &std::path::Path, config: &str) -> (String, BTreeMap<String, Vec<String>>) {
    run_input_into(input, config, tempfile::tempdir().unwrap().path(), false)
}

/// [`run_input`] with the outputs in `o`, and Parquet with `parquet`.
fn run_input_into(
    input: &std::path::Path,
    config: &str,
    o: &std::path::Path,
    parquet: bool,
) -> (String, BTreeMap<String, Vec<String>>) {
    let cfg = o.join("cbec.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = std::process::Command::new(cbec_bin())
        .args(["run", "--metrics-addr", ""])
        .args(if parquet { None } else { Some("--no-parquet") })
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(o)
        .arg("--config")
        .arg(&cfg)
        .env("CBEC_HS_FILE", shared().join("data/hs/harmonized-system.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(o).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(topic) = name.strip_suffix(".jsonl") {
            let mut lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
            lines.sort();
            topics.insert(topic.to_string(), lines);
        }
    }
    (String::from_utf8_lossy(&out.stdout).into_owned(), topics)
}

/// Through `cbec run --input`: with the default retention (30 days), an order whose state
/// is older than it when event time reaches 20 November is dropped (the report says so),
/// and a message that arrives after that with an October time goes to `cbec.dlq` as
/// `expired`; with `state_retention_days = 0` in the config file nothing is dropped and the
/// late order is processed.
#[test]
fn the_state_retention_drops_old_state_and_dead_letters_expired_messages() {
    let order = |no: &str, t: &str| {
        serde_json::json!({"orderNo": no, "orderType": "E", "ebpCode": "EBP1", "ebcCode": "EBC1", "goodsValue": "100", "freight": "10", "currency": "142", "appTime": t,
            "items": [{"gnum": 1, "itemNo": "IT1", "itemName": "phone", "unit": "011", "currency": "142", "qty": "1", "price": "100", "totalPrice": "100"}]})
        .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let lines = [order("O0", "20261001100000"), order("O2", "20261120100000"), order("O1", "20261001110000")];
    std::fs::write(dir.path().join("orders.jsonl"), lines.join("\n")).unwrap();
    let run = |config: &str| {
        let (report, outputs) = run_input(dir.path(), config);
        (report, outputs.get("cbec.dlq").map(|l| l.join("\n")).unwrap_or_default())
    };
    let (report, dlq) = run("");
    assert!(report.contains("dropped by the state retention: 1 orders, 0 parcels"), "{report}");
    assert!(report.contains("dead letters by code: expired=1"), "{report}");
    assert!(report.contains("in  cbec.orders      2"), "{report}");
    let dead: Vec<serde_json::Value> = dlq.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(dead.len(), 1, "{dlq}");
    assert_eq!((dead[0]["code"].as_str(), dead[0]["offset"].as_i64()), (Some("expired"), Some(2)));
    assert!(dead[0]["payload"].as_str().unwrap().contains("\"O1\""), "{dlq}");
    let (report, dlq) = run("[rules]\nstate_retention_days = 0\n");
    assert!(!report.contains("dropped by the state retention") && !report.contains("expired"), "{report}");
    assert!(report.contains("in  cbec.orders      3"), "{report}");
    assert_eq!(dlq.lines().count(), 0, "{dlq}");
}

/// Through `cbec run --input`: a sorting-line scan dated a century after its file was
/// written goes to `cbec.dlq` as `future_time` and every other output is what the story
/// gives without it. With `max_lead_ms = 0` it is taken as given: event time moves a century
/// on, the state retention drops every order's and parcel's state (the report says so) and
/// the scan finds its parcel unknown (a decision the story does not have).
#[test]
fn a_message_dated_far_after_its_file_was_written_is_dead_lettered_and_changes_nothing_else() {
    let g = story(400, 21);
    let (plain, ahead) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_dir(&g, plain.path()).unwrap();
    write_dir(&g, ahead.path()).unwrap();
    let scans = std::fs::read_to_string(ahead.path().join("scans.jsonl")).unwrap();
    let mut scan: serde_json::Value = scans.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap();
    let time = scan["scanTime"].as_str().unwrap().to_string();
    scan["scanTime"] = format!("21{}", &time[2..]).into();
    scan["scanId"] = "S-AHEAD".into();
    let line = scan.to_string();
    std::fs::write(ahead.path().join("scans.jsonl"), format!("{scans}{line}\n")).unwrap();
    let (_, want) = run_input(plain.path(), "");
    let (report, mut got) = run_input(ahead.path(), "");
    let dlq = got.remove("cbec.dlq").unwrap();
    let mut want_rest = want.clone();
    let want_dlq = want_rest.remove("cbec.dlq").unwrap();
    assert!(got == want_rest, "outputs other than the dead letters differ from the story without the message");
    assert_eq!(dlq.len(), want_dlq.len() + 1, "{report}");
    let new: Vec<serde_json::Value> =
        dlq.iter().filter(|l| !want_dlq.contains(l)).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["code"], "future_time", "{}", new[0]);
    assert_eq!(new[0]["sourceTopic"], "cbec.scans");
    assert_eq!(new[0]["payload"].as_str(), Some(line.as_str()));
    assert!(new[0]["reason"].as_str().unwrap().contains("the file's modification time"), "{}", new[0]);
    assert!(!report.contains("dropped by the state retention"), "{report}");
    let (report, unbounded) = run_input(ahead.path(), "max_lead_ms = 0\n");
    assert!(report.contains("dropped by the state retention: "), "{report}");
    assert!(unbounded["cbec.dlq"] == want_dlq, "nothing more is dead-lettered without the bound");
    let extra: Vec<&String> = unbounded["cbec.sorting"].iter().filter(|l| !want["cbec.sorting"].contains(l)).collect();
    assert_eq!(extra.len(), 1, "{extra:?}");
    // The parcel was declared; with its state dropped it looks undeclared.
    let decided: serde_json::Value = serde_json::from_str(extra[0]).unwrap();
    assert_eq!(
        (decided["port"].as_str(), decided["reasons"].to_string()),
        (Some("hold"), r#"["no_declared_list"]"#.into())
    );
    let lno = decided["logisticsNo"].as_str().unwrap();
    assert!(want["cbec.declared"].iter().any(|l| l.contains(&format!("\"logisticsNo\":\"{lno}\""))), "{lno} declared");
}

/// Through `cbec run --input`: a second payment (another `payNo`) arriving after November's
/// declarations were made returns its list (`duplicate_payment`) and withdraws it from its
/// declaration: one withdrawal record per such list on `cbec.summaries`, with the list's
/// amount and count negative; the declarations, channels, sorting decisions and declared
/// lists are what the story gives without the late payments; and the analysts' monthly
/// totals over the Parquet tables (the SQL example) leave the withdrawn lists out.
#[test]
fn lists_returned_after_their_declaration_are_withdrawn_from_it() {
    use cbec_pipeline::sql::{EXAMPLES, context, query};
    let g = story(400, 23);
    let (plain, late) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_dir(&g, plain.path()).unwrap();
    write_dir(&g, late.path()).unwrap();
    let (_, want) = run_input(plain.path(), "");
    let json = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap();
    let dec = |v: &serde_json::Value| Dec::parse(v.as_str().expect("a decimal text")).unwrap();
    // Five declared lists, their orders and amounts.
    let summarized: BTreeSet<String> = want["cbec.summaries"]
        .iter()
        .flat_map(|l| {
            json(l)["invtNos"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    let picked: BTreeMap<String, (String, Dec)> = want["cbec.declared"]
        .iter()
        .map(json)
        .filter(|d| summarized.contains(d["invtNo"].as_str().unwrap()))
        .take(5)
        .map(|d| {
            let items = d["items"].as_array().unwrap();
            let total = items.iter().map(|i| dec(&i["totalPrice"])).sum();
            (d["invtNo"].as_str().unwrap().to_string(), (d["orderNo"].as_str().unwrap().to_string(), total))
        })
        .collect();
    assert_eq!(picked.len(), 5);
    let path = late.path().join("payments.jsonl");
    let mut payments = std::fs::read_to_string(&path).unwrap();
    for (order, _) in picked.values() {
        let mut p = payments
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|p| p["orderNo"].as_str() == Some(order) && p["payNo"].is_string())
            .expect("the order's payment");
        p["payNo"] = format!("LATE-{order}").into();
        p["accountingDate"] = "20261205100000".into();
        payments.push_str(&format!("{p}\n"));
    }
    std::fs::write(&path, payments).unwrap();
    // Sent on 6 December: within the bound on event times ahead of sending.
    let sent = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_515_200);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(sent).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (report, got) = run_input_into(late.path(), "", out.path(), true);
    for topic in ["cbec.declared", "cbec.channels", "cbec.sorting"] {
        assert!(got[topic] == want[topic], "{topic} differs");
    }
    let (withdrawals, declarations): (Vec<&String>, Vec<&String>) =
        got["cbec.summaries"].iter().partition(|l| json(l)["withdrawal"] == true);
    assert!(declarations.into_iter().eq(want["cbec.summaries"].iter()), "the declarations are as before");
    assert_eq!(withdrawals.len(), picked.len(), "{report}");
    let declared = want["cbec.summaries"].len();
    assert!(report.contains(&format!("summary declarations: {declared}, withdrawals: 5 (")), "{report}");
    let mut withdrawn = BTreeMap::new();
    for w in withdrawals.iter().map(|l| json(l)) {
        let invt = w["invtNos"][0].as_str().unwrap().to_string();
        assert_eq!(w["invtNos"].as_array().unwrap().len(), 1);
        assert!(w["summaryId"].as_str().unwrap().contains("/w"), "{w}");
        assert_eq!(w["listCount"], -1);
        withdrawn.insert(invt, dec(&w["totalPrice"]));
    }
    let expected: BTreeMap<String, Dec> = picked.iter().map(|(i, (_, t))| (i.clone(), Dec::ZERO.sub(*t))).collect();
    assert_eq!(withdrawn, expected);
    let returned: BTreeSet<String> = got["cbec.returns"]
        .iter()
        .filter(|l| !want["cbec.returns"].contains(l))
        .map(json)
        .filter(|r| r["reasons"].to_string().contains("duplicate_payment"))
        .map(|r| r["orderNo"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(returned, picked.values().map(|(o, _)| o.clone()).collect());
    // The monthly totals, as analysts query them.
    let (want_lists, want_total) = want["cbec.summaries"]
        .iter()
        .map(json)
        .fold((0i64, Dec::ZERO), |(n, t), s| (n + s["listCount"].as_i64().unwrap(), t.add(dec(&s["totalPrice"]))));
    let monthly = EXAMPLES.iter().find(|(n, _, _)| *n == "monthly_totals_by_country_port").unwrap().2;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let b = rt.block_on(async {
        let ctx = context(out.path(), std::sync::Arc::new(hs())).await.unwrap();
        query(&ctx, &format!("SELECT CAST(sum(lists) AS BIGINT) AS lists, sum(total) AS total FROM ({monthly})"))
            .await
            .unwrap()
    });
    use arrow::array::AsArray;
    let lists = b[0].column_by_name("lists").unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(0);
    let total = Dec::from_scaled(
        b[0].column_by_name("total").unwrap().as_primitive::<arrow::datatypes::Decimal128Type>().value(0),
    );
    let gone: Dec = picked.values().map(|(_, t)| *t).sum();
    assert_eq!((lists, total), (want_lists - 5, want_total.sub(gone)));
}

/// Every `CBEC_*` setting the Docker files give (`docker/compose.yml`, `docker/Dockerfile`)
/// names a setting and loads: the stack cannot be started on these machines, so a renamed
/// or mistyped variable would otherwise go unnoticed (cbec ignores what it does not know,
/// with a warning).
#[test]
fn the_docker_files_settings_load() {
    let root = crate::support::repo_root();
    let mut settings = Vec::new();
    let compose = std::fs::read_to_string(root.join("docker/compose.yml")).unwrap();
    for line in compose.lines().map(str::trim).filter(|l| l.starts_with("CBEC_")) {
        let (k, v) = line.split_once(':').expect("KEY: value");
        settings.push((k.to_string(), v.trim().to_string()));
    }
    settings.extend(crate::support::dockerfile_env());
    let names: BTreeMap<String, String> = settings.iter().cloned().collect();
    for k in ["CBEC_STAGE", "CBEC_CHECKPOINT_STORE", "CBEC_GROUP_ID", "CBEC_METRICS_ADDR"] {
        assert!(names.contains_key(k), "{k} is among the Docker files' settings: {names:?}");
    }
    assert_eq!(Config::unknown_env(&names), Vec::<String>::new());
    for (k, v) in settings {
        let env = [(k.clone(), v.clone())].into_iter().collect();
        assert!(Config::load(None, &env).is_ok(), "{k}={v} does not load: {:?}", Config::load(None, &env));
    }
}

/// The Docker build context (the repository root, `COPY . .` in `docker/Dockerfile`) holds
/// the workspace but not the local build output or the Git history: without a
/// `.dockerignore`, a build from a working copy sends gigabytes of `target/` to the engine
/// and copies them into the build stage.
#[test]
fn the_docker_build_context_holds_the_workspace_not_the_build_output() {
    let root = crate::support::repo_root();
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore at the repository root");
    let patterns: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    // A top-level name is left out when a pattern names it (`name`, `name/`, `/name`).
    let left_out = |name: &str| patterns.iter().any(|p| p.trim_matches('/') == name);
    for name in ["target", ".git", "cbec-out"] {
        assert!(left_out(name), "{name} is in the Docker build context: {patterns:?}");
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest.lines().find(|l| l.starts_with("members")).expect("workspace members");
    let members: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 4, "{members:?}");
    for name in members.iter().copied().chain(["Cargo.toml", "Cargo.lock"]) {
        assert!(!left_out(name), "{name} is needed by the build and left out of its context");
        assert!(root.join(name).exists(), "{name}");
    }
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY . ."), "the Dockerfile copies the context whole");
}

/// The value of `key` (with its colon) in the text of a `/proc/<pid>/status` file.
fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// The `cbec` binary turns transparent huge pages off for its process first thing
/// (`pipeline/src/alloc.rs`), whatever it is asked to do, and leaves them to the system when
/// `MIMALLOC_ALLOW_THP` is set: read from the kernel's view of a running process (`cbec sql`
/// waiting for a statement on its standard input).
#[test]
fn the_cbec_process_runs_without_transparent_huge_pages() {
    let thp_enabled = |allow: Option<&str>| {
        let logs = tempfile::tempdir().unwrap();
        let (out, err) = (logs.path().join("out"), logs.path().join("err"));
        let mut c = std::process::Command::new(cbec_bin());
        c.args(["sql", "--data"]).arg(logs.path().join("no-tables-here"));
        c.stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        c.env_remove("MIMALLOC_ALLOW_THP");
        if let Some(v) = allow {
            c.env("MIMALLOC_ALLOW_THP", v);
        }
        let mut child = c.spawn().expect("cbec sql");
        let status = format!("/proc/{}/status", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // The flag is set first thing in `main`: once the prompt's banner is out, `main` has
        // run past it (the prompt then waits on the open standard input). Kernels before 5.0
        // do not show the flag (`None`).
        let said = || [&out, &err].iter().any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0));
        while !said() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(said(), "cbec sql printed nothing in 60 s");
        let seen = status_field(&std::fs::read_to_string(&status).unwrap_or_default(), "THP_enabled:");
        let _ = child.kill();
        let _ = child.wait();
        seen
    };
    let Some(off) = thp_enabled(None) else {
        eprintln!("SKIPPED: this kernel does not show THP_enabled in /proc/<pid>/status");
        return;
    };
    assert_eq!(off, "0", "cbec left transparent huge pages on");
    assert_eq!(thp_enabled(Some("1")).as_deref(), Some("1"), "MIMALLOC_ALLOW_THP=1 should leave them to the system");
}

/// `pin_engine`: while a run is under way, the engine thread may use one CPU (the last)
/// and every other thread of the process only the others.
#[test]
fn pin_engine_gives_the_engine_thread_a_cpu_of_its_own() {
    let logs = tempfile::tempdir().unwrap();
    let err = logs.path().join("err");
    let mut child = std::process::Command::new(cbec_bin())
        .args(["run", "--orders", "100000", "--metrics-addr", "", "--no-parquet", "--output"])
        .arg(logs.path().join("out"))
        .env("CBEC_HS_FILE", shared().join("data/hs/harmonized-system.csv"))
        .env("CBEC_PIN_ENGINE", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("cbec run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let said = loop {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("pin_engine") || l.contains("engine thread pinned")) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no word of pinning in 120 s:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            Some((status_field(&status, "Name:")?, status_field(&status, "Cpus_allowed_list:")?))
        })
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        assert!(said.contains("not pinned"), "{said}");
        eprintln!("SKIPPED: one CPU, nothing to pin to");
        return;
    }
    let cpu: usize = said
        .split("pinned to CPU ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    // `Cpus_allowed_list` reads like `0-2,5`.
    let list = |allowed: &str| -> Vec<usize> {
        allowed
            .split(',')
            .flat_map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
            })
            .collect()
    };
    let engine: Vec<_> = threads.iter().filter(|(_, allowed)| list(allowed) == [cpu]).collect();
    assert_eq!(engine.len(), 1, "one thread on CPU {cpu} alone: {threads:?}");
    assert!(threads.len() > 3, "{threads:?}");
    for (name, allowed) in threads.iter().filter(|(_, allowed)| list(allowed) != [cpu]) {
        assert!(!list(allowed).contains(&cpu), "{name} may still run on the engine's CPU {cpu}: {allowed}");
    }
}
