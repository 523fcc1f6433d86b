//! The summarize stage on its own thread, downstream of the engine thread: exited lists in,
//! monthly summary declarations out (ARCHITECTURE: stage 3). Closing a period summarizes
//! every list of the month at once (seconds at peak volume); here that work neither stops
//! the engine thread, and so the sorting decisions, nor waits for it.
//!
//! Order and checkpoints: the engine hands over exited lists, watermarks and control
//! messages in one ordered queue. A checkpoint cut travels through it: once everything
//! before it is summarized, the stage adds its state (a copy the first time, then what
//! changed since the previous cut) and forwards the cut to the sink, behind the summaries
//! that precede it (the engine's own records before the cut are already in the sink's
//! queue). A flush travels the same way.

use crate::metrics as m;
use crate::record::Record;
use crate::runner::SinkMsg;
use cbec_operators::Operator;
use cbec_operators::engine::Exited;
use cbec_operators::rules::Rules;
use cbec_operators::summarize::{Summarize, SummarizeCut};
use cbec_operators::tracked::Incremental;
use cbec_schemas::EventTime;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::thread::JoinHandle;

/// What the engine thread sends the stage, in order.
pub enum SumMsg {
    /// A list that exited.
    Exited(Exited),
    /// Event time advanced.
    Watermark(EventTime),
    /// A checkpoint cut: called with the stage's state ([`Incremental::cut`]: a copy the
    /// first time, then what changed) once everything before it is summarized; what it
    /// returns goes to the sink.
    Cut(Box<dyn FnOnce(SummarizeCut) -> SinkMsg + Send>),
    /// A flush, passed on to the sink behind the summaries before it.
    Flush(Sender<anyhow::Result<()>>),
}

/// What the stage reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageEnd {
    /// Summary declarations written (withdrawals included).
    pub summaries: u64,
    /// Of them, withdrawals of lists returned after their declaration was made.
    pub withdrawals: u64,
    /// Bytes of summarize state at the end.
    pub state_bytes: usize,
    /// Exits handed over to the summarize instances (stages in separate processes).
    pub handed: u64,
}

/// Starts a thread `name` running `body` over what the engine thread sends; at most `cap`
/// batches queued (a slow stage slows the engine).
pub(crate) fn spawn_stage(
    name: &str,
    cap: usize,
    body: impl FnOnce(Receiver<Vec<SumMsg>>) -> anyhow::Result<StageEnd> + Send + 'static,
) -> (Sender<Vec<SumMsg>>, JoinHandle<anyhow::Result<StageEnd>>) {
    let (tx, rx) = bounded::<Vec<SumMsg>>(cap.max(1));
    let h = std::thread::Builder::new().name(name.into()).spawn(move || body(rx)).expect("spawn a stage thread");
    (tx, h)
}

/// Starts the stage with `state` (restored or new); batches of messages in, at most `cap`
/// batches queued (a slow stage slows the engine).
pub fn spawn(
    mut state: Summarize,
    mut rules: Rules,
    sink: Sender<SinkMsg>,
    cap: usize,
) -> (Sender<Vec<SumMsg>>, JoinHandle<anyhow::Result<StageEnd>>) {
    spawn_stage("cbec-summarize", cap, move |rx| {
        let stopped = || anyhow::anyhow!("sink stopped");
        let mut end = StageEnd::default();
        let mut sums = Vec::new();
        for batch in rx {
            for msg in batch {
                match msg {
                    // An exit can withdraw a list from a declaration made (returned late).
                    SumMsg::Exited(x) => state.process(&mut rules, x, &mut sums),
                    SumMsg::Watermark(wm) => state.on_watermark(&mut rules, wm, &mut sums),
                    SumMsg::Cut(f) => {
                        m::StateSize { operator: "summarize", bytes: state.state_size() }.emit();
                        sink.send(f(state.cut())).map_err(|_| stopped())?;
                    }
                    SumMsg::Flush(ack) => sink.send(SinkMsg::Flush(ack)).map_err(|_| stopped())?,
                }
                if !sums.is_empty() {
                    end.summaries += sums.len() as u64;
                    end.withdrawals += sums.iter().filter(|s| s.withdrawal).count() as u64;
                    m::SummariesOut { total: end.summaries }.emit();
                    let records = sums.drain(..).map(Record::Summary).collect();
                    sink.send(SinkMsg::Records(records)).map_err(|_| stopped())?;
                }
            }
        }
        end.state_bytes = state.state_size();
        Ok(end)
    })
}

/// An exited list `n` of company `ebc` (tests).
#[cfg(test)]
pub(crate) fn test_exited(n: u64, ebc: &str, seq: u64, summarizable: bool) -> Exited {
    use cbec_schemas::{Decoded, Decoder, Entity, Topic};
    let v = serde_json::json!({"orderNo": format!("O{n}"), "logisticsNo": format!("L{n}"), "logisticsCode": "LOG1", "ebpCode": "EBP1", "ebcCode": ebc, "ownerCode": ebc, "agentCode": "AG1", "customsCode": "5141", "portCode": "5141", "ieDate": "20261111", "statisticsFlag": "B", "tradeMode": "9610", "trafMode": "4", "country": "USA", "POD": "USLAX", "freight": "10", "insuredFee": "0", "packNo": 1, "grossWeight": "1.2", "netWeight": "1", "appType": "1", "appStatus": "1", "appTime": "20261111100000", "copNo": "C1",
        "items": [{"gnum": 1, "itemNo": "IT1", "gcode": "8517130000", "gname": "phone", "gmodel": "x", "country": "USA", "currency": "142", "qty": "1", "qty1": "1", "unit": "011", "unit1": "011", "price": "100", "totalPrice": "100"}]});
    let Decoded::One(Ok(Entity::List(l))) = Decoder::new().decode(Topic::Lists, &serde_json::to_vec(&v).unwrap())
    else {
        panic!("test list does not decode")
    };
    Exited {
        invt_no: format!("51412026E{n:011}").into(),
        summarizable,
        was_summarizable: false,
        list: (*l).into(),
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint cut reaches the sink behind the summaries of every period closed before
    /// it, with the stage's state as of the cut (the period closed, nothing open): a restore
    /// from it neither loses nor repeats those summaries.
    #[test]
    fn a_cut_follows_the_summaries_before_it_and_carries_the_state_at_the_cut() {
        let (sink, from_stage) = bounded(16);
        let (tx, h) = spawn(Summarize::default(), Rules::default(), sink, 4);
        let closed = EventTime::parse_rfc3339("2026-12-05T00:00:00+08:00").unwrap();
        let (state_tx, state_rx) = bounded(1);
        let cut = move |s: SummarizeCut| {
            let cbec_operators::tracked::Cut::Whole(s) = s else { panic!("the first cut carries the whole state") };
            state_tx.send(s).unwrap();
            SinkMsg::AfterDurable(Box::new(|| Ok(())))
        };
        tx.send(vec![
            SumMsg::Exited(test_exited(1, "EBC1", 1, true)),
            SumMsg::Exited(test_exited(2, "EBC1", 2, true)),
            SumMsg::Watermark(closed),
        ])
        .unwrap();
        tx.send(vec![SumMsg::Cut(Box::new(cut)), SumMsg::Exited(test_exited(3, "EBC1", 3, true))]).unwrap();
        drop(tx);
        let end = h.join().unwrap().unwrap();
        let order: Vec<String> = from_stage
            .iter()
            .map(|m| match m {
                SinkMsg::Records(rs) | SinkMsg::Decided(rs, _) => format!("{} records", rs.len()),
                SinkMsg::AfterDurable(_) => "cut".into(),
                SinkMsg::Flush(_) => "flush".into(),
            })
            .collect();
        assert_eq!(order, ["1 records", "cut"], "the period's one summary, then the cut");
        assert_eq!(end.summaries, 1);
        let at_cut = state_rx.recv().unwrap();
        assert_eq!(at_cut.state_size(), 0, "at the cut the period is closed and list 3 not yet in");
        assert!(end.state_bytes > 0, "list 3 arrived after the cut");
    }
}
