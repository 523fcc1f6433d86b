//! The rules file (CONTRACT §5): inspection rate, sampling key, certificate and tax HS rules,
//! payment wait, amount tolerance, summary grace and `summaryFlag`. Every field has a
//! documented default, so an empty file (or none) is valid.

use cbec_schemas::Dec;
use serde::{Deserialize, Serialize};

/// Supervision rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct Rules {
    /// Random-control inspection rate in [0, 1] until an `inspection_rate` control changes it
    /// (default 0.05).
    pub inspection_rate: Dec,
    /// Secret sampling key: the draw is a keyed pseudo-random function of `invtNo` under it.
    /// Set your own in production (`CBEC_RULES__SAMPLING_KEY`).
    pub sampling_key: String,
    /// HS code prefixes that need a certificate or licence (`certificate_required`).
    pub certificate_prefixes: Vec<String>,
    /// HS code prefixes with an export duty (`tax_related`).
    pub tax_prefixes: Vec<String>,
    /// Optional tariff CSV (`hscode_prefix,licence,export_duty`): rows with a licence code
    /// add a certificate prefix, rows with a non-zero duty add a tax prefix. Read by the
    /// runtime and merged into the two lists above.
    pub tariff_csv: Option<String>,
    /// Event-time wait for a missing order or payment after the list, in hours (default 24).
    pub payment_wait_hours: u32,
    /// Tolerance of the amount comparisons (default 0: exact equality).
    pub amount_tolerance: Dec,
    /// Grace after a month ends before its summary declarations close, in hours (default 72).
    pub summary_grace_hours: u32,
    /// 1: one declaration per company; 2: also per owner (`ownerCode`) (default 1).
    pub summary_flag: u8,
    /// Instance digit (0-9) in `invtNo` serials; distinct per process of one deployment.
    pub instance: u8,
    /// Event-time days an order's, a parcel's, a seal's or a master bill's state is kept
    /// after the last message about it (default 30; 0: kept forever). Then it is dropped,
    /// and a message whose event time is more than this before the watermark goes to the
    /// dead-letter topic (`expired`) instead of starting it afresh. Declaration years'
    /// `invtNo` serials are kept until this long after the year ends, so numbers stay
    /// unique. Never shorter than the payment wait (a shorter value counts as the wait), so
    /// no wait outlives its parcel; an order whose wait runs is never dropped.
    pub state_retention_days: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            inspection_rate: Dec::parse("0.05").expect("literal"),
            sampling_key: "cbec-default-sampling-key-change-me".to_string(),
            // Defaults for illustration: live animals (01), arms (93), medicines (3004),
            // drones/aircraft (8806), cultural relics (9706).
            certificate_prefixes: ["01", "93", "3004", "8806", "9706"].map(String::from).to_vec(),
            // Export duty examples: ferro-alloys (7202), unwrought aluminium (7601),
            // certain fertilisers (3105).
            tax_prefixes: ["7202", "7601", "3105"].map(String::from).to_vec(),
            tariff_csv: None,
            payment_wait_hours: 24,
            amount_tolerance: Dec::ZERO,
            summary_grace_hours: 72,
            summary_flag: 1,
            instance: 0,
            state_retention_days: 30,
        }
    }
}

impl Rules {
    /// Parses a TOML rules table.
    pub fn from_toml(text: &str) -> Result<Rules, toml::de::Error> {
        toml::from_str(text)
    }

    /// Merges a tariff CSV (`hscode_prefix,licence,export_duty`, header optional).
    pub fn merge_tariff(&mut self, csv: &str) -> Result<(), String> {
        for (i, line) in csv.lines().enumerate() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 3 || (i == 0 && !f[0].bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            if f[0].is_empty() || !f[0].bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("tariff line {}: '{}' is not an HS prefix", i + 1, f[0]));
            }
            if !f[1].is_empty() {
                self.certificate_prefixes.push(f[0].to_string());
            }
            let duty = Dec::parse(if f[2].is_empty() { "0" } else { f[2] })
                .map_err(|e| format!("tariff line {}: {e}", i + 1))?;
            if duty != Dec::ZERO {
                self.tax_prefixes.push(f[0].to_string());
            }
        }
        Ok(())
    }

    /// Milliseconds of the payment wait.
    pub fn payment_wait_ms(&self) -> i64 {
        self.payment_wait_hours as i64 * 3_600_000
    }

    /// Milliseconds of the state retention (at least the payment wait); `None` when state
    /// is kept forever.
    pub fn retention_ms(&self) -> Option<i64> {
        (self.state_retention_days > 0)
            .then(|| (self.state_retention_days as i64 * crate::retention::DAY_MS).max(self.payment_wait_ms()))
    }

    /// Milliseconds of the summary grace.
    pub fn summary_grace_ms(&self) -> i64 {
        self.summary_grace_hours as i64 * 3_600_000
    }

    /// First certificate prefix matching `gcode`.
    pub fn certificate_rule(&self, gcode: &str) -> Option<&str> {
        self.certificate_prefixes.iter().map(String::as_str).find(|p| gcode.starts_with(p))
    }

    /// First tax prefix matching `gcode`.
    pub fn tax_rule(&self, gcode: &str) -> Option<&str> {
        self.tax_prefixes.iter().map(String::as_str).find(|p| gcode.starts_with(p))
    }

    /// Two amounts equal within the tolerance.
    pub fn amounts_agree(&self, a: Dec, b: Dec) -> bool {
        a.sub(b).abs() <= self.amount_tolerance
    }
}

/// The sampling draw (§4.3): `rand`'s standard generator seeded by SipHash-2-4 of `invtNo`
/// under the secret key; selected when the uniform 64-bit draw is below `rate · 2⁶⁴`.
/// Reproducible for audit with the key, unpredictable without it.
pub fn sampled(key: &str, invt_no: &str, rate: Dec) -> bool {
    use rand::{RngExt, SeedableRng};
    use siphasher::sip::SipHasher24;
    use std::hash::Hasher;
    let (k0, k1) = key_words(key);
    let mut h = SipHasher24::new_with_keys(k0, k1);
    h.write(invt_no.as_bytes());
    // Xoshiro256++ (a fixed, documented algorithm: the selection is reproducible across
    // rand releases); unpredictable without the key because its seed is the keyed hash.
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(h.finish());
    let draw: u64 = rng.random();
    let threshold = (rate.scaled().clamp(0, 100_000) as u128 * (1u128 << 64)) / 100_000;
    (draw as u128) < threshold
}

fn key_words(key: &str) -> (u64, u64) {
    use siphasher::sip128::{Hasher128, SipHasher24};
    use std::hash::Hasher;
    let mut h = SipHasher24::new_with_keys(0x73616d70_6c696e67, 0x2d6b6579_2d646572);
    h.write(key.as_bytes());
    let v = h.finish128();
    (v.h1, v.h2)
}
