//! Crate tests: the official samples, JSON/XML equality, malformed input of every kind.

use super::*;
use proptest::prelude::*;
use std::path::PathBuf;

/// The official samples folder: `$CBEC_CEB_SAMPLES`, else `../shared/ceb/samples` beside the
/// repository.
fn samples() -> PathBuf {
    std::env::var_os("CBEC_CEB_SAMPLES").map(PathBuf::from).unwrap_or_else(|| crate::shared_path("ceb/samples"))
}

fn sample(n: &str) -> Vec<u8> {
    let p = samples().join(format!("CEB{n}Message.xml"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("official sample {} not readable: {e}", p.display()))
}

#[test]
fn every_official_input_sample_decodes_with_its_entity_count() {
    let expected = [("303", 10), ("403", 10), ("505", 10), ("507", 10), ("509", 10), ("603", 10), ("607", 10)];
    for (n, count) in expected {
        let doc = xml::decode_xml(&sample(n), None).unwrap_or_else(|e| panic!("CEB{n}: {e}"));
        assert_eq!(doc.message, format!("CEB{n}Message"));
        assert_eq!(doc.entities.len(), count, "CEB{n}");
        for (i, e) in doc.entities.iter().enumerate() {
            assert!(e.is_ok(), "CEB{n} entity {i}: {e:?}");
        }
        // The known defect of the official samples: two identical BaseTransfer blocks.
        assert!(doc.tolerated.iter().any(|t| t.contains("identical BaseTransfer")), "CEB{n}: {:?}", doc.tolerated);
    }
}

#[test]
fn arrival_sample_rows_become_items() {
    let doc = xml::decode_xml(&sample("507"), Some(Topic::Arrivals)).unwrap();
    let Ok(Entity::Arrival(a)) = &doc.entities[0] else { panic!("{:?}", doc.entities[0]) };
    assert_eq!(a.items.len(), 3);
    assert_eq!(a.items[1].logistics_no, "L2018050700002");
    assert_eq!(a.items[0].total_package_no, None, "an empty element means absent");
}

#[test]
fn customs_receipts_are_not_inputs() {
    let err = xml::decode_xml(&sample("304"), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongEntity);
    let err = xml::decode_xml(&sample("303"), Some(Topic::Payments)).unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongEntity);
}

#[test]
fn differing_base_transfers_are_ambiguous() {
    let text = String::from_utf8(sample("403")).unwrap();
    let i = text.rfind("<ceb:copCode>1105910159</ceb:copCode>").unwrap();
    let mut t = text.clone();
    t.replace_range(i..i + "<ceb:copCode>1105910159</ceb:copCode>".len(), "<ceb:copCode>9999999999</ceb:copCode>");
    let err = xml::decode_xml(t.as_bytes(), None).unwrap_err();
    assert_eq!(err.code, ErrorCode::AmbiguousXml);
}

#[test]
fn wrong_namespace_is_rejected() {
    let t = String::from_utf8(sample("505")).unwrap().replace("http://www.chinaport.gov.cn/ceb", "urn:other");
    assert_eq!(xml::decode_xml(t.as_bytes(), None).unwrap_err().code, ErrorCode::XmlInvalid);
}

/// Decodes the first entity of each sample from XML, writes it as the JSON form of
/// CONTRACT §1 with string and number encodings, and decodes that with simd-json.
#[test]
fn json_and_xml_forms_decode_to_equal_values() {
    let cases = [
        ("303", Topic::Orders),
        ("403", Topic::Payments),
        ("505", Topic::Waybills),
        ("507", Topic::Arrivals),
        ("509", Topic::Departures),
        ("603", Topic::Lists),
    ];
    let mut dec = Decoder::new();
    for (n, topic) in cases {
        let doc = xml::decode_xml(&sample(n), Some(topic)).unwrap();
        let from_xml = doc.entities[0].clone().unwrap();
        // Serialize the inner entity (our output form uses strings for decimals and CEB time).
        let mut v = serde_json::to_value(&from_xml).unwrap();
        v.as_object_mut().unwrap().remove("entity");
        let json = serde_json::to_vec(&v).unwrap();
        let Decoded::One(Ok(from_json)) = dec.decode(topic, &json) else { panic!("CEB{n} JSON did not decode") };
        assert_eq!(from_json, from_xml, "CEB{n}");
    }
    // Numbers as JSON numbers decode to the same values as strings.
    let a = br#"{"orderNo":"o1","logisticsNo":"L1","logisticsCode":"LC","freight":"12.5","insuredFee":0,"currency":"142","grossWeight":1.25,"packNo":"1","goodsInfo":"x","appTime":"20261111000001"}"#;
    let b = br#"{"orderNo":"o1","logisticsNo":"L1","logisticsCode":"LC","freight":12.5,"insuredFee":"0","currency":142,"grossWeight":"1.25","packNo":1,"goodsInfo":"x","appTime":20261111000001}"#;
    let (Decoded::One(Ok(x)), Decoded::One(Ok(y))) = (dec.decode(Topic::Waybills, a), dec.decode(Topic::Waybills, b))
    else {
        panic!()
    };
    assert_eq!(x, y);
}

fn order_json() -> String {
    r#"{"orderNo":"ORD1","orderType":"E","ebpCode":"EBP1","ebcCode":"EBC1","goodsValue":"100.00","freight":"10","currency":"142","appTime":"20261111093000","items":[{"gnum":1,"itemNo":"I1","itemName":"tea","unit":"035","currency":"142","qty":"2","price":"50","totalPrice":"100"}]}"#.to_string()
}

fn code_of(topic: Topic, payload: &[u8]) -> ErrorCode {
    match Decoder::new().decode(topic, payload) {
        Decoded::One(Err(e)) | Decoded::Rejected(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
    .code
}

#[test]
fn a_valid_order_decodes() {
    let Decoded::One(Ok(Entity::Order(o))) = Decoder::new().decode(Topic::Orders, order_json().as_bytes()) else {
        panic!()
    };
    assert_eq!(o.goods_value, Dec::parse("100").unwrap());
    assert_eq!(o.items[0].gnum, 1);
}

#[test]
fn malformed_input_gets_the_right_code() {
    let o = order_json();
    let cases: Vec<(String, ErrorCode)> = vec![
        (o[..o.len() / 2].to_string(), ErrorCode::JsonInvalid),
        (o.replace(r#""gnum":1"#, r#""gnum":"x""#), ErrorCode::NotDigits),
        (o.replace(r#""items":["#, r#""items":{"a":1},"x":["#), ErrorCode::WrongType),
        (o.replace(r#""orderNo":"ORD1","#, ""), ErrorCode::MissingField),
        (o.replace(r#""goodsValue":"100.00","#, ""), ErrorCode::MissingField),
        (o.replace("ORD1", &"9".repeat(61)), ErrorCode::TooLong),
        (o.replace(r#""orderType":"E""#, r#""orderType":"I""#), ErrorCode::BadEnum),
        (o.replace(r#""freight":"10""#, r#""freight":"-1""#), ErrorCode::NegativeAmount),
        (o.replace(r#""freight":"10""#, r#""freight":"1.000001""#), ErrorCode::BadDecimal),
        (o.replace(r#""freight":"10""#, r#""freight":12345678912345.12345"#), ErrorCode::NumberPrecision),
        (o.replace("20261111093000", "2026-11-11"), ErrorCode::BadTimestamp),
        (o.replace(r#""currency":"142","appTime""#, r#""currency":"14","appTime""#), ErrorCode::WrongLength),
        (o.replace(r#""items":[{"#, r#""items":[],"z":[{"#), ErrorCode::NoItems),
        ("   ".to_string(), ErrorCode::UnknownEncoding),
        ("[1,2]".to_string(), ErrorCode::UnknownEncoding),
        (format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)), ErrorCode::JsonInvalid),
    ];
    for (payload, want) in cases {
        assert_eq!(code_of(Topic::Orders, payload.as_bytes()), want, "{}", &payload[..payload.len().min(200)]);
    }
    let mut bad = order_json().into_bytes();
    bad[14] = 0xFF;
    assert_eq!(code_of(Topic::Orders, &bad), ErrorCode::NotUtf8);
    let junk = vec![b'{'; 10 * 1024 * 1024];
    assert_eq!(code_of(Topic::Orders, &junk), ErrorCode::TooLarge);
    let xml_junk = format!("<a>{}</a>", "x".repeat(3 * 1024 * 1024));
    assert_eq!(code_of(Topic::Orders, xml_junk.as_bytes()), ErrorCode::WrongEntity);
    let deep = format!("{}{}", "<a>".repeat(1000), "</a>".repeat(1000));
    assert_eq!(code_of(Topic::Orders, deep.as_bytes()), ErrorCode::XmlInvalid);
}

#[test]
fn list_item_gcode_must_be_ten_digits() {
    let doc = xml::decode_xml(&sample("603"), None).unwrap();
    let Ok(Entity::List(mut l)) = doc.entities[0].clone() else { panic!() };
    l.items[0].gcode = "85414010AB".into();
    assert_eq!(validate::Validate::validate(&*l).unwrap_err().code, ErrorCode::NotDigits);
}

#[test]
fn dead_letters_truncate_and_encode() {
    let e = DecodeError::new(ErrorCode::JsonInvalid, "x");
    let d = DeadLetter::new("cbec.orders", 0, 7, Some(b"k"), &e, &vec![b'a'; 70_000]);
    assert!(d.truncated);
    assert_eq!(d.payload.len(), DLQ_PAYLOAD_LIMIT);
    let d = DeadLetter::new("cbec.orders", 0, 7, None, &e, &[0xFF, 0xFE, 0x00]);
    assert_eq!((d.payload.as_str(), d.payload_encoding.as_str()), ("//4A", "base64"));
}

#[test]
fn arrow_tables_have_stable_schemas() {
    for t in arrow_schema::TABLES {
        let s = arrow_schema::schema(t).unwrap();
        assert!(s.fields().len() >= 8, "{t}");
    }
    let s = arrow_schema::schema("declared_items").unwrap();
    assert_eq!(s.field_with_name("totalPrice").unwrap().data_type(), &arrow::datatypes::DataType::Decimal128(19, 5));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn json_decoder_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048), t in 0usize..10) {
        let mut payload = b"{".to_vec();
        payload.extend_from_slice(&data);
        let _ = Decoder::new().decode(Topic::ALL[t], &payload);
        let _ = Decoder::new().decode(Topic::ALL[t], &data);
    }

    #[test]
    fn json_decoder_never_panics_on_mutated_orders(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
        let mut o = order_json().into_bytes();
        let p = pos % o.len();
        o[p] = byte;
        o.truncate(o.len() - cut.min(o.len()));
        let _ = Decoder::new().decode(Topic::Orders, &o);
    }

    #[test]
    fn xml_decoder_never_panics(pos in 0usize..20_000, byte in any::<u8>(), cut in 0usize..20_000, data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut x = sample("603");
        let p = pos % x.len();
        x[p] = byte;
        x.truncate(x.len() - cut.min(x.len()));
        let _ = xml::decode_xml(&x, None);
        let mut junk = b"<".to_vec();
        junk.extend_from_slice(&data);
        let _ = xml::decode_xml(&junk, Some(Topic::Lists));
    }

    #[test]
    fn decimals_round_trip(v in -9_999_999_999_999_999_999_i128..9_999_999_999_999_999_999_i128) {
        let d = Dec::from_scaled(v);
        prop_assert_eq!(Dec::parse(&d.to_string()).unwrap(), d);
    }
}
