//! xlb's control plane: configuration, Maglev tables, the desired state, and the dataplane that
//! writes it into the XDP program's maps. The `xlbd` and `xlb` binaries are thin shells on top.

pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod state;
