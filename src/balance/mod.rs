//! Endpoint selection.

pub mod maglev;

pub use maglev::Maglev;
