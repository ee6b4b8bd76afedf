//! Reading a config file: a bounded read, then the core's parser. Errors name the file.

use std::boxed::Box;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::config::{self, Config, ConfigError};

/// The config compiled into the binary, used when no `--config` is given.
pub const DEFAULT_CONFIG: &[u8] = include_bytes!("../../config/default.json");
pub const DEFAULT_CONFIG_NAME: &str = "config/default.json (built in)";

/// Largest config file accepted: far above any config the largest board holds.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a config file was not loaded; each names the file.
#[derive(Debug)]
pub enum LoadError {
    Read { file: String, error: io::Error },
    TooLarge { file: String },
    Invalid { file: String, error: Box<ConfigError> },
}

impl std::error::Error for LoadError {}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            LoadError::Read { file, error } => write!(f, "{file}: cannot read: {error}"),
            LoadError::TooLarge { file } => write!(f, "{file}: larger than {MAX_CONFIG_BYTES} bytes"),
            LoadError::Invalid { file, error } => write!(f, "{file}: {error}"),
        }
    }
}

/// Reads and validates `path`, or the built-in default. Errors read `FILE: path: reason`.
pub fn load(path: Option<&Path>) -> Result<(String, Config), LoadError> {
    let (file, bytes) = match path {
        None => (DEFAULT_CONFIG_NAME.to_string(), DEFAULT_CONFIG.to_vec()),
        Some(p) => (p.display().to_string(), read(p)?),
    };
    match config::parse(&bytes) {
        Ok(cfg) => Ok((file, cfg)),
        Err(error) => Err(LoadError::Invalid { file, error: Box::new(error) }),
    }
}

fn read(p: &Path) -> Result<Vec<u8>, LoadError> {
    let failed = |error| LoadError::Read { file: p.display().to_string(), error };
    let mut bytes = Vec::new();
    fs::File::open(p).map_err(failed)?.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(LoadError::TooLarge { file: p.display().to_string() });
    }
    Ok(bytes)
}
