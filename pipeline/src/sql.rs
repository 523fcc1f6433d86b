//! `cbec sql`: DataFusion SQL over the pipeline's Parquet tables (`declared`,
//! `declared_items`, `channels`, `sorting`, `returns`, `receipts`, `summaries`,
//! `summary_items`), readable while the pipeline runs (files appear atomically), with
//! domain UDFs:
//!
//! * `hs_chapter(gcode)`, `hs_heading(gcode)`, `hs_subheading(gcode)`: 2, 4, 6 digits;
//! * `hs_description(code)`: the nomenclature text of a chapter/heading/subheading code;
//! * `ceb_time(text)`: a CEB `YYYYMMDDhhmmss` (China Standard Time) as a timestamp;
//! * `country_name(code)`, `currency_name(code)`: names of CEB country and currency codes.

use arrow::array::{Array, ArrayRef, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use cbec_schemas::arrow_schema::{TABLES, TZ, schema};
use cbec_schemas::hs::Nomenclature;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use std::path::Path;
use std::sync::Arc;

/// CEB country codes (GB/T 2659 numeric as used by China Customs) used in examples.
pub const COUNTRIES: [(&str, &str); 12] = [
    ("502", "United States"),
    ("303", "United Kingdom"),
    ("304", "Germany"),
    ("116", "Japan"),
    ("601", "Australia"),
    ("132", "Singapore"),
    ("133", "Korea"),
    ("305", "France"),
    ("344", "Russia"),
    ("136", "Thailand"),
    ("142", "China"),
    ("001", "Hong Kong"),
];
/// CEB currency codes.
pub const CURRENCIES: [(&str, &str); 8] = [
    ("142", "CNY"),
    ("502", "USD"),
    ("300", "EUR"),
    ("303", "GBP"),
    ("116", "JPY"),
    ("110", "HKD"),
    ("601", "AUD"),
    ("133", "KRW"),
];

fn map_strings(args: &[ColumnarValue], f: impl Fn(&str) -> Option<String>) -> datafusion::error::Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let a = arrays[0]
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Execution("expected a string argument".into()))?;
    let out: StringArray = a.iter().map(|v| v.and_then(&f)).collect();
    Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
}

fn string_udf(ctx: &SessionContext, name: &str, f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
    let f = Arc::new(f);
    ctx.register_udf(create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| map_strings(args, |s| f(s))),
    ));
}

/// Registers the domain UDFs.
pub fn register_udfs(ctx: &SessionContext, hs: Arc<Nomenclature>) {
    for (name, n) in [("hs_chapter", 2usize), ("hs_heading", 4), ("hs_subheading", 6)] {
        string_udf(ctx, name, move |g| g.get(..n).map(String::from));
    }
    string_udf(ctx, "hs_description", move |c| hs.get(c).map(|e| e.description.clone()));
    string_udf(ctx, "country_name", |c| COUNTRIES.iter().find(|(k, _)| *k == c).map(|(_, v)| v.to_string()));
    string_udf(ctx, "currency_name", |c| CURRENCIES.iter().find(|(k, _)| *k == c).map(|(_, v)| v.to_string()));
    ctx.register_udf(create_udf(
        "ceb_time",
        vec![DataType::Utf8],
        DataType::Timestamp(TimeUnit::Millisecond, Some(TZ.into())),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let a = arrays[0]
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Execution("ceb_time takes a string".into()))?;
            let out: TimestampMillisecondArray =
                a.iter().map(|v| v.and_then(cbec_schemas::EventTime::parse_ceb).map(|t| t.0)).collect();
            Ok(ColumnarValue::Array(Arc::new(out.with_timezone(TZ)) as ArrayRef))
        }),
    ));
}

/// A session with every table of `data/tables` registered (empty tables when a folder is
/// missing, so every query names valid tables).
pub async fn context(data: &Path, hs: Arc<Nomenclature>) -> anyhow::Result<SessionContext> {
    // CEB field names are camelCase: keep identifiers as written (`ebcCode`, not `ebccode`).
    let cfg =
        datafusion::prelude::SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = SessionContext::new_with_config(cfg);
    register_udfs(&ctx, hs);
    for t in TABLES {
        let s = schema(t).expect("known table");
        let dir = data.join("tables").join(t);
        let has_files = dir.is_dir() && walk_has_parquet(&dir);
        if has_files {
            let url = format!("{}/", std::fs::canonicalize(&dir)?.display());
            let opts = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            ctx.register_listing_table(t, url, opts, Some(s), None).await?;
        } else {
            ctx.register_table(t, Arc::new(MemTable::try_new(s, vec![vec![]])?))?;
        }
    }
    Ok(ctx)
}

fn walk_has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk_has_parquet(&p)
                } else {
                    p.extension().is_some_and(|x| x == "parquet")
                        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                }
            })
        })
        .unwrap_or(false)
}

/// Runs one query.
pub async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await?;
    Ok(df.collect().await?)
}

/// Renders batches as `table`, `csv` or `json` (one object per line).
pub fn render(batches: &[RecordBatch], format: &str) -> anyhow::Result<String> {
    Ok(match format {
        "csv" => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::Writer::new(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            String::from_utf8(buf)?
        }
        "json" => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            String::from_utf8(buf)?
        }
        _ => arrow::util::pretty::pretty_format_batches(batches)?.to_string(),
    })
}

/// Entry point of `cbec sql`.
pub fn main(data: &Path, format: &str, sql: Option<&str>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hs = Arc::new(Nomenclature::load_or_structural(None));
    rt.block_on(async {
        let ctx = context(data, hs).await?;
        match sql {
            Some(q) => {
                let b = query(&ctx, q).await?;
                print!("{}", render(&b, format)?);
                Ok(())
            }
            None => repl(&ctx, format).await,
        }
    })
}

async fn repl(ctx: &SessionContext, format: &str) -> anyhow::Result<()> {
    let mut ed = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cbec_sql_history"));
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    eprintln!("cbec sql: tables {}; end a statement with ';', quit with Ctrl-D", TABLES.join(", "));
    let mut buf = String::new();
    loop {
        let prompt = if buf.is_empty() { "cbec> " } else { "  ... " };
        match ed.readline(prompt) {
            Ok(line) => {
                buf.push_str(&line);
                buf.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let q = std::mem::take(&mut buf);
                let _ = ed.add_history_entry(q.trim());
                match query(ctx, q.trim().trim_end_matches(';')).await {
                    Ok(b) => println!("{}", render(&b, format)?),
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buf.clear(),
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = ed.save_history(h);
    }
    Ok(())
}

/// The documented example queries (README § Analytics), as (name, question, SQL).
pub const EXAMPLES: [(&str, &str, &str); 7] = [
    (
        "red_rate_by_company",
        "Red-channel rate by e-commerce company",
        "SELECT ebcCode, count(*) AS lists, sum(CASE WHEN channel = 'red' THEN 1 ELSE 0 END) AS red, \
         round(avg(CASE WHEN channel = 'red' THEN 1.0 ELSE 0.0 END), 4) AS red_rate \
         FROM channels GROUP BY ebcCode ORDER BY lists DESC, ebcCode LIMIT 20",
    ),
    (
        "red_rate_by_chapter",
        "Red-channel rate by HS chapter",
        "SELECT chapter, hs_description(chapter) AS description, count(*) AS lists, sum(red) AS red FROM \
         (SELECT hs_chapter(i.gcode) AS chapter, i.invtNo, max(CASE WHEN c.channel = 'red' THEN 1 ELSE 0 END) AS red \
          FROM declared_items i JOIN channels c ON c.invtNo = i.invtNo GROUP BY 1, 2) \
         GROUP BY 1, 2 ORDER BY lists DESC, chapter",
    ),
    (
        "inconsistent_payment_rate_by_firm",
        "Inconsistent-payment rate by payment firm (lists returned for a payment reason / declared lists paid through that firm: \
         the firm as known at declaration, else as named later by the receipt of a comparison concluded after it, else by a return)",
        "SELECT f.payCode, count(*) AS lists, count(r.orderNo) AS inconsistent, \
         round(CAST(count(r.orderNo) AS DOUBLE) / count(*), 4) AS rate \
         FROM (SELECT d.orderNo, COALESCE(d.payCode, c.payCode, x.payCode) AS payCode FROM declared d \
          LEFT JOIN (SELECT orderNo, max(payCode) AS payCode FROM receipts WHERE payCode IS NOT NULL GROUP BY orderNo) c \
          ON c.orderNo = d.orderNo \
          LEFT JOIN (SELECT orderNo, max(payCode) AS payCode FROM returns WHERE payCode IS NOT NULL GROUP BY orderNo) x \
          ON x.orderNo = d.orderNo) f \
         LEFT JOIN (SELECT DISTINCT orderNo FROM returns WHERE NOT cleared AND \
         (reasons LIKE '%amount_mismatch%' OR reasons LIKE '%currency_mismatch%' OR reasons LIKE '%duplicate_payment%' \
          OR reasons LIKE '%ebc_mismatch%')) r ON r.orderNo = f.orderNo \
         WHERE f.payCode IS NOT NULL GROUP BY f.payCode ORDER BY rate DESC, f.payCode",
    ),
    (
        "sorting_ports_by_line_hour",
        "Sorting-line ports by line per hour",
        "SELECT lineId, date_trunc('hour', scanTime) AS hour, port, count(*) AS scans \
         FROM sorting GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    ),
    (
        "inspection_hits_sampled_vs_manual",
        "Inspection hit rate (X-ray suspect) of sampled vs manually controlled lists",
        "SELECT CASE WHEN c.sampled THEN 'sampled' ELSE 'manual_control' END AS kind, \
         count(DISTINCT c.invtNo) AS lists, \
         count(DISTINCT CASE WHEN s.reasons LIKE '%xray_suspect%' THEN c.invtNo END) AS hits \
         FROM channels c LEFT JOIN sorting s ON s.invtNo = c.invtNo \
         WHERE c.sampled OR c.manualControl GROUP BY 1 ORDER BY 1",
    ),
    (
        "monthly_totals_by_country_port",
        "Monthly summary totals by destination country and exit port",
        "SELECT period, country, country_name(country) AS name, portCode, sum(listCount) AS lists, sum(totalPrice) AS total \
         FROM summaries GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4",
    ),
    (
        "declared_not_exited",
        "Lists declared but not exited N days (here 3) after declaration, as of the latest declaration",
        "SELECT d.invtNo, d.logisticsNo, d.declTime FROM declared d \
         LEFT JOIN (SELECT invtNo FROM receipts WHERE returnStatus = 899) x ON x.invtNo = d.invtNo \
         WHERE x.invtNo IS NULL AND d.declTime <= (SELECT max(declTime) FROM declared) - INTERVAL '3 days' \
         ORDER BY d.declTime, d.invtNo",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use cbec_schemas::Receipt;

    fn receipt(i: i64, pay_code: Option<&str>) -> Receipt {
        Receipt {
            id: format!("r/{i}").into(),
            invt_no: None,
            order_no: Some(format!("O{i}").into()),
            logistics_no: None,
            return_status: 120,
            return_info: "test".into(),
            return_time: cbec_schemas::EventTime(1_794_355_200_000 + i),
            control_ids: Vec::new(),
            pay_code: pay_code.map(Into::into),
        }
    }

    fn write(path: &Path, b: &RecordBatch) {
        let f = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, b.schema(), None).unwrap();
        w.write(b).unwrap();
        w.close().unwrap();
    }

    /// Receipts written before they had a `payCode` column (archives of earlier versions)
    /// are read with the column null, beside files that have it.
    #[test]
    fn receipts_written_without_the_pay_code_column_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tables").join("receipts");
        std::fs::create_dir_all(&t).unwrap();
        let old = cbec_schemas::arrow_schema::receipts_batch(&[receipt(1, None), receipt(2, None)]).unwrap();
        let pay = old.schema().index_of("payCode").unwrap();
        let keep: Vec<usize> = (0..old.num_columns()).filter(|i| *i != pay).collect();
        write(&t.join("old.parquet"), &old.project(&keep).unwrap());
        let new = cbec_schemas::arrow_schema::receipts_batch(&[receipt(3, Some("PAY1"))]).unwrap();
        write(&t.join("new.parquet"), &new);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = rt.block_on(async {
            let ctx = context(dir.path(), Arc::new(Nomenclature::structural())).await.unwrap();
            let b = query(&ctx, "SELECT orderNo, payCode FROM receipts ORDER BY orderNo").await.unwrap();
            render(&b, "csv").unwrap()
        });
        assert_eq!(out.trim(), "orderNo,payCode\nO1,\nO2,\nO3,PAY1");
    }
}
