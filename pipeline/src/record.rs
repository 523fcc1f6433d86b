//! Output records as they leave the pipeline: topic, key, identity and JSON form
//! (CONTRACT §3).

use cbec_operators::engine::Out;
use cbec_schemas::{ChannelDecision, DeadLetter, DeclaredList, Receipt, Return, SealVerdict, SortingDecision, Summary};

/// Output topic short names, in report order.
pub const OUTPUTS: [&str; 8] =
    ["declared", "receipts", "returns", "channels", "sorting", "releases", "summaries", "dlq"];

/// One output record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `cbec.declared`.
    Declared(DeclaredList),
    /// `cbec.receipts`.
    Receipt(Receipt),
    /// `cbec.returns` (boxed: the largest record and a rare one; every record in a batch
    /// takes the size of the largest variant).
    Return(Box<Return>),
    /// `cbec.channels`.
    Channel(ChannelDecision),
    /// `cbec.sorting`.
    Sorting(SortingDecision),
    /// `cbec.releases`.
    Release(SealVerdict),
    /// `cbec.summaries`.
    Summary(Summary),
    /// `cbec.dlq`.
    Dead(DeadLetter),
    /// To the summarize instances, on partition `.0` of `<group_id>.exited` (not an output
    /// of the contract: the engine stage's hand-over when stages run in separate processes).
    Stage(i32, Box<crate::stage::StageMsg>),
}

impl Record {
    /// From an engine output (`Exited` is internal and has no record).
    pub fn from_out(o: Out) -> Option<Record> {
        Some(match o {
            Out::Declared(x) => Record::Declared(x),
            Out::Receipt(x) => Record::Receipt(x),
            Out::Return(x) => Record::Return(x),
            Out::Channel(x) => Record::Channel(x),
            Out::Sorting(x) => Record::Sorting(x),
            Out::Release(x) => Record::Release(x),
            Out::Exited(_) => return None,
        })
    }

    /// Output topic short name.
    pub fn topic(&self) -> &'static str {
        match self {
            Record::Declared(_) => "declared",
            Record::Receipt(_) => "receipts",
            Record::Return(_) => "returns",
            Record::Channel(_) => "channels",
            Record::Sorting(_) => "sorting",
            Record::Release(_) => "releases",
            Record::Summary(_) => "summaries",
            Record::Dead(_) => "dlq",
            Record::Stage(..) => "exited",
        }
    }

    /// Kafka key (CONTRACT §3).
    pub fn key(&self) -> &str {
        match self {
            Record::Declared(x) => &x.list.logistics_no,
            Record::Receipt(x) => x.key(),
            Record::Return(x) => &x.order_no,
            Record::Channel(x) => &x.invt_no,
            Record::Sorting(x) => &x.logistics_no,
            Record::Release(x) => &x.seal_no,
            Record::Summary(x) => &x.summary_id,
            Record::Dead(x) => x.key.as_deref().unwrap_or(&x.source_topic),
            Record::Stage(_, m) => m.key(),
        }
    }

    /// Stable identity for de-duplication after a replay.
    pub fn id(&self) -> String {
        match self {
            Record::Declared(x) => x.invt_no.to_string(),
            Record::Receipt(x) => x.id.to_string(),
            Record::Return(x) => x.id.clone(),
            Record::Channel(x) => x.id.to_string(),
            Record::Sorting(x) => x.id.to_string(),
            Record::Release(x) => x.id.clone(),
            Record::Summary(x) => x.summary_id.clone(),
            Record::Dead(x) => {
                format!("{}/{}/{}/{}", x.source_topic, x.partition, x.offset, x.entity_index.unwrap_or(0))
            }
            Record::Stage(p, m) => m.id(*p),
        }
    }

    /// JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        let r = match self {
            Record::Declared(x) => serde_json::to_vec(x),
            Record::Receipt(x) => serde_json::to_vec(x),
            Record::Return(x) => serde_json::to_vec(&**x),
            Record::Channel(x) => serde_json::to_vec(x),
            Record::Sorting(x) => serde_json::to_vec(x),
            Record::Release(x) => serde_json::to_vec(x),
            Record::Summary(x) => serde_json::to_vec(x),
            Record::Dead(x) => serde_json::to_vec(x),
            Record::Stage(_, m) => serde_json::to_vec(m),
        };
        r.expect("records serialize")
    }
}
