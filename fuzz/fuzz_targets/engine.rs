//! Adversarial stories through the engine (`cbec_tests::scenario::check`): no panic, the
//! same records at 1 and 3 partitions and after a restore from a snapshot.
#![no_main]

use cbec_schemas::hs::Nomenclature;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn hs() -> &'static Nomenclature {
    static HS: OnceLock<Nomenclature> = OnceLock::new();
    HS.get_or_init(|| {
        let p = std::env::var("CBEC_HS_FILE")
            .unwrap_or_else(|_| cbec_schemas::shared_path("data/hs/harmonized-system.csv").display().to_string());
        Nomenclature::load(std::path::Path::new(&p)).unwrap_or_else(|_| Nomenclature::structural())
    })
}

fuzz_target!(|data: &[u8]| {
    cbec_tests::scenario::check(data, hs());
});
