//! The API's listeners: a Unix socket, trusted because its file mode and group are the access
//! control, and an optional TCP listener that requires a bearer token. Each listener has an
//! accept thread; each connection gets a thread of its own, at most [`MAX_CONNECTIONS`] at once,
//! and carries one request.

use std::{
    ffi::CString,
    fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{
            fs::{FileTypeExt, MetadataExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing::{debug, warn};

pub use super::http::{Request, Response, Transport};
use super::{
    http::{self, Connection, IO_TIMEOUT},
    types::ApiError,
};

/// Most connections served at once; one more is answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How often an accept thread looks at the shutdown flag while idle.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// How long an unread request is drained after an error answer, so the client sees the
/// answer instead of a reset.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// Most bytes drained after an error answer.
const DRAIN_BYTES: usize = 1 << 20;

/// What the API executes: one request in, one response out. Called on connection threads.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Where and how the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Path of the Unix socket (`/run/xlb/xlbd.sock`).
    pub unix_socket: PathBuf,
    /// File mode of the socket (`0o660`): who may connect is who may write to it.
    pub unix_socket_mode: u32,
    /// Group given the socket, by name; `None` leaves the daemon's group.
    pub unix_socket_group: Option<String>,
    /// The optional TCP listener.
    pub tcp: Option<TcpListenConfig>,
}

/// The TCP listener: every request must carry `Authorization: Bearer <token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct TcpListenConfig {
    /// Address and port to listen on.
    pub address: SocketAddr,
    /// The bearer token; must not be empty.
    pub token: String,
}

impl std::fmt::Debug for TcpListenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("TcpListenConfig")
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live daemon answers on the socket.
    #[error(
        "another xlbd is already listening on {path}: stop it first, or give this one another \
         api socket"
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket path is taken by something that is not a socket.
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Checking an existing socket file failed.
    #[error("checking existing socket {path}: {source}")]
    Probe {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket's directory could not be created.
    #[error("creating directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A stale socket file could not be removed.
    #[error("removing stale socket {path}: {source}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the Unix socket failed.
    #[error("listening on {path}: {source}")]
    BindUnix {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting the socket's mode failed.
    #[error("setting mode {mode:o} on {path}: {source}")]
    Chmod {
        /// The socket.
        path: PathBuf,
        /// The mode.
        mode: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket group does not exist.
    #[error("api socket group {group:?} does not exist")]
    UnknownGroup {
        /// The group name.
        group: String,
    },
    /// Looking the group up failed.
    #[error("looking up group {group:?}: {source}")]
    GroupLookup {
        /// The group name.
        group: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Giving the socket its group failed.
    #[error("giving {path} to group {group:?}: {source}")]
    Chown {
        /// The socket.
        path: PathBuf,
        /// The group name.
        group: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The TCP listener was configured without a token.
    #[error("the TCP api listener needs a non-empty token: without one anybody could drive xlbd")]
    MissingToken,
    /// Binding the TCP listener failed.
    #[error("listening on {address}: {source}")]
    BindTcp {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An accept thread could not be started.
    #[error("starting the api thread: {0}")]
    Spawn(#[source] io::Error),
}

/// The running API. Dropping it stops accepting and removes the socket file.
#[derive(Debug)]
pub struct ServerHandle {
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    unix_socket: PathBuf,
    /// Device and inode of the socket we bound, so we never remove a successor's socket.
    socket_id: (u64, u64),
    tcp_address: Option<SocketAddr>,
}

impl ServerHandle {
    /// The Unix socket's path.
    pub fn unix_socket(&self) -> &Path {
        &self.unix_socket
    }

    /// The address the TCP listener is bound to (with the real port if 0 was asked for).
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.tcp_address
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Connections being served finish on their own threads, bounded by the I/O timeouts.
        if let Ok(meta) = fs::symlink_metadata(&self.unix_socket)
            && (meta.dev(), meta.ino()) == self.socket_id
        {
            let _ = fs::remove_file(&self.unix_socket);
        }
    }
}

/// Starts the API: binds the Unix socket (and the TCP listener, if configured) and serves
/// every request with `handler` until the handle is dropped.
pub fn start(config: &ServerConfig, handler: Handler) -> Result<ServerHandle, ServerError> {
    start_with_limit(config, handler, MAX_CONNECTIONS)
}

fn start_with_limit(
    config: &ServerConfig,
    handler: Handler,
    max_connections: usize,
) -> Result<ServerHandle, ServerError> {
    // Every check that can fail comes before anything is created.
    if let Some(tcp) = &config.tcp
        && tcp.token.trim().is_empty()
    {
        return Err(ServerError::MissingToken);
    }
    let gid = match &config.unix_socket_group {
        Some(group) => Some((group, group_id(group)?)),
        None => None,
    };
    let path = &config.unix_socket;
    remove_stale_socket(path)?;
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        fs::create_dir_all(parent).map_err(|source| ServerError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let unix = UnixListener::bind(path).map_err(|source| ServerError::BindUnix {
        path: path.clone(),
        source,
    })?;
    // Until the handle exists, a failure must remove the socket we just created.
    let cleanup = |error: ServerError| {
        let _ = fs::remove_file(path);
        error
    };
    fs::set_permissions(path, fs::Permissions::from_mode(config.unix_socket_mode)).map_err(
        |source| {
            cleanup(ServerError::Chmod {
                path: path.clone(),
                mode: config.unix_socket_mode,
                source,
            })
        },
    )?;
    if let Some((group, gid)) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
            cleanup(ServerError::Chown {
                path: path.clone(),
                group: group.clone(),
                source,
            })
        })?;
    }
    let meta = fs::symlink_metadata(path).map_err(|source| {
        cleanup(ServerError::Probe {
            path: path.clone(),
            source,
        })
    })?;
    let tcp = match &config.tcp {
        Some(tcp) => {
            let listener = TcpListener::bind(tcp.address).map_err(|source| {
                cleanup(ServerError::BindTcp {
                    address: tcp.address,
                    source,
                })
            })?;
            let address = listener.local_addr().map_err(|source| {
                cleanup(ServerError::BindTcp {
                    address: tcp.address,
                    source,
                })
            })?;
            Some((
                listener,
                address,
                Arc::<[u8]>::from(tcp.token.trim().as_bytes()),
            ))
        }
        None => None,
    };

    let mut handle = ServerHandle {
        shutdown: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        unix_socket: path.clone(),
        socket_id: (meta.dev(), meta.ino()),
        tcp_address: tcp.as_ref().map(|(_, address, _)| *address),
    };
    let shared = Shared {
        handler,
        shutdown: handle.shutdown.clone(),
        active: Arc::new(AtomicUsize::new(0)),
        max_connections,
    };
    // From here on, dropping `handle` on error stops the threads and removes the socket.
    let thread = spawn_acceptor(unix, shared.clone(), None).map_err(ServerError::Spawn)?;
    handle.threads.push(thread);
    if let Some((listener, _, token)) = tcp {
        let thread = spawn_acceptor(listener, shared, Some(token)).map_err(ServerError::Spawn)?;
        handle.threads.push(thread);
    }
    Ok(handle)
}

/// Removes a socket file nothing listens on; refuses if a daemon answers or the path is not a
/// socket.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Probe {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ServerError::RemoveStale {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) => Err(ServerError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Resolves a group name to its id.
fn group_id(group: &str) -> Result<libc::gid_t, ServerError> {
    let unknown = || ServerError::UnknownGroup {
        group: group.to_owned(),
    };
    let name = CString::new(group).map_err(|_| unknown())?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: `libc::group` is a plain C struct of integers and pointers; all zeroes is a
        // valid value, and getgrnam_r overwrites it before we read it.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is a NUL-terminated string, `entry` and `result` are valid for writes,
        // and `buf` is valid for `buf.len()` bytes for the whole call. The re-entrant variant
        // keeps its strings in `buf`, so concurrent lookups cannot clobber each other.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(ServerError::GroupLookup {
                group: group.to_owned(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(unknown());
        }
        return Ok(entry.gr_gid);
    }
}

/// What every accept and connection thread shares.
#[derive(Clone)]
struct Shared {
    handler: Handler,
    shutdown: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    max_connections: usize,
}

/// A listener of either kind.
trait Listener: AsRawFd + Send + 'static {
    type Stream: Connection;
    const TRANSPORT: Transport;
    fn accept_one(&self) -> io::Result<Self::Stream>;
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    const TRANSPORT: Transport = Transport::Unix;
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(stream, _)| stream)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UnixListener::set_nonblocking(self, nonblocking)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    const TRANSPORT: Transport = Transport::Tcp;
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpListener::set_nonblocking(self, nonblocking)
    }
}

fn spawn_acceptor<L: Listener>(
    listener: L,
    shared: Shared,
    token: Option<Arc<[u8]>>,
) -> io::Result<JoinHandle<()>> {
    // Non-blocking, so a connection that vanished between poll and accept cannot hang us.
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("xlb-api-accept".into())
        .spawn(move || accept_loop(&listener, &shared, token.as_ref()))
}

/// Waits up to `timeout` for the listener to have a connection; false on timeout or error.
fn readable(listener: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is one initialised `pollfd` on our stack, valid for the whole call, and
    // the count passed is 1. The descriptor stays open: the listener outlives the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    ready > 0
}

fn accept_loop<L: Listener>(listener: &L, shared: &Shared, token: Option<&Arc<[u8]>>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        if !readable(listener, ACCEPT_POLL) {
            continue;
        }
        let stream = match listener.accept_one() {
            Ok(stream) => stream,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(%error, transport = ?L::TRANSPORT, "accepting an api connection");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            warn!(limit = shared.max_connections, transport = ?L::TRANSPORT, "api busy, connection refused");
            refuse_busy(stream, shared.max_connections);
            continue;
        }
        let guard = ActiveGuard(shared.active.clone());
        let handler = shared.handler.clone();
        let token = token.cloned();
        let spawned = std::thread::Builder::new()
            .name("xlb-api-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, L::TRANSPORT, token.as_deref(), &handler);
            });
        if let Err(error) = spawned {
            // The closure, and with it the guard and the stream, is dropped: the client sees
            // the connection close.
            warn!(%error, "starting an api connection thread");
        }
    }
}

/// Releases a connection slot when the connection's thread ends, even by panic.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers 503 on the accept thread without ever blocking it for long.
fn refuse_busy(mut stream: impl Connection, limit: usize) {
    // Swallow what the client already sent, so closing does not reset the connection before
    // it reads the answer.
    if stream.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_timeouts(Duration::from_millis(200));
    let response = ApiError::unavailable(format!(
        "too many api connections (limit {limit}): try again"
    ));
    let _ = http::write_response(&mut stream, &response.into());
    stream.shutdown_write();
}

/// Serves one connection: one request, one response.
fn serve(
    mut stream: impl Connection,
    transport: Transport,
    token: Option<&[u8]>,
    handler: &Handler,
) {
    let _ = stream.set_timeouts(IO_TIMEOUT);
    let (response, fully_read, target) = match http::read_head(&mut stream) {
        Err(error) => (error.into(), false, None),
        Ok(head) => {
            let target = Some((head.method.clone(), head.path.clone()));
            if let Some(token) = token
                && !authorized(head.authorization.as_deref(), token)
            {
                let error = if head.authorization.is_none() {
                    ApiError::unauthorized("missing Authorization: Bearer <token>")
                } else {
                    ApiError::unauthorized("invalid bearer token")
                };
                (error.into(), false, target)
            } else {
                match http::read_body(&mut stream, &head) {
                    Err(error) => (error.into(), false, target),
                    Ok(body) => {
                        let request = head.into_request(body, transport);
                        (call(handler, request), true, target)
                    }
                }
            }
        }
    };
    let (method, path) = target.unwrap_or_default();
    debug!(transport = ?transport, %method, %path, status = response.status, "api request");
    if let Err(error) = http::write_response(&mut stream, &response) {
        debug!(%error, "writing an api response");
        return;
    }
    stream.shutdown_write();
    if !fully_read {
        drain(&mut stream);
    }
}

/// Runs the handler; a panic in it becomes a 500 instead of a silently dropped connection.
fn call(handler: &Handler, request: Request) -> Response {
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler(request))) {
        Ok(response) => response,
        Err(_) => {
            warn!("api handler panicked");
            ApiError::internal("internal error: the request handler panicked").into()
        }
    }
}

/// Reads and discards what is left of a request we answered early, within bounds.
fn drain(stream: &mut impl Connection) {
    let _ = stream.set_timeouts(DRAIN_TIMEOUT);
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < DRAIN_BYTES {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Whether `header` is `Bearer <token>`, compared in constant time.
fn authorized(header: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(header) = header else {
        return false;
    };
    let Some(scheme) = header.get(..7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let presented = header[7..].trim_ascii();
    constant_time_eq(presented, token)
}

/// Compares without stopping at the first difference, so timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(x ^ y));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use serde_json::json;

    use super::*;
    use crate::api::client;

    /// A fresh socket path per test in the temp dir, removed with its directory on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "xlb-api-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn socket(&self) -> PathBuf {
            self.0.join("xlbd.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn echo() -> Handler {
        Arc::new(|request: Request| {
            Response::new(
                200,
                json!({
                    "method": request.method,
                    "path": request.path,
                    "body": String::from_utf8_lossy(&request.body),
                    "transport": format!("{:?}", request.transport),
                }),
            )
        })
    }

    fn config(socket: PathBuf) -> ServerConfig {
        ServerConfig {
            unix_socket: socket,
            unix_socket_mode: 0o660,
            unix_socket_group: None,
            tcp: None,
        }
    }

    #[test]
    fn serves_on_a_unix_socket_with_its_mode_and_cleans_up() {
        let dir = TempDir::new("unix");
        let socket = dir.socket();
        let server = start(&config(socket.clone()), echo()).unwrap();
        let meta = fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(server.unix_socket(), socket);

        let body = json!({"weight": 5});
        let (status, answer) = client::call(
            &socket,
            "PUT",
            "/v1/vips/web/backends/a/weight",
            Some(&body),
        )
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["method"], "PUT");
        assert_eq!(answer["body"], r#"{"weight":5}"#);
        assert_eq!(answer["transport"], "Unix");

        drop(server);
        assert!(!socket.exists(), "socket removed on drop");
    }

    #[test]
    fn refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = TempDir::new("stale");
        let socket = dir.socket();
        let server = start(&config(socket.clone()), echo()).unwrap();
        let error = start(&config(socket.clone()), echo()).unwrap_err();
        assert!(
            matches!(error, ServerError::AlreadyRunning { .. }),
            "{error}"
        );
        // The refused start left the live socket alone.
        assert_eq!(client::call(&socket, "GET", "/x", None).unwrap().0, 200);
        drop(server);

        // A socket file nothing listens on, as a crashed daemon leaves behind.
        drop(UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let server = start(&config(socket.clone()), echo()).unwrap();
        assert_eq!(client::call(&socket, "GET", "/x", None).unwrap().0, 200);
        drop(server);

        fs::write(&socket, "not a socket").unwrap();
        let error = start(&config(socket.clone()), echo()).unwrap_err();
        assert!(matches!(error, ServerError::NotASocket { .. }), "{error}");
        assert!(socket.exists(), "a regular file is never removed");
    }

    #[test]
    fn an_unknown_group_is_refused_before_anything_is_created() {
        let dir = TempDir::new("group");
        let mut config = config(dir.socket());
        config.unix_socket_group = Some("xlb-no-such-group-4711".into());
        let error = start(&config, echo()).unwrap_err();
        assert!(matches!(error, ServerError::UnknownGroup { .. }), "{error}");
        assert!(!dir.socket().exists());
    }

    #[test]
    fn the_socket_gets_the_named_group() {
        let dir = TempDir::new("owngroup");
        // Our own group: the one group every user may give a file without privileges.
        let probe = dir.0.join("probe");
        fs::write(&probe, "").unwrap();
        let gid = fs::metadata(&probe).unwrap().gid();
        let groups = fs::read_to_string("/etc/group").unwrap_or_default();
        let Some(name) = groups.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&gid.to_string().as_str())).then(|| fields[0].to_owned())
        }) else {
            eprintln!("gid {gid} has no name in /etc/group: skipped");
            return;
        };
        let mut config = config(dir.socket());
        config.unix_socket_group = Some(name);
        config.unix_socket_mode = 0o600;
        let server = start(&config, echo()).unwrap();
        let meta = fs::symlink_metadata(dir.socket()).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.mode() & 0o777, 0o600);
        drop(server);
    }

    #[test]
    fn tcp_needs_a_token_and_checks_it() {
        let dir = TempDir::new("tcp");
        let mut config = config(dir.socket());
        config.tcp = Some(TcpListenConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            token: "  ".into(),
        });
        let error = start(&config, echo()).unwrap_err();
        assert!(matches!(error, ServerError::MissingToken), "{error}");
        assert!(!dir.socket().exists());

        config.tcp.as_mut().unwrap().token = "s3cret-token".into();
        let server = start(&config, echo()).unwrap();
        let address = server.tcp_address().unwrap();
        assert_ne!(address.port(), 0);

        let raw = |request: &str| {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let answer = raw("GET /v1/status HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
        assert!(answer.contains("missing Authorization"), "{answer}");

        let error = client::call_tcp(address, "wrong", "GET", "/v1/status", None).unwrap();
        assert_eq!(error.0, 401);
        assert_eq!(error.1["error"], "invalid bearer token");

        let (status, answer) =
            client::call_tcp(address, "s3cret-token", "GET", "/v1/status", None).unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["transport"], "Tcp");
    }

    #[test]
    fn connections_beyond_the_limit_get_503_and_slots_come_back() {
        let dir = TempDir::new("busy");
        let socket = dir.socket();
        let server = start_with_limit(&config(socket.clone()), echo(), 1).unwrap();
        // Holds the only slot: the server waits for its request.
        let idle = UnixStream::connect(&socket).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (status, answer) = client::call(&socket, "GET", "/v1/status", None).unwrap();
        assert_eq!(status, 503, "{answer}");
        drop(idle);
        // The slot is released once the idle connection's thread sees it close.
        let mut status = 0;
        for _ in 0..50 {
            status = client::call(&socket, "GET", "/v1/status", None).unwrap().0;
            if status == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(status, 200);
        drop(server);
    }

    #[test]
    fn malformed_requests_and_panics_are_answered() {
        let dir = TempDir::new("malformed");
        let socket = dir.socket();
        let panicky: Handler = Arc::new(|_| panic!("boom"));
        let server = start(&config(socket.clone()), panicky).unwrap();
        let raw = |request: &[u8]| {
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.write_all(request).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let answer = raw(b"\x16\x03\x01 definitely not http\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.ends_with("}\n"), "{answer}");
        let mut big = b"POST /v1/vips HTTP/1.1\r\nContent-Length: 70000\r\n\r\n".to_vec();
        big.resize(big.len() + 70000, b'x');
        let answer = raw(&big);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        let answer = raw(b"GET /v1/status HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
        drop(server);
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(authorized(Some(b"Bearer abc"), b"abc"));
        assert!(authorized(Some(b"bearer  abc "), b"abc"));
        for bad in [
            &b"Bearer ab"[..],
            b"Bearer abcd",
            b"Basic abc",
            b"Bearer",
            b"",
        ] {
            assert!(!authorized(Some(bad), b"abc"), "{bad:?}");
        }
        assert!(!authorized(None, b"abc"));
    }
}
