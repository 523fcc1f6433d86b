//! Stable identities: hashes that never change across runs or machines, content hashes,
//! and the customs list number `invtNo`.

use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as Sip128};
use std::hash::Hasher;

/// A fixed, public hash for partitioning and content identity (not secret).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x6362_6563_2d70_6172, 0x7469_7469_6f6e_2131);
    h.write(bytes);
    h.finish()
}

/// 128-bit content hash in hex of any hashable content (the declared list: every field,
/// every item, in order).
pub fn content_hash<T: std::hash::Hash>(content: &T) -> String {
    let mut h = Sip128::new_with_keys(0x6362_6563_2d63_6f6e, 0x7465_6e74_2d68_6173);
    content.hash(&mut h);
    format!("{:032x}", h.finish128().as_u128())
}

/// Digits of the `invtNo` serial (`customsCode` 4 + year 4 + `E` + 11).
pub const SERIAL_DIGITS: u32 = 11;

/// The serial candidate for a parcel: instance digit + 10 digits of a stable hash of
/// (customsCode, year, logisticsNo), probing `attempt` steps on collision.
pub fn invt_serial(instance: u8, customs: &str, year: i32, logistics_no: &str, attempt: u64) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x696e_7674_4e6f_2d73, 0x6572_6961_6c21_2121);
    h.write(customs.as_bytes());
    h.write_i32(year);
    h.write(logistics_no.as_bytes());
    let base = h.finish() % 10_000_000_000;
    (instance as u64 % 10) * 10_000_000_000 + (base + attempt) % 10_000_000_000
}

/// Formats an `invtNo`.
pub fn invt_no(customs: &str, year: i32, serial: u64) -> String {
    format!("{customs}{year:04}E{serial:011}")
}
