//! nodegate: a firmware-style NodePort gateway.
//!
//! The crate is `no_std` and heap-free: configuration, the packet engine, connection tracking,
//! balancing and the neighbour table work on fixed-size storage whose sizes come from the board
//! (`boards/*.json`, chosen at build time). Only [`host`] (feature `std`) touches the operating
//! system: the TAP device, the smoltcp interface, the clock, signals and logging.
#![no_std]
#![deny(unsafe_code)]
// No input may make the gateway panic: no unwrap, expect, panic or unreachable outside tests.
// Indexing is the one panic path left to the code's own bounds checks (each packet view checks
// its lengths once, in `parse`); the fuzz targets in `fuzz/` hunt for a miss.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
// ConfigError is a fixed-size message (there is no heap to box it into), returned only while a
// config is loaded, never per packet.
#![allow(clippy::result_large_err)]

#[cfg(feature = "std")]
extern crate std;

/// An enum of reasons (why something was dropped), each with its metric label, and `ALL` in
/// counter order: `reasons! { /// doc\n pub enum Name { Variant => "label", ... } }`.
macro_rules! reasons {
    ($(#[doc = $tdoc:literal])* $vis:vis enum $ty:ident { $($(#[doc = $doc:literal])* $variant:ident => $name:literal,)* }) => {
        $(#[doc = $tdoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        $vis enum $ty {
            $($(#[doc = $doc])* $variant,)*
        }

        impl $ty {
            /// Every reason, in counter order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];

            /// The reason's metric label.
            pub const fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)*
                }
            }
        }
    };
}

pub mod affinity;
pub mod balance;
pub mod bfd;
pub mod board;
pub mod config;
pub mod conntrack;
pub mod engine;
pub mod hash;
pub mod health;
pub mod metrics;
pub mod neighbor;
pub mod random;
pub mod sync;
pub mod text;
pub mod time;

#[cfg(feature = "std")]
pub mod host;
