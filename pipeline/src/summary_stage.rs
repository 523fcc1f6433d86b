//! The summarize stage on its own thread, downstream of the engine thread: exited lists in,
//! monthly summary declarations out (ARCHITECTURE: stage 3). Closing a period summarizes
//! every list of the month at once (seconds at peak volume); here that work neither stops
//! the engine thread, and so the sorting decisions, nor waits for it.
//!
//! Order and checkpoints: the engine hands over exited lists, watermarks and control
//! messages in one ordered queue. A checkpoint cut travels through it: once everything
//! before it is summarized, the stage adds a copy of its state and forwards the cut to the
//! sink, behind the summaries that precede it (the engine's own records before the cut are
//! already in the sink's queue). A flush travels the same way.

use crate::metrics as m;
use crate::record::Record;
use crate::runner::SinkMsg;
use cbec_operators::Operator;
use cbec_operators::engine::Exited;
use cbec_operators::rules::Rules;
use cbec_operators::summarize::Summarize;
use cbec_schemas::EventTime;
use crossbeam_channel::{Sender, bounded};
use std::thread::JoinHandle;

/// What the engine thread sends the stage, in order.
pub enum SumMsg {
    /// A list that exited.
    Exited(Exited),
    /// Event time advanced.
    Watermark(EventTime),
    /// A checkpoint cut: called with a copy of the stage's state once everything before it
    /// is summarized; what it returns goes to the sink.
    Cut(Box<dyn FnOnce(Summarize) -> SinkMsg + Send>),
    /// A flush, passed on to the sink behind the summaries before it.
    Flush(Sender<anyhow::Result<()>>),
}

/// What the stage reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageEnd {
    /// Summary declarations written.
    pub summaries: u64,
    /// Bytes of summarize state at the end.
    pub state_bytes: usize,
}

/// Starts the stage with `state` (restored or new); batches of messages in, at most `cap`
/// batches queued (a slow stage slows the engine).
pub fn spawn(
    mut state: Summarize,
    mut rules: Rules,
    sink: Sender<SinkMsg>,
    cap: usize,
) -> (Sender<Vec<SumMsg>>, JoinHandle<anyhow::Result<StageEnd>>) {
    let (tx, rx) = bounded::<Vec<SumMsg>>(cap.max(1));
    let h = std::thread::Builder::new()
        .name("cbec-summarize".into())
        .spawn(move || {
            let stopped = || anyhow::anyhow!("sink stopped");
            let mut end = StageEnd::default();
            for batch in rx {
                for msg in batch {
                    match msg {
                        SumMsg::Exited(x) => state.process(&mut rules, x, &mut Vec::new()),
                        SumMsg::Watermark(wm) => {
                            let mut sums = Vec::new();
                            state.on_watermark(&mut rules, wm, &mut sums);
                            if !sums.is_empty() {
                                end.summaries += sums.len() as u64;
                                m::SummariesOut { total: end.summaries }.emit();
                                let records = sums.into_iter().map(Record::Summary).collect();
                                sink.send(SinkMsg::Records(records)).map_err(|_| stopped())?;
                            }
                        }
                        SumMsg::Cut(f) => {
                            m::StateSize { operator: "summarize", bytes: state.state_size() }.emit();
                            sink.send(f(state.clone())).map_err(|_| stopped())?;
                        }
                        SumMsg::Flush(ack) => sink.send(SinkMsg::Flush(ack)).map_err(|_| stopped())?,
                    }
                }
            }
            end.state_bytes = state.state_size();
            Ok(end)
        })
        .expect("spawn summarize stage");
    (tx, h)
}
