//! Shared helpers of the benches: sample messages and machine facts.
#![forbid(missing_docs)]

pub mod kafka_latency;

/// A JSON order with `items` rows (1–3), as a platform would send it.
pub fn order_json(n: usize, items: usize) -> Vec<u8> {
    let rows: Vec<String> = (0..items)
        .map(|k| {
            format!(
                r#"{{"gnum":{},"itemNo":"P{:05}","itemName":"phone case","unit":"011","currency":"142","qty":"2","price":"19.95","totalPrice":"39.9"}}"#,
                k + 1,
                n % 2000 + k
            )
        })
        .collect();
    format!(
        r#"{{"orderNo":"O{n:09}","orderType":"E","ebpCode":"EBP0001","ebcCode":"EBC{:05}","goodsValue":"{}","freight":"8","currency":"142","appType":"1","appTime":"20261111201530","items":[{}]}}"#,
        n % 2000,
        format_args!("{}.{}", 399 * items / 10, 399 * items % 10),
        rows.join(",")
    )
    .into_bytes()
}

/// `nproc`, CPU model and memory, for printing next to every figure.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem} GiB")
}

/// Peak resident set size of this process in MiB (`VmHWM`).
pub fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024)
        })
        .unwrap_or(0)
}
