//! The operating-system edge (feature `std`): the TAP device, the smoltcp interface that gives
//! the node its ARP, ping and sockets, the clock, signals, and the loop that ties them to the
//! engine. Everything here is glue; decisions live in the `no_std` core.

pub mod control;
pub mod device;
pub mod health;
pub mod http;
pub mod load;
pub mod memory;
pub mod runner;
pub mod sync;
mod sys;
pub mod tap;
