//! Integration tests live in integration/; this library holds what they share with the fuzz
//! targets in `fuzz/`: [`scenario`], adversarial stories read from bytes, and the properties
//! every such story must keep.

pub mod scenario;
