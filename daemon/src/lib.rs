//! xlb's control plane: configuration, Maglev tables, the desired state, and the dataplane that
//! writes it into the XDP program's maps. The `xlbd` and `xlb` binaries are thin shells on top.

pub mod api;
pub mod check;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod events;
pub mod health;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod overlay;
pub mod pktgen;
pub mod signals;
pub mod state;
pub mod synthetic;
pub mod watch;

#[cfg(test)]
mod test_rng;
