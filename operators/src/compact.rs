//! Compact at-rest forms of keyed state.
//!
//! A waiting list or an order's facts are held for hours to days, so their size is what
//! the state costs at 11.11 volume; the owned entities (a `String` header of 24 bytes per
//! field, 16-byte decimals, one allocation per text) cost 4–5× their content. At rest they
//! are one byte buffer each: integers and decimals as LEB128 varints (signed ones
//! zig-zagged), texts as length + UTF-8, and the texts that repeat across lists (enterprise,
//! customs, HS, unit, currency and country codes, goods) as ids into a per-partition
//! [`Codes`] table. Readers take the fields back as `&str` without copying.

use crate::Map;
use cbec_schemas::{AppStatus, AppType, CebDate, Dec, EventTime, Inventory, InventoryItem, StatisticsFlag, Text};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// Heap bytes of a text (none when it is inline).
pub fn heap_bytes(t: &Text) -> usize {
    if t.is_heap_allocated() { t.capacity() } else { 0 }
}

/// Interned texts of one operator partition: each distinct text once, lists hold its id.
/// Ids are given in first-seen order, so the same input gives the same table; the table is
/// part of the operator's snapshot.
#[derive(Debug, Clone, Default)]
pub struct Codes {
    texts: Vec<Arc<str>>,
    /// Keyed by inline copies (a code of up to 24 bytes sits in its bucket): a lookup
    /// compares without following a pointer to the text (a cache miss per probe).
    ids: Map<Text, u32>,
    bytes: usize,
}

impl Codes {
    /// The id of `s`, added when new.
    #[inline]
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.texts.len()).expect("fewer than 2^32 distinct codes");
        let a: Arc<str> = Arc::from(s);
        self.texts.push(a);
        let key = Text::new(s);
        // The text with its reference counts, its slot in the table, its map bucket and the
        // key's own copy when it is too long to sit inline.
        self.bytes += s.len()
            + 16
            + std::mem::size_of::<Arc<str>>()
            + std::mem::size_of::<(Text, u32)>()
            + 1
            + if key.is_heap_allocated() { s.len() } else { 0 };
        self.ids.insert(key, id);
        id
    }

    /// The texts added since the table had `n` (for an incremental checkpoint: the table
    /// only grows).
    pub fn since(&self, n: usize) -> Vec<Arc<str>> {
        self.texts.get(n..).unwrap_or_default().to_vec()
    }

    /// Adds texts taken from a copy of this table with [`Codes::since`]`(self.len())`; an
    /// error when a text is already here (they were not taken from where this table ends).
    pub fn extend(&mut self, texts: Vec<Arc<str>>) -> Result<(), String> {
        for t in texts {
            let n = self.len();
            if self.id(&t) as usize != n {
                return Err(format!("code table extended with '{t}', which it has"));
            }
        }
        Ok(())
    }

    /// The text of `id`.
    ///
    /// # Panics
    /// When `id` was not given by this table (state is only read by the partition that wrote it).
    #[inline]
    pub fn get(&self, id: u32) -> &str {
        &self.texts[id as usize]
    }

    /// Distinct texts held.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Approximate heap bytes of the table.
    pub fn state_size(&self) -> usize {
        self.bytes
    }
}

impl Serialize for Codes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.texts.iter().map(|t| &**t))
    }
}

impl<'de> Deserialize<'de> for Codes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Codes, D::Error> {
        let mut c = Codes::default();
        for t in Vec::<String>::deserialize(d)? {
            let before = c.len();
            if c.id(&t) as usize != before {
                return Err(D::Error::custom(format!("code table repeats '{t}'")));
            }
        }
        Ok(c)
    }
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Writer {
        Writer(Vec::with_capacity(n))
    }

    /// Unsigned varint.
    #[inline]
    pub fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Signed varint (zig-zag).
    #[inline]
    pub fn i(&mut self, v: i64) {
        self.u(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Exact decimal (its scaled integer, zig-zag varint).
    #[inline]
    pub fn dec(&mut self, d: Dec) {
        let v = d.scaled();
        let mut z = ((v << 1) ^ (v >> 127)) as u128;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }

    /// Text, in place.
    #[inline]
    pub fn str(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Optional text, in place (0 for none, else length + 1).
    #[inline]
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u(0),
            Some(s) => {
                self.u(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Text by its id in `codes`.
    #[inline]
    pub fn code(&mut self, codes: &mut Codes, s: &str) {
        let id = codes.id(s);
        self.u(u64::from(id));
    }
    /// The bytes, sized to fit.
    pub fn finish(self) -> Box<[u8]> {
        self.0.into_boxed_slice()
    }
}

/// A buffer's bytes are not what [`Writer`] wrote (a damaged snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged compact state at byte {0}")]
pub struct Damaged(pub usize);

/// Reads fields back in the order they were written.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `b` from its start.
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }

    /// True when every byte was read.
    pub fn at_end(&self) -> bool {
        self.pos == self.b.len()
    }

    /// Unsigned varint.
    #[inline]
    pub fn u(&mut self) -> Result<u64, Damaged> {
        let (mut v, mut shift, mut pos) = (0u64, 0u32, self.pos);
        loop {
            let x = *self.b.get(pos).ok_or(Damaged(pos))?;
            pos += 1;
            if shift == 63 && x > 1 {
                return Err(Damaged(pos));
            }
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                self.pos = pos;
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(Damaged(pos));
            }
        }
    }

    /// Small unsigned varint (counts, ids, enum tags).
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Damaged> {
        u32::try_from(self.u()?).map_err(|_| Damaged(self.pos))
    }

    /// Signed varint.
    #[inline]
    pub fn i(&mut self) -> Result<i64, Damaged> {
        let z = self.u()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// Exact decimal.
    #[inline]
    pub fn dec(&mut self) -> Result<Dec, Damaged> {
        let (mut z, mut shift, mut pos) = (0u128, 0u32, self.pos);
        loop {
            let x = *self.b.get(pos).ok_or(Damaged(pos))?;
            pos += 1;
            z |= u128::from(x & 0x7f) << shift;
            if x < 0x80 {
                break;
            }
            shift += 7;
            if shift > 126 {
                return Err(Damaged(pos));
            }
        }
        self.pos = pos;
        Ok(Dec::from_scaled(((z >> 1) as i128) ^ -((z & 1) as i128)))
    }

    #[inline]
    fn text(&mut self, n: usize) -> Result<&'a str, Damaged> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(Damaged(self.pos))?;
        let s = std::str::from_utf8(&self.b[self.pos..end]).map_err(|_| Damaged(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    /// Text, in place.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, Damaged> {
        let n = self.u()? as usize;
        self.text(n)
    }

    /// Optional text, in place.
    #[inline]
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, Damaged> {
        match self.u()? as usize {
            0 => Ok(None),
            n => self.text(n - 1).map(Some),
        }
    }

    /// Text by its id in `codes`.
    #[inline]
    pub fn code<'c>(&mut self, codes: &'c Codes) -> Result<&'c str, Damaged> {
        Ok(codes.get(self.code_id(codes)?))
    }
    /// An id in `codes`, unresolved.
    #[inline]
    pub fn code_id(&mut self, codes: &Codes) -> Result<u32, Damaged> {
        let id = self.u32()?;
        if id as usize >= codes.len() {
            return Err(Damaged(self.pos));
        }
        Ok(id)
    }
}

/// Serializes a compact buffer as lowercase hex (for JSON snapshots).
pub fn serialize_hex<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::ids::hex(b))
}

/// Reads what [`serialize_hex`] wrote.
pub fn deserialize_hex<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8]>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(D::Error::custom("compact state is not lowercase hex")),
    };
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return Err(D::Error::custom("compact state has an odd number of hex digits"));
    }
    b.chunks(2).map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// A stored list at rest in clear (keyed by its `logisticsNo`, which is therefore not
/// repeated inside). The fields read on every scan — `orderNo`, `ebcCode`, the statistics
/// flag and the items' HS codes — come first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredList(Box<[u8]>);

fn flag_of(f: StatisticsFlag) -> u64 {
    match f {
        StatisticsFlag::A => 0,
        StatisticsFlag::B => 1,
    }
}

impl StoredList {
    /// Packs `l`, interning its codes in `codes`.
    pub fn pack(l: &Inventory, codes: &mut Codes) -> StoredList {
        // Destructured without `..`: a field added to `Inventory` must be added here.
        let Inventory {
            app_type,
            app_time,
            app_status,
            customs_code,
            ebp_code,
            order_no,
            logistics_code,
            logistics_no: _,
            cop_no,
            port_code,
            ie_date,
            statistics_flag,
            agent_code,
            ebc_code,
            owner_code,
            trade_mode,
            traf_mode,
            country,
            pod,
            freight,
            insured_fee,
            pack_no,
            gross_weight,
            net_weight,
            total_package_no,
            items,
        } = l;
        let mut w = Writer::with_capacity(64 + 32 * items.len() + order_no.len() + cop_no.len());
        w.str(order_no);
        w.code(codes, ebc_code);
        w.u(flag_of(*statistics_flag));
        w.u(items.len() as u64);
        for it in items {
            w.code(codes, &it.gcode);
        }
        w.u(match app_type {
            AppType::New => 0,
            AppType::Change => 1,
            AppType::Delete => 2,
        });
        w.i(app_time.0);
        w.u(match app_status {
            AppStatus::Stored => 0,
            AppStatus::Declared => 1,
        });
        w.code(codes, customs_code);
        w.code(codes, ebp_code);
        w.code(codes, logistics_code);
        w.str(cop_no);
        w.code(codes, port_code);
        w.u(u64::from(ie_date.0));
        w.code(codes, agent_code);
        w.code(codes, owner_code);
        w.code(codes, trade_mode);
        w.code(codes, traf_mode);
        w.code(codes, country);
        w.code(codes, pod);
        w.dec(*freight);
        w.dec(*insured_fee);
        w.u(u64::from(*pack_no));
        w.dec(*gross_weight);
        w.dec(*net_weight);
        w.opt_str(total_package_no.as_deref());
        for it in items {
            let InventoryItem {
                gnum,
                item_no,
                gcode: _,
                gname,
                gmodel,
                country,
                currency,
                qty,
                qty1,
                unit,
                unit1,
                price,
                total_price,
            } = it;
            w.u(u64::from(*gnum));
            w.code(codes, item_no);
            w.code(codes, gname);
            w.code(codes, gmodel);
            w.code(codes, country);
            w.code(codes, currency);
            w.dec(*qty);
            w.dec(*qty1);
            w.code(codes, unit);
            w.code(codes, unit1);
            w.dec(*price);
            w.dec(*total_price);
        }
        StoredList(w.finish())
    }

    /// The list's `orderNo`.
    pub fn order_no(&self) -> &str {
        Reader::new(&self.0).str().expect("stored list checked when made")
    }

    /// `orderNo`, `ebcCode`, statistics flag and a reader positioned at the item count.
    fn head<'a>(&'a self, codes: &'a Codes) -> Result<(ListHead<'a>, Reader<'a>), Damaged> {
        let mut r = Reader::new(&self.0);
        let order_no = r.str()?;
        let ebc_code = r.code(codes)?;
        let statistics_flag = match r.u()? {
            0 => StatisticsFlag::A,
            1 => StatisticsFlag::B,
            _ => return Err(Damaged(r.pos)),
        };
        Ok((ListHead { order_no, ebc_code, statistics_flag }, r))
    }

    /// The fields read on every scan; the HS codes of the items are pushed onto `gcodes`
    /// when it is given.
    pub fn scan_view<'a>(&'a self, codes: &'a Codes, gcodes: Option<&mut Vec<&'a str>>) -> ListHead<'a> {
        let (head, mut r) = self.head(codes).expect("stored list checked when made");
        if let Some(gcodes) = gcodes {
            let n = r.u().expect("stored list checked when made");
            for _ in 0..n {
                gcodes.push(r.code(codes).expect("stored list checked when made"));
            }
        }
        head
    }

    /// The whole list back, with its key.
    pub fn unpack(&self, logistics_no: &str, codes: &Codes) -> Inventory {
        self.try_unpack(logistics_no, codes).expect("stored list checked when made")
    }

    /// [`StoredList::unpack`], or where the bytes are damaged.
    pub fn try_unpack(&self, logistics_no: &str, codes: &Codes) -> Result<Inventory, Damaged> {
        let (head, mut r) = self.head(codes)?;
        let n = r.u()? as usize;
        if n > self.0.len() {
            return Err(Damaged(r.pos));
        }
        // The items' HS codes come first (for scans); read them alongside the items below.
        let mut gcodes = r.clone();
        for _ in 0..n {
            r.code(codes)?;
        }
        let app_type = match r.u()? {
            0 => AppType::New,
            1 => AppType::Change,
            2 => AppType::Delete,
            _ => return Err(Damaged(r.pos)),
        };
        let app_time = EventTime(r.i()?);
        let app_status = match r.u()? {
            0 => AppStatus::Stored,
            1 => AppStatus::Declared,
            _ => return Err(Damaged(r.pos)),
        };
        let mut l = Inventory {
            app_type,
            app_time,
            app_status,
            customs_code: r.code(codes)?.into(),
            ebp_code: r.code(codes)?.into(),
            order_no: head.order_no.into(),
            logistics_code: r.code(codes)?.into(),
            logistics_no: logistics_no.into(),
            cop_no: r.str()?.into(),
            port_code: r.code(codes)?.into(),
            ie_date: CebDate(r.u32()?),
            statistics_flag: head.statistics_flag,
            agent_code: r.code(codes)?.into(),
            ebc_code: head.ebc_code.into(),
            owner_code: r.code(codes)?.into(),
            trade_mode: r.code(codes)?.into(),
            traf_mode: r.code(codes)?.into(),
            country: r.code(codes)?.into(),
            pod: r.code(codes)?.into(),
            freight: r.dec()?,
            insured_fee: r.dec()?,
            pack_no: r.u32()?,
            gross_weight: r.dec()?,
            net_weight: r.dec()?,
            total_package_no: r.opt_str()?.map(Text::from),
            items: Vec::with_capacity(n),
        };
        for _ in 0..n {
            l.items.push(InventoryItem {
                gnum: r.u32()?,
                item_no: r.code(codes)?.into(),
                gcode: gcodes.code(codes)?.into(),
                gname: r.code(codes)?.into(),
                gmodel: r.code(codes)?.into(),
                country: r.code(codes)?.into(),
                currency: r.code(codes)?.into(),
                qty: r.dec()?,
                qty1: r.dec()?,
                unit: r.code(codes)?.into(),
                unit1: r.code(codes)?.into(),
                price: r.dec()?,
                total_price: r.dec()?,
            });
        }
        if !r.at_end() {
            return Err(Damaged(r.pos));
        }
        Ok(l)
    }

    /// Bytes held (the buffer and its pointer).
    pub fn state_size(&self) -> usize {
        std::mem::size_of::<StoredList>() + self.0.len()
    }

    /// The buffer, for snapshots.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A buffer from a snapshot; [`StoredList::check`] it against its partition's codes
    /// before use.
    pub fn unchecked(b: Box<[u8]>) -> StoredList {
        StoredList(b)
    }

    /// Whether the bytes read back as a whole list with ids in `codes`.
    pub fn check(&self, codes: &Codes) -> Result<(), Damaged> {
        self.try_unpack("", codes).map(drop)
    }
}

/// The fields of a stored list that clear reads on every scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListHead<'a> {
    /// `orderNo`.
    pub order_no: &'a str,
    /// `ebcCode`.
    pub ebc_code: &'a str,
    /// Statistics flag.
    pub statistics_flag: StatisticsFlag,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fields_read_back_as_written(
            us in proptest::collection::vec(any::<u64>(), 0..8),
            is in proptest::collection::vec(any::<i64>(), 0..8),
            ds in proptest::collection::vec(any::<i128>(), 0..8),
            ss in proptest::collection::vec(".{0,12}", 0..8),
        ) {
            let mut codes = Codes::default();
            let mut w = Writer::default();
            for &u in &us { w.u(u); }
            for &i in &is { w.i(i); }
            for &d in &ds { w.dec(Dec::from_scaled(d)); }
            for s in &ss { w.str(s); w.code(&mut codes, s); w.opt_str(Some(s)); }
            w.opt_str(None);
            let b = w.finish();
            let mut r = Reader::new(&b);
            for &u in &us { prop_assert_eq!(r.u().unwrap(), u); }
            for &i in &is { prop_assert_eq!(r.i().unwrap(), i); }
            for &d in &ds { prop_assert_eq!(r.dec().unwrap(), Dec::from_scaled(d)); }
            for s in &ss {
                prop_assert_eq!(r.str().unwrap(), s.as_str());
                prop_assert_eq!(r.code(&codes).unwrap(), s.as_str());
                prop_assert_eq!(r.opt_str().unwrap(), Some(s.as_str()));
            }
            prop_assert_eq!(r.opt_str().unwrap(), None);
            prop_assert!(r.at_end());
        }
    }

    #[test]
    fn codes_are_given_in_first_seen_order_and_survive_a_snapshot() {
        let mut c = Codes::default();
        assert_eq!((c.id("EBC1"), c.id("142"), c.id("EBC1")), (0, 1, 0));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"["EBC1","142"]"#);
        let mut back: Codes = serde_json::from_str(&json).unwrap();
        assert_eq!((back.id("142"), back.id("new")), (1, 2));
        assert!(serde_json::from_str::<Codes>(r#"["a","a"]"#).is_err());
    }

    fn full_list() -> Inventory {
        let item = |n: u32, gcode: &str| InventoryItem {
            gnum: n,
            item_no: format!("P{n}").into(),
            gcode: gcode.into(),
            gname: "蓝牙耳机".into(),
            gmodel: "TWS, 黑色".into(),
            country: "502".into(),
            currency: "142".into(),
            qty: Dec::parse("3").unwrap(),
            qty1: Dec::parse("0.45").unwrap(),
            unit: "011".into(),
            unit1: "035".into(),
            price: Dec::parse("-12.34567").unwrap(),
            total_price: Dec::parse("99999999999999.99999").unwrap(),
        };
        Inventory {
            app_type: AppType::Change,
            app_time: EventTime(1_794_384_000_123),
            app_status: AppStatus::Declared,
            customs_code: "2244".into(),
            ebp_code: "EBP0001".into(),
            order_no: "O-20261111-000001".into(),
            logistics_code: "LOG0001".into(),
            logistics_no: "LP0000000001".into(),
            cop_no: "COP-1".into(),
            port_code: "5141".into(),
            ie_date: CebDate(20261111),
            statistics_flag: StatisticsFlag::B,
            agent_code: "AGT0001".into(),
            ebc_code: "EBC00906".into(),
            owner_code: "OWN1".into(),
            trade_mode: "9610".into(),
            traf_mode: "4".into(),
            country: "502".into(),
            pod: "USLAX".into(),
            freight: Dec::parse("17.5").unwrap(),
            insured_fee: Dec::parse("0.01").unwrap(),
            pack_no: 3,
            gross_weight: Dec::parse("1.5").unwrap(),
            net_weight: Dec::parse("1.2").unwrap(),
            total_package_no: Some("MB-7".into()),
            items: vec![item(1, "8517629900"), item(2, "6109100010"), item(3, "8517629900")],
        }
    }

    #[test]
    fn a_stored_list_unpacks_to_what_was_packed() {
        let mut codes = Codes::default();
        let l = full_list();
        let mut empty = Inventory { logistics_no: "LP2".into(), ..Inventory::default() };
        empty.items.push(InventoryItem::default());
        for l in [l, empty] {
            let packed = StoredList::pack(&l, &mut codes);
            assert_eq!(packed.unpack(&l.logistics_no, &codes), l);
            assert_eq!(packed.order_no(), l.order_no);
            let mut gcodes = Vec::new();
            let head = packed.scan_view(&codes, Some(&mut gcodes));
            assert_eq!(
                (head.order_no, head.ebc_code, head.statistics_flag),
                (&*l.order_no, &*l.ebc_code, l.statistics_flag)
            );
            assert_eq!(gcodes, l.items.iter().map(|i| i.gcode.as_str()).collect::<Vec<_>>());
            assert!(packed.check(&codes).is_ok());
        }
        // Codes are shared: a second copy of the first list adds no text to the table.
        let n = codes.len();
        let again = StoredList::pack(&full_list(), &mut codes);
        assert_eq!(codes.len(), n);
        let owned = crate::clear::inventory_bytes(&full_list());
        assert!(again.state_size() * 4 < owned, "{} bytes packed, {owned} owned", again.state_size());
    }

    #[test]
    fn a_damaged_or_foreign_stored_list_fails_its_check() {
        let mut codes = Codes::default();
        let packed = StoredList::pack(&full_list(), &mut codes);
        let b = packed.bytes();
        assert!(StoredList::unchecked(b[..b.len() - 1].into()).check(&codes).is_err());
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(StoredList::unchecked(longer.into()).check(&codes).is_err());
        // Against another partition's (here: empty) table its ids do not resolve.
        assert!(packed.check(&Codes::default()).is_err());
    }

    #[test]
    fn damaged_buffers_are_errors_not_panics() {
        let codes = Codes::default();
        assert_eq!(Reader::new(&[]).u(), Err(Damaged(0)));
        assert!(Reader::new(&[0xff; 11]).u().is_err());
        assert!(Reader::new(&[5, b'a']).str().is_err());
        assert!(Reader::new(&[2, 0xff, 0xfe]).str().is_err());
        assert!(Reader::new(&[0]).code(&codes).is_err());
    }
}
