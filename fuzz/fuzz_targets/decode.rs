//! Any bytes on any input topic: the decoder (JSON or CEB XML, as the pipeline detects it)
//! answers with entities or a dead-letter error, never a panic.
#![no_main]

use cbec_schemas::{Decoded, Decoder, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((t, payload)) = data.split_first() else { return };
    let topic = Topic::ALL[usize::from(*t) % Topic::ALL.len()];
    match Decoder::new().decode(topic, payload) {
        Decoded::One(Ok(e)) => {
            let _ = e.event_time();
        }
        Decoded::Document(d) => {
            let _ = format!("{d:?}");
        }
        Decoded::One(Err(e)) | Decoded::Rejected(e) => {
            let _ = e.to_string();
        }
    }
});
