//! CEB XML decoding: a whole `CEBnnnMessage` document is read with a streaming parser
//! (quick-xml) into its entities, each then decoded exactly as the JSON form would be
//! (head fields at the top level, body rows in `items`), so both forms give equal values.
//!
//! Leniency (CONTRACT §1): where a defect's meaning is unambiguous it is tolerated and
//! reported (`tolerated`): a byte-order mark, a duplicated identical `BaseTransfer`, a missing
//! `BaseTransfer`, unknown elements. Where it is not — two different `BaseTransfer` blocks, a
//! field given twice with different values, a wrong namespace — the document or entity is
//! rejected.

use crate::entities::*;
use crate::error::{DecodeError, ErrorCode};
use crate::topic::Topic;
use crate::validate::Validate;
use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::{Map, Value};

/// The CEB namespace.
pub const CEB_NS: &str = "http://www.chinaport.gov.cn/ceb";
/// Most entities one document may carry.
pub const MAX_ENTITIES: usize = 100;
const MAX_DEPTH: usize = 12;

/// A decoded CEB XML document.
#[derive(Debug)]
pub struct XmlDocument {
    /// Root name without prefix (`CEB303Message`).
    pub message: String,
    /// One result per entity, in document order.
    pub entities: Vec<Result<Entity, DecodeError>>,
    /// Defects tolerated because their meaning was unambiguous.
    pub tolerated: Vec<String>,
}

#[derive(Debug, Default, PartialEq)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

fn local(name: &[u8]) -> String {
    let n = match name.iter().position(|b| *b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(n).into_owned()
}

fn xml_err(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::new(ErrorCode::XmlInvalid, format!("not well-formed XML: {e}"))
}

fn parse_tree(text: &str) -> Result<(Node, Option<String>), DecodeError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut ns: Option<String> = None;
    loop {
        match reader.read_event().map_err(xml_err)? {
            Event::Start(s) => {
                if root.is_some() {
                    return Err(xml_err("content after the root element"));
                }
                if stack.is_empty() {
                    for a in s.attributes().flatten() {
                        let key = a.key.as_ref();
                        if key == b"xmlns" || key.ends_with(b":ceb") || key == b"xmlns:ceb" {
                            let v = a.unescape_value().map_err(xml_err)?;
                            if key == b"xmlns:ceb" || (key == b"xmlns" && ns.is_none()) {
                                ns = Some(v.into_owned());
                            }
                        }
                    }
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(xml_err(format!("nesting deeper than {MAX_DEPTH}")));
                }
                stack.push(Node { name: local(s.name().as_ref()), ..Node::default() });
            }
            Event::Empty(s) => {
                let n = Node { name: local(s.name().as_ref()), ..Node::default() };
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => return Err(xml_err("empty root element")),
                }
            }
            Event::End(_) => {
                let n = stack.pop().ok_or_else(|| xml_err("unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => root = Some(n),
                }
            }
            Event::Text(t) => {
                if let Some(p) = stack.last_mut() {
                    let raw = t.decode().map_err(xml_err)?;
                    let v = quick_xml::escape::unescape(&raw).map_err(xml_err)?;
                    p.text.push_str(&v);
                } else if !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(xml_err("text outside the root element"));
                }
            }
            Event::CData(t) => {
                if let Some(p) = stack.last_mut() {
                    p.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(p) = stack.last_mut() {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    let entity = format!("&{name};");
                    let v = quick_xml::escape::unescape(&entity).map_err(xml_err)?;
                    p.text.push_str(&v);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("document ends inside an element"));
    }
    let root = root.ok_or_else(|| xml_err("no root element"))?;
    Ok((root, ns))
}

/// Entity element name of each supported message.
fn entity_name(message: &str) -> Option<&'static str> {
    Some(match message {
        "CEB303Message" => "Order",
        "CEB403Message" => "Receipts",
        "CEB505Message" => "Logistics",
        "CEB507Message" => "Arrival",
        "CEB509Message" => "Departure",
        "CEB603Message" => "Inventory",
        "CEB607Message" => "WayBill",
        _ => return None,
    })
}

fn put(obj: &mut Map<String, Value>, name: &str, text: &str) -> Result<(), DecodeError> {
    match obj.get(name) {
        Some(Value::String(old)) if old != text => Err(DecodeError::new(
            ErrorCode::AmbiguousXml,
            format!("{name} is given twice with different values ('{old}', '{text}')"),
        )),
        _ => {
            obj.insert(name.to_string(), Value::String(text.to_string()));
            Ok(())
        }
    }
}

fn leaves(node: &Node, obj: &mut Map<String, Value>) -> Result<(), DecodeError> {
    for c in &node.children {
        if c.children.is_empty() {
            put(obj, &c.name, &c.text)?;
        }
    }
    Ok(())
}

/// Head fields at top level, `*List` rows in `items`: the JSON shape of CONTRACT §1.
fn entity_value(node: &Node) -> Result<Value, DecodeError> {
    let mut obj = Map::new();
    let mut items = Vec::new();
    for c in &node.children {
        if c.children.is_empty() {
            put(&mut obj, &c.name, &c.text)?;
        } else if c.name.ends_with("List") {
            let mut row = Map::new();
            leaves(c, &mut row)?;
            items.push(Value::Object(row));
        } else {
            leaves(c, &mut obj)?;
        }
    }
    if !items.is_empty() {
        obj.insert("items".into(), Value::Array(items));
    }
    Ok(Value::Object(obj))
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, DecodeError> {
    serde_json::from_value(v).map_err(|e| DecodeError::from_serde_message(&e.to_string(), ErrorCode::XmlInvalid))
}

fn to_entity(message: &str, v: Value) -> Result<Entity, DecodeError> {
    let e = match message {
        "CEB303Message" => Entity::Order(typed(v)?),
        "CEB403Message" => Entity::Payment(typed(v)?),
        "CEB505Message" => Entity::Waybill(typed(v)?),
        "CEB507Message" => Entity::Arrival(typed(v)?),
        "CEB509Message" => Entity::Departure(typed(v)?),
        "CEB603Message" => Entity::List(Box::new(typed(v)?)),
        _ => Entity::WayBill(typed(v)?),
    };
    e.validate()?;
    Ok(e)
}

/// Decodes a whole CEB XML document. `topic`, when given, must be the topic this message
/// type belongs on. A document-level defect is an `Err`; an entity-level one is an `Err`
/// inside `entities`, so one bad entity does not reject the others.
pub fn decode_xml(payload: &[u8], topic: Option<Topic>) -> Result<XmlDocument, DecodeError> {
    let mut tolerated = Vec::new();
    let body = match payload.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        Some(b) => b,
        None => payload,
    };
    let text = std::str::from_utf8(body)
        .map_err(|e| DecodeError::new(ErrorCode::NotUtf8, format!("XML is not UTF-8: {e}")))?;
    let (root, ns) = parse_tree(text)?;
    let message = root.name.clone();
    let Some(entity) = entity_name(&message) else {
        return Err(DecodeError::new(
            ErrorCode::WrongEntity,
            format!("{message} is not an input message of cbec (303, 403, 505, 507, 509, 603, 607)"),
        ));
    };
    if ns.as_deref() != Some(CEB_NS) {
        return Err(DecodeError::new(
            ErrorCode::XmlInvalid,
            format!("{message} is not in the CEB namespace {CEB_NS} (found {ns:?})"),
        ));
    }
    if let Some(t) = topic
        && t.ceb_message() != Some(message.as_str())
    {
        return Err(DecodeError::new(
            ErrorCode::WrongEntity,
            format!("{message} does not belong on topic {}", t.default_name()),
        ));
    }
    let mut transfers: Vec<&Node> = Vec::new();
    let mut nodes = Vec::new();
    for c in &root.children {
        match c.name.as_str() {
            n if n == entity => nodes.push(c),
            "BaseTransfer" => transfers.push(c),
            "Signature" => {}
            other => tolerated.push(format!("unknown element {other} ignored")),
        }
    }
    match transfers.as_slice() {
        [] => tolerated.push("no BaseTransfer block".to_string()),
        [_] => {}
        [first, rest @ ..] => {
            if rest.iter().all(|t| *t == *first) {
                tolerated.push(format!("{} identical BaseTransfer blocks: the first is used", transfers.len()));
            } else {
                return Err(DecodeError::new(
                    ErrorCode::AmbiguousXml,
                    format!("{} BaseTransfer blocks that differ: sender is ambiguous", transfers.len()),
                ));
            }
        }
    }
    if nodes.is_empty() {
        return Err(DecodeError::new(ErrorCode::NoItems, format!("{message} carries no {entity}")));
    }
    if nodes.len() > MAX_ENTITIES {
        return Err(DecodeError::new(
            ErrorCode::TooMany,
            format!("{message} carries {} entities, at most {MAX_ENTITIES}", nodes.len()),
        ));
    }
    let entities = nodes.into_iter().map(|n| entity_value(n).and_then(|v| to_entity(&message, v))).collect();
    Ok(XmlDocument { message, entities, tolerated })
}
