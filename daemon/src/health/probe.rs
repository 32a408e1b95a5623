//! One probe as a non-blocking state machine over a socket registered with mio: started by
//! [`Probe::start`], moved on by [`Probe::on_ready`] each time its socket is ready, and ended by
//! a result or by the event loop's timeout ([`Probe::timed_out`]).

use std::{
    borrow::Cow,
    io::{self, Read, Write},
    net::SocketAddr,
    time::Duration,
};

use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Check, DEFAULT_HTTP_EXPECT, Target};

/// The most of an HTTP response read while looking for the status line.
pub(crate) const MAX_STATUS_LINE: usize = 1024;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether the probe passed.
    pub success: bool,
    /// What happened, for an operator: `"connected"`, `"HTTP 503"`, `"connection refused"`...
    pub detail: Cow<'static, str>,
}

impl Outcome {
    fn pass(detail: impl Into<Cow<'static, str>>) -> Outcome {
        Outcome {
            success: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<Cow<'static, str>>) -> Outcome {
        Outcome {
            success: false,
            detail: detail.into(),
        }
    }
}

/// The readiness epoll reported for a probe's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// EPOLLOUT.
    pub writable: bool,
    /// EPOLLERR: the socket holds an error.
    pub error: bool,
}

impl Ready {
    /// No event to go by (a last look before a timeout): every state is checked with a call.
    pub const UNKNOWN: Ready = Ready {
        writable: false,
        error: false,
    };
}

/// What starting a probe gave.
#[derive(Debug)]
pub(crate) enum Start {
    /// The socket is registered; wait for its events.
    Pending(Probe),
    /// The result is already known (an immediate error).
    Done(Outcome),
    /// Our side could not run the probe (no file descriptor, buffer, memory or ephemeral port):
    /// no result.
    Local(io::Error),
}

/// A probe in flight: its socket and where it is in its exchange.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Waiting for the connect to complete.
    Tcp(mio::net::TcpStream),
    /// An HTTP exchange.
    Http {
        /// The connection.
        stream: mio::net::TcpStream,
        /// Where the exchange is.
        phase: HttpPhase,
    },
    /// Waiting for the reply datagram.
    Udp(mio::net::UdpSocket),
}

/// The steps of an HTTP probe.
#[derive(Debug)]
pub(crate) enum HttpPhase {
    /// Waiting for the connect to complete.
    Connecting {
        /// The request to send once connected.
        request: Vec<u8>,
    },
    /// Sending the request; `written` bytes of it are out.
    Sending {
        /// The request.
        request: Vec<u8>,
        /// How much of it was written.
        written: usize,
    },
    /// Reading the response up to the end of its status line.
    Receiving {
        /// The response so far (at most [`MAX_STATUS_LINE`] bytes).
        response: Vec<u8>,
    },
}

/// Why a probe could not be started.
enum Failure {
    /// On our side: no result.
    Local(io::Error),
    /// An immediate failed result.
    Result(Outcome),
}

impl Probe {
    /// Opens the socket for `target`'s check, starts the exchange and registers the socket
    /// with `registry` under `token`.
    pub fn start(target: &Target, registry: &Registry, token: Token) -> Start {
        let started = match &target.settings.check {
            Check::Tcp => start_tcp(target).map(Probe::Tcp),
            Check::Http { path, host, .. } => start_tcp(target).map(|stream| Probe::Http {
                stream,
                phase: HttpPhase::Connecting {
                    request: request(path, host.as_deref(), target.address),
                },
            }),
            Check::Udp { payload, .. } => start_udp(target, payload),
        };
        let mut probe = match started {
            Ok(probe) => probe,
            Err(Failure::Result(outcome)) => return Start::Done(outcome),
            Err(Failure::Local(error)) => return Start::Local(error),
        };
        let registered = match &mut probe {
            Probe::Tcp(stream) | Probe::Http { stream, .. } => {
                registry.register(stream, token, Interest::READABLE | Interest::WRITABLE)
            }
            Probe::Udp(socket) => registry.register(socket, token, Interest::READABLE),
        };
        match registered {
            Ok(()) => Start::Pending(probe),
            Err(error) => Start::Local(error),
        }
    }

    /// Moves the exchange on after its socket was reported ready (`ready`: what epoll said,
    /// or [`Ready::UNKNOWN`]); `Some` when it is over. `check` is the target's check and
    /// `scratch` a buffer for datagrams.
    pub fn on_ready(&mut self, check: &Check, ready: Ready, scratch: &mut [u8]) -> Option<Outcome> {
        match self {
            Probe::Tcp(stream) => match connected(stream, ready) {
                Ok(true) => Some(Outcome::pass("connected")),
                Ok(false) => None,
                Err(error) => Some(Outcome::fail(describe(&error))),
            },
            Probe::Http { stream, phase } => {
                let Check::Http { expect, .. } = check else {
                    return Some(Outcome::fail("internal error: not an HTTP check"));
                };
                http_step(stream, phase, ready).map(|result| match result {
                    Ok(code) if expected(expect, code) => Outcome::pass(format!("HTTP {code}")),
                    Ok(code) => Outcome::fail(format!("HTTP {code}")),
                    Err(outcome) => outcome,
                })
            }
            Probe::Udp(socket) => {
                let Check::Udp { expect, .. } = check else {
                    return Some(Outcome::fail("internal error: not a UDP check"));
                };
                udp_step(socket, expect.as_deref(), scratch)
            }
        }
    }

    /// The failure of a probe still in flight after `timeout`.
    pub fn timed_out(&self, timeout: Duration) -> Outcome {
        let after = human(timeout);
        Outcome::fail(match self {
            Probe::Tcp(_)
            | Probe::Http {
                phase: HttpPhase::Connecting { .. },
                ..
            } => format!("timeout after {after}"),
            Probe::Http { .. } => format!("timeout after {after} waiting for the HTTP status"),
            Probe::Udp(_) => format!("timeout after {after} waiting for a UDP reply"),
        })
    }
}

/// Whether an error is about our own resources rather than the backend.
fn is_local(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A socket for `target`, non-blocking, with its mark and bind address set.
fn open(target: &Target, kind: Type, protocol: Protocol) -> Result<Socket, Failure> {
    let domain = Domain::for_address(target.address);
    let socket = Socket::new(domain, kind.nonblocking().cloexec(), Some(protocol))
        .map_err(|error| local_or(error, "socket"))?;
    if let Some(mark) = target.mark {
        socket
            .set_mark(mark)
            .map_err(|error| local_or(error, &format!("SO_MARK {mark}")))?;
    }
    if let Some(bind) = target.bind {
        if kind == Type::STREAM {
            // Without this, bind picks the source port on its own, unaware of the destination,
            // and many probes from one address would run out of ports long before the kernel
            // would at connect time, where the same port can serve many destinations.
            set_bind_address_no_port(&socket);
        }
        socket
            .bind(&SockAddr::from(SocketAddr::new(bind, 0)))
            .map_err(|error| local_or(error, &format!("bind {bind}")))?;
    }
    Ok(socket)
}

/// `error` as a local failure, or as a failed result named after the step.
fn local_or(error: io::Error, step: &str) -> Failure {
    if is_local(&error) {
        Failure::Local(error)
    } else {
        Failure::Result(Outcome::fail(format!("{step}: {error}")))
    }
}

fn set_bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket`; the option value points to a c_int
    // that outlives the call and whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // An optimisation only: the bind still works without it.
        tracing::debug!(error = %io::Error::last_os_error(), "IP_BIND_ADDRESS_NO_PORT");
    }
}

/// Starts a non-blocking TCP connect.
fn start_tcp(target: &Target) -> Result<mio::net::TcpStream, Failure> {
    let socket = open(target, Type::STREAM, Protocol::TCP)?;
    match socket.connect(&SockAddr::from(target.address)) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        // Out of ephemeral ports: ours to fix, not the backend's.
        Err(error)
            if is_local(&error)
                || (target.bind.is_none()
                    && matches!(
                        error.raw_os_error(),
                        Some(libc::EADDRNOTAVAIL | libc::EAGAIN)
                    )) =>
        {
            return Err(Failure::Local(error));
        }
        Err(error) => return Err(Failure::Result(Outcome::fail(describe(&error)))),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Opens a connected UDP socket and sends the payload.
fn start_udp(target: &Target, payload: &[u8]) -> Result<Probe, Failure> {
    let socket = open(target, Type::DGRAM, Protocol::UDP)?;
    if let Err(error) = socket.connect(&SockAddr::from(target.address)) {
        return Err(local_or(error, "connect"));
    }
    match socket.send(payload) {
        Ok(_) => {}
        Err(error) if is_local(&error) || error.kind() == io::ErrorKind::WouldBlock => {
            return Err(Failure::Local(error));
        }
        Err(error) => return Err(Failure::Result(Outcome::fail(describe_udp(&error)))),
    }
    Ok(Probe::Udp(mio::net::UdpSocket::from_std(socket.into())))
}

/// Whether a connecting stream is connected (`Ok(false)`: not yet), or why it failed.
///
/// A socket still in SYN-SENT is never writable, and epoll sets EPOLLERR whenever the socket
/// holds an error: writable without error means the handshake is done, with no system call.
/// That is the common case, and at 10,000 probes a second each call saved counts. Otherwise
/// `SO_ERROR`, then `getpeername` (mio's documented test) decide.
fn connected(stream: &mio::net::TcpStream, ready: Ready) -> io::Result<bool> {
    if ready.writable && !ready.error {
        return Ok(true);
    }
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(error)
            if error.kind() == io::ErrorKind::NotConnected
                || error.raw_os_error() == Some(libc::ENOTCONN) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The request an HTTP probe sends; the `Host` header is `host`, or else the address.
pub(crate) fn request(path: &str, host: Option<&str>, address: SocketAddr) -> Vec<u8> {
    let host = match host {
        Some(host) => Cow::Borrowed(host),
        None => Cow::Owned(address.to_string()),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: xlb-health\r\n\r\n"
    )
    .into_bytes()
}

/// Moves an HTTP exchange on: `Some(Ok(code))` once the status line is in, `Some(Err(_))` on a
/// failure, `None` to wait for the socket.
fn http_step(
    stream: &mut mio::net::TcpStream,
    phase: &mut HttpPhase,
    ready: Ready,
) -> Option<Result<u16, Outcome>> {
    if let HttpPhase::Connecting { request } = phase {
        match connected(stream, ready) {
            Ok(true) => {
                *phase = HttpPhase::Sending {
                    request: std::mem::take(request),
                    written: 0,
                };
            }
            Ok(false) => return None,
            Err(error) => return Some(Err(Outcome::fail(describe(&error)))),
        }
    }
    if let HttpPhase::Sending { request, written } = phase {
        while *written < request.len() {
            match stream.write(&request[*written..]) {
                Ok(0) => return Some(Err(Outcome::fail("connection closed while sending"))),
                Ok(n) => *written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Some(Err(Outcome::fail(format!("send: {}", describe(&error)))));
                }
            }
        }
        *phase = HttpPhase::Receiving {
            response: Vec::with_capacity(128),
        };
    }
    let HttpPhase::Receiving { response } = phase else {
        return None;
    };
    let mut buf = [0u8; MAX_STATUS_LINE];
    loop {
        let room = MAX_STATUS_LINE - response.len();
        match stream.read(&mut buf[..room]) {
            Ok(0) => {
                return Some(Err(Outcome::fail(
                    "connection closed before the HTTP status line",
                )));
            }
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                match parse_status_line(response) {
                    StatusLine::Code(code) => return Some(Ok(code)),
                    StatusLine::Invalid => {
                        return Some(Err(Outcome::fail(format!(
                            "bad HTTP status line {:?}",
                            first_line(response)
                        ))));
                    }
                    StatusLine::Incomplete if response.len() >= MAX_STATUS_LINE => {
                        return Some(Err(Outcome::fail(format!(
                            "no HTTP status line in the first {MAX_STATUS_LINE} bytes"
                        ))));
                    }
                    StatusLine::Incomplete => {}
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                return Some(Err(Outcome::fail(format!("receive: {}", describe(&error)))));
            }
        }
    }
}

/// The first line of a response, cut short, for a reason string.
fn first_line(response: &[u8]) -> String {
    let end = response
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(response.len())
        .min(64);
    String::from_utf8_lossy(&response[..end]).into_owned()
}

/// Reads the reply datagram, if one is in.
fn udp_step(
    socket: &mio::net::UdpSocket,
    expect: Option<&[u8]>,
    scratch: &mut [u8],
) -> Option<Outcome> {
    loop {
        match socket.recv(scratch) {
            Ok(n) => {
                let reply = &scratch[..n];
                return Some(match expect {
                    Some(expect) if !reply.starts_with(expect) => {
                        Outcome::fail(format!("UDP reply of {n} bytes did not match"))
                    }
                    _ => Outcome::pass(format!("UDP reply of {n} bytes")),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Some(Outcome::fail(describe_udp(&error))),
        }
    }
}

/// Whether `code` is in one of the ranges (or in [`DEFAULT_HTTP_EXPECT`] if there are none).
fn expected(expect: &[std::ops::RangeInclusive<u16>], code: u16) -> bool {
    if expect.is_empty() {
        DEFAULT_HTTP_EXPECT.contains(&code)
    } else {
        expect.iter().any(|range| range.contains(&code))
    }
}

/// A short name for a connect or transfer error.
fn describe(error: &io::Error) -> Cow<'static, str> {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::EHOSTUNREACH) => "host unreachable".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        Some(libc::ETIMEDOUT) => "connection timed out".into(),
        Some(libc::EPIPE) => "connection closed".into(),
        _ => error.to_string().into(),
    }
}

/// Like [`describe`], naming the ICMP error a UDP socket turns into `ECONNREFUSED`.
fn describe_udp(error: &io::Error) -> Cow<'static, str> {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "port unreachable".into(),
        _ => describe(error),
    }
}

/// A duration the way an operator writes it: `1s`, `1.5s`, `300ms`, `250us`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// What the start of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusLine {
    /// The line is not complete yet.
    Incomplete,
    /// A well-formed status line with this code.
    Code(u16),
    /// Not an HTTP/1.x status line.
    Invalid,
}

/// Parses `HTTP/d.d NNN[ reason]` ending in CRLF (or a bare LF). Garbage is reported as
/// soon as the bytes in show it cannot become a status line.
pub(crate) fn parse_status_line(buf: &[u8]) -> StatusLine {
    // "HTTP/1.1 200" is 12 bytes; everything before the line end must fit this shape.
    const SHAPE: &[u8] = b"HTTP/d.d ddd";
    let end = buf.iter().position(|&b| b == b'\n');
    let line = match end {
        Some(end) => buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]),
        None => buf,
    };
    let head = &line[..line.len().min(SHAPE.len())];
    let fits = head.iter().zip(SHAPE).all(|(&b, &shape)| match shape {
        b'd' => b.is_ascii_digit(),
        _ => b == shape,
    });
    if !fits {
        return StatusLine::Invalid;
    }
    if end.is_none() {
        // A complete code needs the byte after it (a space or the line end) to be known.
        return StatusLine::Incomplete;
    }
    if line.len() < SHAPE.len() || (line.len() > SHAPE.len() && line[SHAPE.len()] != b' ') {
        return StatusLine::Invalid;
    }
    let code = line[9..12]
        .iter()
        .fold(0u16, |code, &d| code * 10 + u16::from(d - b'0'));
    if code < 100 {
        return StatusLine::Invalid;
    }
    StatusLine::Code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_codes() {
        for (input, expected) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], StatusLine::Code(200)),
            (
                b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n",
                StatusLine::Code(503),
            ),
            (b"HTTP/1.1 204\r\n", StatusLine::Code(204)),
            (b"HTTP/1.1 404 \r\n", StatusLine::Code(404)),
            (b"HTTP/1.1 302 Found\n", StatusLine::Code(302)),
            (b"HTTP/1.1 100 Continue\r\n", StatusLine::Code(100)),
            (b"HTTP/1.1 599 odd\r\n", StatusLine::Code(599)),
        ] {
            assert_eq!(parse_status_line(input), expected, "{input:?}");
        }
    }

    #[test]
    fn status_line_incomplete() {
        for input in [
            &b""[..],
            b"H",
            b"HTTP/",
            b"HTTP/1.1",
            b"HTTP/1.1 2",
            b"HTTP/1.1 200",
            b"HTTP/1.1 200 O",
            b"HTTP/1.1 200 OK\r",
        ] {
            assert_eq!(
                parse_status_line(input),
                StatusLine::Incomplete,
                "{input:?}"
            );
        }
    }

    #[test]
    fn status_line_invalid() {
        for input in [
            &b"<html>"[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"http/1.1 200 OK\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 abc OK\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"HTTP/11 200 OK\r\n",
            b"HTTP/1.1 200OK\r\n",
            b"HTTP/1.1 099 Low\r\n",
        ] {
            assert_eq!(parse_status_line(input), StatusLine::Invalid, "{input:?}");
        }
        // Garbage is seen before the line ends.
        assert_eq!(parse_status_line(b"HTTX"), StatusLine::Invalid);
        assert_eq!(parse_status_line(b"HTTP/1.1 2x"), StatusLine::Invalid);
    }

    #[test]
    fn status_line_in_a_long_response_is_found_in_its_first_line() {
        let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
        response.extend(std::iter::repeat_n(b'x', 5000));
        assert_eq!(parse_status_line(&response), StatusLine::Code(200));
    }

    #[test]
    fn expected_codes() {
        assert!(expected(&[], 200));
        assert!(expected(&[], 399));
        assert!(!expected(&[], 400));
        assert!(!expected(&[], 199));
        assert!(expected(&[200..=200, 404..=404], 404));
        assert!(!expected(&[200..=200, 404..=404], 301));
    }

    #[test]
    fn request_text() {
        let address: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        assert_eq!(
            request("/healthz", Some("svc.example"), address),
            b"GET /healthz HTTP/1.1\r\nHost: svc.example\r\nConnection: close\r\nUser-Agent: xlb-health\r\n\r\n"
        );
        assert_eq!(
            request("/", None, address),
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\nConnection: close\r\nUser-Agent: xlb-health\r\n\r\n"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(300)), "300ms");
        assert_eq!(human(Duration::from_micros(250)), "250us");
        assert_eq!(human(Duration::from_millis(2250)), "2.25s");
    }
}
