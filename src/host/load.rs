//! Reading a config file: a bounded read, then the core's parser. Errors name the file.

use std::format;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::config::{self, Config};

/// The config compiled into the binary, used when no `--config` is given.
pub const DEFAULT_CONFIG: &[u8] = include_bytes!("../../config/default.json");
pub const DEFAULT_CONFIG_NAME: &str = "config/default.json (built in)";

/// Largest config file accepted: far above any config the largest board holds.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads and validates `path`, or the built-in default. Errors read `FILE: path: reason`.
pub fn load(path: Option<&Path>) -> Result<(String, Config), String> {
    let (name, bytes) = match path {
        None => (DEFAULT_CONFIG_NAME.to_string(), DEFAULT_CONFIG.to_vec()),
        Some(p) => (p.display().to_string(), read(p)?),
    };
    let cfg = config::parse(&bytes).map_err(|e| format!("{name}: {e}"))?;
    Ok((name, cfg))
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    let name = p.display();
    let file = fs::File::open(p).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{name}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("{name}: larger than {MAX_CONFIG_BYTES} bytes"));
    }
    Ok(bytes)
}
