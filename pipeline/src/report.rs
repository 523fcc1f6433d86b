//! The short report printed at the end of `cbec run`, and the progress line.

use crate::runner::RunStats;
use std::fmt::Write;

/// One progress line (once a second, on the engine thread: counts only; the p99 it used to
/// show sorted every latency held, a pause that grew with the run; live latency is the
/// `cbec_decision_latency_seconds` histogram).
pub fn progress_line(s: &RunStats) -> String {
    let n: u64 = s.input.values().sum();
    let rate = n as f64 / s.elapsed.as_secs_f64().max(1e-9);
    format!(
        "cbec: {n} in ({rate:.0}/s), {} out, {} dead letters, {} decisions",
        s.output.values().sum::<u64>(),
        s.dead.values().sum::<u64>(),
        s.ports.values().sum::<u64>()
    )
}

/// The final report.
pub fn render(s: &RunStats) -> String {
    let mut r = String::new();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let total = s.total_in();
    let _ = writeln!(r, "cbec run report");
    let _ = writeln!(r, "  input messages/entities: {total} in {secs:.2} s = {:.0}/s", total as f64 / secs);
    let input_secs = s.input_elapsed.as_secs_f64();
    if input_secs > 0.0 {
        let _ = writeln!(
            r,
            "    sustained: {:.0}/s until the last input ({input_secs:.2} s; then {:.2} s for the end of input: timers due, periods closed, outputs flushed)",
            total as f64 / input_secs,
            (secs - input_secs).max(0.0)
        );
    }
    for (k, v) in &s.input {
        let _ = writeln!(r, "    in  cbec.{k:<11} {v}");
    }
    for (k, v) in &s.output {
        let _ = writeln!(r, "    out cbec.{k:<11} {v}");
    }
    if !s.dead.is_empty() {
        let d: Vec<String> = s.dead.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(r, "  dead letters by code: {}", d.join(" "));
    }
    let summaries = s.output.get("summaries").copied().unwrap_or(0);
    // Records on `cbec.summaries`: declarations, and withdrawals when there were any.
    let summaries = match s.withdrawals {
        0 => summaries.to_string(),
        w => format!("{}, withdrawals: {w} (lists returned after their declaration was made)", summaries - w),
    };
    if s.summarize_instance {
        let _ = writeln!(r, "  summary declarations: {summaries}");
        let _ = writeln!(r, "  summarize state at end: {} B", s.state_bytes.2);
        return r;
    }
    let returns = s.output.get("returns").copied().unwrap_or(0);
    let _ = writeln!(r, "  returns: {returns}");
    let (red, all) = s.red;
    let _ = writeln!(
        r,
        "  channels: {red} red of {all} ({:.2}% red)",
        if all == 0 { 0.0 } else { red as f64 * 100.0 / all as f64 }
    );
    let p: Vec<String> = s.ports.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(r, "  sorting ports: {}", if p.is_empty() { "none".into() } else { p.join(" ") });
    match s.output.get("exited") {
        Some(n) => {
            let _ = writeln!(r, "  summary declarations: built by the summarize instances ({n} exits handed over)");
        }
        None => {
            let _ = writeln!(r, "  summary declarations: {summaries}");
        }
    }
    let pct = |q: f64| s.latencies.pct(q).map_or("-".to_string(), |v| format!("{v} µs"));
    let _ =
        writeln!(r, "  scan→decision latency (in-process): p50 {} p99 {} p99.9 {}", pct(0.5), pct(0.99), pct(0.999));
    if s.latencies.stride > 1 {
        let _ = writeln!(
            r,
            "    (over one decision in {} of the {}: a uniform sample, held bounded)",
            s.latencies.stride, s.latencies.timed
        );
    }
    if s.read_ahead && !s.latencies.us.is_empty() {
        let _ = writeln!(
            r,
            "    (input read as fast as it decodes: this includes each scan's wait behind the input read before it; latency at a fixed offered load: BENCHMARKS.md)"
        );
    }
    let (d, c, m) = s.state_bytes;
    let _ = writeln!(
        r,
        "  state at end: declare {d} B ({} orders), clear {c} B ({} parcels), summarize {m} B",
        s.keys.0, s.keys.1
    );
    if s.controls.0 > 0 {
        let _ = writeln!(
            r,
            "  controls held at end: {} ({} aimed at one list, order or parcel: they go with its state)",
            s.controls.0, s.controls.1
        );
    }
    if s.expired != (0, 0) {
        let _ = writeln!(r, "  dropped by the state retention: {} orders, {} parcels", s.expired.0, s.expired.1);
    }
    if s.forced > 0 {
        let _ = writeln!(r, "  sequencer released {} items early (bounded buffer)", s.forced);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages in separate processes report what they do: the engine stage the exits it
    /// handed over (it builds no summary), an instance its summaries (no channels, ports or
    /// decisions, which it does not make).
    #[test]
    fn stages_report_what_they_do() {
        let mut engine = RunStats::default();
        engine.input.insert("orders", 10);
        engine.output.insert("exited", 7);
        let r = render(&engine);
        assert!(r.contains("summary declarations: built by the summarize instances (7 exits handed over)"), "{r}");
        let mut instance = RunStats { summarize_instance: true, ..RunStats::default() };
        instance.input.insert("exited", 7);
        instance.output.insert("summaries", 2);
        let r = render(&instance);
        assert!(r.contains("summary declarations: 2") && !r.contains("sorting ports"), "{r}");
        // An instance that held no partition read nothing: still an instance's report.
        let idle = render(&RunStats { summarize_instance: true, ..RunStats::default() });
        assert!(idle.contains("summary declarations: 0") && !idle.contains("sorting ports"), "{idle}");
        let all = render(&RunStats { output: [("summaries", 3)].into_iter().collect(), ..RunStats::default() });
        assert!(all.contains("summary declarations: 3") && all.contains("sorting ports"), "{all}");
        // Withdrawals are said apart from the declarations.
        let some = RunStats {
            withdrawals: 1,
            ..RunStats { output: [("summaries", 3)].into_iter().collect(), ..RunStats::default() }
        };
        assert!(render(&some).contains("summary declarations: 2, withdrawals: 1 ("), "{}", render(&some));
        let one = RunStats { withdrawals: 2, ..instance };
        assert!(render(&one).contains("summary declarations: 0, withdrawals: 2 ("), "{}", render(&one));
    }

    /// An embedded run's latency, its input read ahead, says what it includes; a paced
    /// run's does not need to.
    #[test]
    fn a_read_ahead_latency_says_what_it_includes() {
        let note = "includes each scan's wait behind the input read before it";
        let read_ahead = RunStats {
            latencies: crate::runner::Latencies { us: vec![5, 7], stride: 1, timed: 2 },
            read_ahead: true,
            ..RunStats::default()
        };
        assert!(render(&read_ahead).contains(note));
        let paced = RunStats { read_ahead: false, ..read_ahead };
        assert!(!render(&paced).contains(note));
    }
}
