//! xlbd's control API: HTTP/1.1 with JSON bodies on a Unix socket (and, optionally, on TCP with
//! a bearer token). Requests are routed into typed [`Command`]s; executing them is the
//! controller's job. The `xlb` CLI talks to it through [`client`]. The endpoints are documented
//! in `docs/api.md`.
//!
//! - [`http`]: the HTTP subset, limits and framing.
//! - [`server`]: listeners, access control, connection threads.
//! - [`routes`]: path and method to [`Command`], strict body parsing.
//! - [`types`]: commands, request bodies, response views, [`ApiError`].
//! - [`client`]: the blocking client.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
pub mod types;

pub use client::{ClientError, call, call_tcp};
pub use http::{Request, Response, Transport};
pub use routes::route;
pub use server::{Handler, ServerConfig, ServerError, ServerHandle, TcpListenConfig, start};
pub use types::{
    ApiError, BackendHealthView, BackendSpec, BackendView, ChangeResult, ChangeView, Command,
    FlowTableStatusView, HealthStatusView, ReloadView, StatusView, VipListView, VipSpec, VipView,
};
