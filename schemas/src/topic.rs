//! Input topics of CONTRACT §2 and what entity each carries.

use serde::{Deserialize, Serialize};

/// An input topic (default name `cbec.<short>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// Goods registrations.
    Goods,
    /// CEB303 orders.
    Orders,
    /// CEB603 stored lists.
    Lists,
    /// CEB505 waybills.
    Waybills,
    /// CEB403 payments.
    Payments,
    /// CEB507 arrivals.
    Arrivals,
    /// Sorting-line scans.
    Scans,
    /// Seal events.
    Seals,
    /// CEB509 departures.
    Departures,
    /// Officer controls.
    Controls,
}

impl Topic {
    /// Every input topic, in story order.
    pub const ALL: [Topic; 10] = [
        Topic::Goods,
        Topic::Orders,
        Topic::Lists,
        Topic::Waybills,
        Topic::Payments,
        Topic::Arrivals,
        Topic::Scans,
        Topic::Seals,
        Topic::Departures,
        Topic::Controls,
    ];

    /// Short name (`orders`).
    pub fn short(self) -> &'static str {
        match self {
            Topic::Goods => "goods",
            Topic::Orders => "orders",
            Topic::Lists => "lists",
            Topic::Waybills => "waybills",
            Topic::Payments => "payments",
            Topic::Arrivals => "arrivals",
            Topic::Scans => "scans",
            Topic::Seals => "seals",
            Topic::Departures => "departures",
            Topic::Controls => "controls",
        }
    }

    /// Default Kafka topic name (`cbec.orders`).
    pub fn default_name(self) -> String {
        format!("cbec.{}", self.short())
    }

    /// From `orders`, `cbec.orders`, or a file name such as `cbec.orders.jsonl`.
    pub fn from_name(name: &str) -> Option<Topic> {
        let n = name.strip_prefix("cbec.").unwrap_or(name);
        let n = n.split('.').next().unwrap_or(n);
        Topic::ALL.into_iter().find(|t| t.short() == n)
    }

    /// The CEB message root that may arrive as XML on this topic.
    pub fn ceb_message(self) -> Option<&'static str> {
        match self {
            Topic::Orders => Some("CEB303Message"),
            Topic::Lists => Some("CEB603Message"),
            Topic::Waybills => Some("CEB505Message"),
            Topic::Payments => Some("CEB403Message"),
            Topic::Arrivals => Some("CEB507Message"),
            Topic::Departures => Some("CEB509Message"),
            _ => None,
        }
    }
}
