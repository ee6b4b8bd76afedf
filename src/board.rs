//! Every capacity and timeout of the build, generated from `boards/$NODEGATE_BOARD.json` by
//! `build.rs`. Nothing else in the crate hard-codes a limit.

include!(concat!(env!("OUT_DIR"), "/board.rs"));
