//! SQL over the Parquet written by an embedded run, against the generator's expectations.

use crate::support::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Decimal128Type, Int64Type, UInt64Type};
use cbec_pipeline::config::Config;
use cbec_pipeline::embedded;
use cbec_pipeline::sink::FileSink;
use cbec_pipeline::sql::{EXAMPLES, context, query, render};
use cbec_schemas::Dec;
use std::sync::Arc;

fn example(name: &str) -> &'static str {
    EXAMPLES.iter().find(|(n, _, _)| *n == name).map(|(_, _, q)| *q).expect("example")
}

fn i64_col(b: &[arrow::record_batch::RecordBatch], col: &str) -> Vec<i64> {
    b.iter()
        .flat_map(|b| {
            let a = b.column_by_name(col).expect(col);
            (0..a.len()).map(move |i| {
                if let Some(x) = a.as_primitive_opt::<Int64Type>() {
                    x.value(i)
                } else {
                    a.as_primitive::<UInt64Type>().value(i) as i64
                }
            })
        })
        .collect()
}

#[test]
fn example_queries_answer_from_the_parquet_tables() {
    let g = story(2500, 21);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { parquet_rows: 700, ..Config::default() };
    let sink = FileSink::new(dir.path(), "cbec.", Some(cfg.parquet_rows)).unwrap();
    let stats = embedded::run(&cfg, hs(), g.inputs(), Box::new(sink), None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = context(dir.path(), Arc::new(hs())).await.unwrap();
        for (name, _, q) in EXAMPLES {
            let b = query(&ctx, q).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!render(&b, "table").unwrap().is_empty());
        }
        // Every declared list has a channel; red counts agree with the run.
        let b = query(&ctx, "SELECT count(*) AS n, sum(CASE WHEN channel = 'red' THEN 1 ELSE 0 END) AS red FROM channels").await.unwrap();
        assert_eq!(i64_col(&b, "n"), vec![g.expected.declared as i64]);
        assert_eq!(i64_col(&b, "red"), vec![stats.red.0 as i64]);
        let b = query(&ctx, &format!("SELECT sum(red) AS red FROM ({})", example("red_rate_by_company").replace(" LIMIT 20", ""))).await.unwrap();
        assert_eq!(i64_col(&b, "red"), vec![stats.red.0 as i64]);
        // Red rate by chapter: what counting distinct lists over the join says (the plain
        // form the example is a faster rewrite of), and every list's red counted in some
        // chapter.
        let by_chapter = "SELECT chapter, description, lists, red FROM ({q}) ORDER BY chapter";
        let fast = query(&ctx, &by_chapter.replace("{q}", example("red_rate_by_chapter"))).await.unwrap();
        let plain = "SELECT hs_chapter(i.gcode) AS chapter, hs_description(hs_chapter(i.gcode)) AS description, \
             count(DISTINCT c.invtNo) AS lists, count(DISTINCT CASE WHEN c.channel = 'red' THEN c.invtNo END) AS red \
             FROM declared_items i JOIN channels c ON c.invtNo = i.invtNo GROUP BY 1, 2";
        let plain = query(&ctx, &by_chapter.replace("{q}", plain)).await.unwrap();
        let table = |b: &[arrow::record_batch::RecordBatch]| render(b, "table").unwrap();
        assert_eq!(table(&fast), table(&plain));
        assert!(i64_col(&fast, "lists").len() > 5, "{}", table(&fast));
        let lists: i64 = i64_col(&fast, "lists").iter().sum();
        let red: i64 = i64_col(&fast, "red").iter().sum();
        assert!(lists >= g.expected.declared as i64 && red >= stats.red.0 as i64 && red < lists, "{lists} {red}");
        // Monthly totals equal the generator's expected summary totals, in exact decimals.
        let b = query(&ctx, &format!("SELECT period, sum(lists) AS lists, sum(total) AS total FROM ({}) GROUP BY period", example("monthly_totals_by_country_port"))).await.unwrap();
        let lists = i64_col(&b, "lists");
        let total = Dec::from_scaled(b[0].column_by_name("total").unwrap().as_primitive::<Decimal128Type>().value(0));
        let (want_lists, want_total) = g.expected.summaries.values().next().unwrap();
        assert_eq!((lists[0], total), (*want_lists, *want_total));
        // Manual control hits exactly the lists the generator put under control.
        let b = query(&ctx, &format!("SELECT lists FROM ({}) WHERE kind = 'manual_control'", example("inspection_hits_sampled_vs_manual"))).await.unwrap();
        let manual_only = i64_col(&b, "lists");
        assert!(manual_only[0] as u64 <= g.expected.red_reasons["manual_control"] && manual_only[0] > 0);
        // Payment-firm rate: every declared list whose order was paid is counted once, those
        // paid after their declaration too (their firm named by a later receipt), and the
        // generator's payment inconsistencies show up.
        let b = query(&ctx, &format!("SELECT sum(lists) AS lists, sum(inconsistent) AS bad FROM ({})", example("inconsistent_payment_rate_by_firm"))).await.unwrap();
        let orders = query(&ctx, "SELECT orderNo FROM declared").await.unwrap();
        let unpaid = |o: &str| g.expected.returns.get(o).is_some_and(|r| r.iter().any(|x| x == "payment_missing"));
        let paid = orders.iter().flat_map(|b| {
            let a = b.column_by_name("orderNo").unwrap().as_string::<i32>().clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        });
        let paid = paid.filter(|o| !unpaid(o)).count() as i64;
        assert_eq!(i64_col(&b, "lists"), vec![paid]);
        let at_declaration = query(&ctx, "SELECT count(*) AS n FROM declared WHERE payCode IS NOT NULL").await.unwrap();
        assert!(i64_col(&at_declaration, "n")[0] < paid, "some lists were paid after their declaration");
        let payment_returns = g.expected.returns.values().filter(|r| r.iter().any(|x| x != "payment_missing")).count() as i64;
        let bad = i64_col(&b, "bad")[0];
        assert!(bad > 0 && bad <= payment_returns, "{bad} of {payment_returns}");
        // Sorting decisions per line and hour add up to all decisions.
        let b = query(&ctx, &format!("SELECT sum(scans) AS n FROM ({})", example("sorting_ports_by_line_hour"))).await.unwrap();
        assert_eq!(i64_col(&b, "n"), vec![stats.output["sorting"] as i64]);
        // Declared but not exited (N = 0 days here): declared minus exited.
        let q0 = example("declared_not_exited").replace("INTERVAL '3 days'", "INTERVAL '0 days'");
        let b = query(&ctx, &format!("SELECT count(*) AS n FROM ({q0})")).await.unwrap();
        assert_eq!(i64_col(&b, "n"), vec![(g.expected.declared - g.expected.exited) as i64]);
        // UDFs.
        let b = query(&ctx, "SELECT hs_chapter('8517130000') AS c, hs_heading('8517130000') AS h, hs_description('8517') AS d, country_name('502') AS n, currency_name('142') AS cur, ceb_time('20261111200000') AS t").await.unwrap();
        let t = render(&b, "csv").unwrap();
        assert!(t.contains("85,8517,") && t.contains("United States,CNY,2026-11-11T20:00:00+08:00"), "{t}");
        // Errors are errors, not panics.
        assert!(query(&ctx, "SELEC nonsense").await.is_err());
        assert!(query(&ctx, "SELECT * FROM no_such_table").await.is_err());
    });
    // The CLI: a bad query exits with status 2 and says why; JSON output works.
    let out = std::process::Command::new(cbec_bin())
        .args(["sql", "--data"])
        .arg(dir.path())
        .arg("SELECT * FROM nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(cbec_bin())
        .args(["sql", "--format", "json", "--data"])
        .arg(dir.path())
        .arg("SELECT count(*) AS n FROM declared")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{{\"n\":{}}}", g.expected.declared));
}
