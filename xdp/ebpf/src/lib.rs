//! Pieces shared by the xlb XDP programs: header layouts, bounds-checked packet access, the
//! Ethernet/IPv4 parser and checksum helpers. Each program (`src/bin/*.rs`) owns its maps.
#![no_std]

pub mod csum;
pub mod headers;
pub mod packet;
pub mod parse;
