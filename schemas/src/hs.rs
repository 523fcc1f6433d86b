//! The HS 2022 nomenclature (sections, chapters, headings, subheadings) loaded from the CSV
//! in `../shared/data/hs/`, for the goods review of CONTRACT §4.1 and analytics UDFs.
//! Without a file, only structural checks are possible ([`Nomenclature::structural`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Environment variable naming the nomenclature CSV.
pub const HS_FILE_ENV: &str = "CBEC_HS_FILE";
/// Default location, relative to the repository root.
pub const HS_FILE_DEFAULT: &str = "../shared/data/hs/harmonized-system.csv";

/// One code of the nomenclature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsEntry {
    /// Section (Roman numeral).
    pub section: String,
    /// Description.
    pub description: String,
}

/// Outcome of checking a 10-digit `gcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsCheck {
    /// First 6 digits are a subheading of the loaded nomenclature.
    Known,
    /// Structure is right but the subheading is not in the nomenclature.
    UnknownSubheading,
    /// Not 10 digits, or an impossible chapter.
    Malformed,
    /// Structure is right; no nomenclature loaded to say more.
    Unverified,
}

/// The loaded nomenclature, or none (structural checks only).
#[derive(Debug, Clone, Default)]
pub struct Nomenclature {
    /// Shared: read-only once loaded, so a clone (an engine copied for a checkpoint) is cheap.
    codes: std::sync::Arc<HashMap<String, HsEntry>>,
    source: Option<PathBuf>,
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl Nomenclature {
    /// No nomenclature: structural checks only.
    pub fn structural() -> Nomenclature {
        Nomenclature::default()
    }

    /// Parses the CSV (`section,hscode,description,parent,level`).
    pub fn parse(text: &str) -> Result<Nomenclature, String> {
        let mut codes = HashMap::new();
        let mut lines = text.trim_start_matches('\u{feff}').lines();
        let header = lines.next().ok_or("empty nomenclature file")?;
        if !header.starts_with("section,hscode") {
            return Err(format!("unexpected header '{header}'"));
        }
        for (i, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f = split_csv(line);
            if f.len() < 3 {
                return Err(format!("line {}: expected 5 columns", i + 2));
            }
            codes.insert(f[1].clone(), HsEntry { section: f[0].clone(), description: f[2].clone() });
        }
        Ok(Nomenclature { codes: std::sync::Arc::new(codes), source: None })
    }

    /// Loads a CSV file.
    pub fn load(path: &Path) -> Result<Nomenclature, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut n = Nomenclature::parse(&text)?;
        n.source = Some(path.to_path_buf());
        Ok(n)
    }

    /// Loads from `path`, else `$CBEC_HS_FILE`, else the default location; falls back to
    /// structural checks with a warning on stderr when no file is readable.
    pub fn load_or_structural(path: Option<&Path>) -> Nomenclature {
        let p = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(HS_FILE_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(HS_FILE_DEFAULT));
        match Nomenclature::load(&p) {
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "warning: HS nomenclature not loaded ({e}); gcode checks are structural only \
                     (10 digits, chapter 01-97). Set {HS_FILE_ENV} or hs_file in the config."
                );
                Nomenclature::structural()
            }
        }
    }

    /// True when a nomenclature file is loaded.
    pub fn is_loaded(&self) -> bool {
        !self.codes.is_empty()
    }

    /// Where it was loaded from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Number of codes loaded.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True when nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Looks up a chapter (2), heading (4) or subheading (6) code.
    pub fn get(&self, code: &str) -> Option<&HsEntry> {
        self.codes.get(code)
    }

    /// All 6-digit subheadings, sorted (for generators).
    pub fn subheadings(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.codes.keys().filter(|k| k.len() == 6).map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Checks a 10-digit `gcode`: structure, then subheading membership when loaded.
    pub fn check(&self, gcode: &str) -> HsCheck {
        if gcode.len() != 10 || !gcode.bytes().all(|b| b.is_ascii_digit()) {
            return HsCheck::Malformed;
        }
        if self.is_loaded() {
            // The loaded nomenclature is the authority (it may hold national chapters).
            return if self.codes.contains_key(&gcode[..6]) { HsCheck::Known } else { HsCheck::UnknownSubheading };
        }
        let chapter: u32 = gcode[..2].parse().unwrap_or(0);
        if !(1..=97).contains(&chapter) || chapter == 77 {
            return HsCheck::Malformed;
        }
        HsCheck::Unverified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_csv_and_checks_codes() {
        let n = Nomenclature::parse(
            "section,hscode,description,parent,level\nI,01,\"Animals; live\",TOTAL,2\nI,0101,\"Horses, asses\",01,4\nI,010121,\"Horses; live, pure-bred\",0101,6\n",
        )
        .unwrap();
        assert_eq!(n.get("0101").unwrap().description, "Horses, asses");
        assert_eq!(n.check("0101210000"), HsCheck::Known);
        assert_eq!(n.check("0101290000"), HsCheck::UnknownSubheading);
        assert_eq!(n.check("010121000"), HsCheck::Malformed);
        assert_eq!(n.check("7700000000"), HsCheck::UnknownSubheading);
        assert_eq!(Nomenclature::structural().check("7700000000"), HsCheck::Malformed);
        assert_eq!(Nomenclature::structural().check("0101290000"), HsCheck::Unverified);
    }
}
