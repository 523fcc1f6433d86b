//! Stable identities: hashes that never change across runs or machines, content hashes,
//! and the customs list number `invtNo`.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// A fixed, public hash for partitioning and content identity (not secret).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x6362_6563_2d70_6172, 0x7469_7469_6f6e_2131);
    h.write(bytes);
    h.finish()
}

/// 128-bit content hash in hex of any hashable content (the declared list: every field,
/// every item, in order): XXH3-128 with a fixed seed, fed by the content's `Hash`.
pub fn content_hash<T: std::hash::Hash>(content: &T) -> String {
    hex128(content_digest(content))
}

/// The 128-bit digest that [`content_hash`] writes in hex.
pub fn content_digest<T: std::hash::Hash>(content: &T) -> u128 {
    // The content's `Hash` writes many short pieces; gathering them and hashing once is the
    // same XXH3 digest as streaming them (the tests check), at a fraction of the cost.
    let mut b = Gather(Vec::with_capacity(512));
    content.hash(&mut b);
    xxhash_rust::xxh3::xxh3_128_with_seed(&b.0, CONTENT_SEED)
}

const CONTENT_SEED: u64 = 0x6362_6563_2d63_6f6e;

/// A `Hasher` that only gathers the bytes it is given.
struct Gather(Vec<u8>);

impl Hasher for Gather {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn finish(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.0)
    }
}

/// 32 lowercase hex digits.
pub fn hex128(v: u128) -> String {
    hex(&v.to_be_bytes())
}

/// Lowercase hex of `bytes`, two digits each.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &x in bytes {
        out.push(DIGITS[usize::from(x >> 4)] as char);
        out.push(DIGITS[usize::from(x & 15)] as char);
    }
    out
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

/// The key of an assigned serial in the set of serials in use: the declaration year in
/// the bits above the serial's 37 (serials are unique per year; a year's serials can be
/// dropped as a whole).
pub fn serial_key(year: i32, serial: u64) -> u64 {
    (u64::from(year.max(0) as u32) << 40) | serial
}

/// The declaration year of a [`serial_key`].
pub fn serial_year(key: u64) -> u32 {
    (key >> 40) as u32
}

/// Formats an `invtNo`.
pub fn invt_no(customs: &str, year: i32, serial: u64) -> cbec_schemas::Text {
    let mut s = cbec_schemas::Text::with_capacity(customs.len() + 16);
    s.push_str(customs);
    push_padded(&mut s, year.max(0) as u64, 4);
    s.push('E');
    push_padded(&mut s, serial, 11);
    s
}

/// Appends `v` in decimal, zero-padded to at least `width` digits (what `{v:0width$}` does,
/// without the formatting machinery on the activation path).
pub fn push_padded<W: std::fmt::Write>(s: &mut W, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut n = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    s.write_str(std::str::from_utf8(&buf[start..]).expect("ASCII digits")).expect("writing to memory");
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn gathered_content_hash_is_the_streamed_xxh3_digest() {
        use std::hash::Hash;
        let v = (String::from("EBC1"), vec![1u32, 2, 3], Some(-7i128), "蓝牙".to_string(), [0u8; 300]);
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(super::CONTENT_SEED);
        v.hash(&mut h);
        assert_eq!(super::content_hash(&v), super::hex128(h.digest128()));
    }

    #[test]
    fn hex128_matches_the_formatter() {
        for v in [0u128, 1, 0xf, u128::MAX, 0xdead_beef_u128 << 64, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(super::hex128(v), format!("{v:032x}"));
        }
    }

    #[test]
    fn invt_no_matches_the_formatter() {
        for (c, y, n) in [("5141", 2026, 0u64), ("5141", 2026, 12_345_678_901), ("0000", 7, 1), ("5141", 2026, 99)] {
            assert_eq!(super::invt_no(c, y, n), format!("{c}{y:04}E{n:011}"));
        }
        let mut s = String::new();
        super::push_padded(&mut s, u64::MAX, 3);
        assert_eq!(s, u64::MAX.to_string());
    }
}
