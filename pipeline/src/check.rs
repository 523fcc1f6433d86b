//! `cbec check FILE...`: decode and validate message files (JSON lines or CEB XML, detected
//! by content), one line per entity and a count per type; exit status 0 only when every
//! entity is valid. The topic of JSON lines comes from the file name when it names one,
//! else from the fields present. An entity dated more than `max_lead_ms` after its file was
//! last written is an error (`future_time`), as `cbec run --input` dead-letters it.

use crate::embedded::split_messages;
use crate::runner::Sent;
use cbec_schemas::json::sniff_topic;
use cbec_schemas::{Decoded, Decoder, Format, Topic, detect, xml};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Counts of a check.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Valid entities per type.
    pub ok: BTreeMap<String, u64>,
    /// Errors per code.
    pub errors: BTreeMap<String, u64>,
}

impl CheckReport {
    /// True when nothing failed.
    pub fn all_valid(&self) -> bool {
        self.errors.is_empty() && !self.ok.is_empty()
    }
}

fn line(
    out: &mut dyn Write,
    rep: &mut CheckReport,
    r: Result<cbec_schemas::Entity, cbec_schemas::DecodeError>,
    sent: Option<Sent>,
    note: &str,
) -> std::io::Result<()> {
    let r = r.and_then(|e| match &sent {
        Some(s) => s.check(e.event_time()).map(|()| e),
        None => Ok(e),
    });
    match r {
        Ok(e) => {
            let (k, v) = e.key_field();
            let kind = e.kind();
            let name = match &e {
                cbec_schemas::Entity::Order(_) => "order",
                cbec_schemas::Entity::List(_) => "list",
                cbec_schemas::Entity::Waybill(_) => "waybill",
                cbec_schemas::Entity::Payment(_) => "payment",
                cbec_schemas::Entity::Arrival(_) => "arrival",
                cbec_schemas::Entity::Departure(_) => "departure",
                cbec_schemas::Entity::WayBill(_) => "bill",
                _ => "",
            };
            writeln!(out, "ok {kind}{}{name} {k}={v}{note}", if name.is_empty() { "" } else { " " })?;
            *rep.ok.entry(kind.to_string()).or_default() += 1;
        }
        Err(e) => {
            writeln!(out, "error {} {}{note}", e.code, e.reason)?;
            *rep.errors.entry(e.code.to_string()).or_default() += 1;
        }
    }
    Ok(())
}

/// Checks files, writing one line per entity to `out`.
pub fn check_files(files: &[&Path], max_lead_ms: u64, out: &mut dyn Write) -> anyhow::Result<CheckReport> {
    let mut rep = CheckReport::default();
    let mut dec = Decoder::new();
    for f in files {
        let sent = Sent::file_written(f, max_lead_ms);
        let bytes = std::fs::read(f)?;
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let named = Topic::from_name(name);
        for (i, msg) in split_messages(&bytes).into_iter().enumerate() {
            let note = format!("  ({}:{})", f.display(), i + 1);
            match detect(msg) {
                Some(Format::Xml) => match xml::decode_xml(msg, None) {
                    Ok(doc) => {
                        for t in &doc.tolerated {
                            writeln!(out, "tolerated {}: {t}{note}", doc.message)?;
                        }
                        for r in doc.entities {
                            line(out, &mut rep, r, sent, &note)?;
                        }
                    }
                    Err(e) => line(out, &mut rep, Err(e), sent, &note)?,
                },
                _ => {
                    let topic = named.or_else(|| sniff_topic(msg));
                    let r = match topic {
                        Some(t) => match dec.decode(t, msg) {
                            Decoded::One(r) => r,
                            Decoded::Rejected(e) => Err(e),
                            Decoded::Document(_) => unreachable!("JSON path"),
                        },
                        None => Err(cbec_schemas::DecodeError::new(
                            cbec_schemas::ErrorCode::UnknownEncoding,
                            "cannot tell the entity type: name the file after its topic (orders.jsonl, …)",
                        )),
                    };
                    line(out, &mut rep, r, sent, &note)?;
                }
            }
        }
    }
    let ok: Vec<String> = rep.ok.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let err: Vec<String> = rep.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "valid: {}", if ok.is_empty() { "none".into() } else { ok.join(" ") })?;
    writeln!(out, "invalid: {}", if err.is_empty() { "none".into() } else { err.join(" ") })?;
    Ok(rep)
}
