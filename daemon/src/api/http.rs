//! The small HTTP/1.1 subset the API speaks: one request per connection, a head of at most
//! [`MAX_HEAD_BYTES`] with at most [`MAX_HEADERS`] headers, a body framed by `Content-Length`
//! only and at most [`MAX_BODY_BYTES`], and JSON answers with `Connection: close`.
//!
//! Every way a request can be malformed ends as an [`ApiError`] with the status that says why;
//! nothing here panics on any input.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    os::unix::net::UnixStream,
    time::Duration,
};

use super::types::ApiError;

/// Most headers a request may have.
pub const MAX_HEADERS: usize = 32;
/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Read and write timeout of a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket: trusted, its file permissions are the access control.
    Unix,
    /// The TCP listener: the bearer token was checked before the request got here.
    Tcp,
}

/// One API request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The path, still percent-encoded (`/v1/vips/web`).
    pub path: String,
    /// What follows `?` in the request target, if anything.
    pub query: Option<String>,
    /// The media type of the body, lowercased and without parameters (`application/json`).
    pub content_type: Option<String>,
    /// The body (empty when none was sent).
    pub body: Vec<u8>,
    /// The listener it came through.
    pub transport: Transport,
}

/// One API answer; always sent as `application/json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl Response {
    /// A response with the given status and body.
    pub fn new(status: u16, body: serde_json::Value) -> Self {
        Self { status, body }
    }

    /// A response whose body is `value` serialised; 500 if it cannot be.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(body) => Self { status, body },
            Err(error) => ApiError::internal(format!("serialising the answer: {error}")).into(),
        }
    }
}

/// A connection of either kind, as the server and the client use it.
pub(crate) trait Connection: Read + Write + Send + 'static {
    /// Sets the read and the write timeout.
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
    /// Switches non-blocking mode.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// Tells the peer we are done writing; errors are irrelevant by then.
    fn shutdown_write(&self);
}

impl Connection for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, nonblocking)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Connection for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpStream::set_nonblocking(self, nonblocking)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// The head of a request, parsed and checked, before its body is read.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) content_type: Option<String>,
    /// The raw `Authorization` value, if sent.
    pub(crate) authorization: Option<Vec<u8>>,
    pub(crate) content_length: usize,
    expect_continue: bool,
    /// Body bytes that arrived in the same reads as the head.
    leftover: Vec<u8>,
}

/// Reads and checks a whole request, head then body, answering `Expect: 100-continue`.
pub fn read_request<S: Read + Write>(
    stream: &mut S,
    transport: Transport,
) -> Result<Request, ApiError> {
    let head = read_head(stream)?;
    let body = read_body(stream, &head)?;
    Ok(head.into_request(body, transport))
}

impl Head {
    pub(crate) fn into_request(self, body: Vec<u8>, transport: Transport) -> Request {
        Request {
            method: self.method,
            path: self.path,
            query: self.query,
            content_type: self.content_type,
            body,
            transport,
        }
    }
}

fn io_error(error: &io::Error) -> ApiError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ApiError::request_timeout("timed out reading the request")
        }
        _ => ApiError::bad_request(format!("reading the request: {error}"), None),
    }
}

/// Reads the request line and headers, and checks everything the body depends on.
pub(crate) fn read_head(stream: &mut impl Read) -> Result<Head, ApiError> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        let n = match stream.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error(&error)),
        };
        if n == 0 {
            return Err(ApiError::bad_request(
                if len == 0 {
                    "empty request"
                } else {
                    "connection closed inside the request head"
                },
                None,
            ));
        }
        len += n;
        if let Some(head) = parse_head(&buf[..len])? {
            return Ok(head);
        }
        if len == buf.len() {
            return Err(ApiError::header_too_large(format!(
                "request head larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
    }
}

/// Parses a head from `data`: `Ok(None)` if more bytes are needed.
fn parse_head(data: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::header_too_large(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        Err(error) => {
            return Err(ApiError::bad_request(
                format!("malformed request: {error}"),
                None,
            ));
        }
    };
    // A complete parse always has all three; the fallbacks only keep this panic-free.
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(ApiError::bad_request(
            format!("request target {target:?} is not a path starting with /"),
            None,
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };

    let mut content_length: Option<usize> = None;
    let mut content_type = None;
    let mut authorization = None;
    let mut transfer_encoding = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(ApiError::bad_request(
                    "conflicting Content-Length headers",
                    None,
                ));
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| ApiError::bad_request("Content-Type is not valid text", None))?;
            let media_type = value.split(';').next().unwrap_or_default().trim();
            content_type = Some(media_type.to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if transfer_encoding {
        // Both at once is the classic request-smuggling ambiguity; refuse it outright.
        return Err(if content_length.is_some() {
            ApiError::bad_request("both Transfer-Encoding and Content-Length were sent", None)
        } else {
            ApiError::length_required(
                "Transfer-Encoding (chunked) is not supported: send the body with Content-Length",
            )
        });
    }
    let leftover = data[head_len..].to_vec();
    let content_length = match content_length {
        Some(n) => n,
        None if leftover.is_empty() => 0,
        None => {
            return Err(ApiError::length_required(
                "a body was sent without Content-Length",
            ));
        }
    };
    if content_length > MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "body of {content_length} bytes is larger than the limit of {MAX_BODY_BYTES}"
        )));
    }
    Ok(Some(Head {
        method,
        path,
        query,
        content_type,
        authorization,
        content_length,
        expect_continue,
        leftover,
    }))
}

fn parse_content_length(value: &[u8]) -> Result<usize, ApiError> {
    let bad = || ApiError::bad_request("Content-Length is not a number", None);
    let text = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Too many digits for usize is simply too large.
    Ok(text.parse::<usize>().unwrap_or(usize::MAX))
}

/// Reads the body announced by `head`, answering `Expect: 100-continue` first if asked.
pub(crate) fn read_body<S: Read + Write>(stream: &mut S, head: &Head) -> Result<Vec<u8>, ApiError> {
    let mut body = head.leftover.clone();
    // Only one request per connection: bytes past the body are ignored.
    body.truncate(head.content_length);
    if body.len() < head.content_length && head.expect_continue {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|error| io_error(&error))?;
    }
    let mut chunk = [0u8; 4096];
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => {
                return Err(ApiError::bad_request(
                    format!(
                        "body ended after {} of {} bytes (Content-Length)",
                        body.len(),
                        head.content_length
                    ),
                    None,
                ));
            }
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error(&error)),
        }
    }
    Ok(body)
}

/// The reason phrase of the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialises a response: status line, `Content-Type`, `Content-Length`, `Connection: close`,
/// `Allow` for a 405 and `WWW-Authenticate` for a 401, then the JSON body and a newline.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut body = serde_json::to_vec(&response.body).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        body.len()
    );
    if response.status == 405
        && let Some(allow) = response.body.get("allow").and_then(|a| a.as_array())
    {
        let methods: Vec<&str> = allow.iter().filter_map(|m| m.as_str()).collect();
        head.push_str(&format!("Allow: {}\r\n", methods.join(", ")));
    }
    if response.status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"xlb\"\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes a response to the stream.
pub fn write_response(stream: &mut impl Write, response: &Response) -> io::Result<()> {
    stream.write_all(&encode_response(response))?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A stream that reads from fixed bytes and records what is written back.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn new(input: &[u8]) -> Self {
            Self {
                input: Cursor::new(input.to_vec()),
                output: Vec::new(),
            }
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // Small reads, so heads and bodies arrive in pieces as over a real socket.
            let n = buf.len().min(7);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(input: &[u8]) -> Result<Request, ApiError> {
        read_request(&mut Duplex::new(input), Transport::Unix)
    }

    fn status_of(input: &[u8]) -> u16 {
        match read(input) {
            Ok(request) => panic!("expected an error, got {request:?}"),
            Err(error) => error.status,
        }
    }

    #[test]
    fn parses_a_get_and_a_post_with_a_body() {
        let request = read(b"GET /v1/vips?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1/vips");
        assert_eq!(request.query.as_deref(), Some("x=1"));
        assert!(request.body.is_empty());

        let request = read(
            b"POST /v1/vips HTTP/1.1\r\ncontent-type: Application/JSON; charset=utf-8\r\n\
              Content-Length: 13\r\n\r\n{\"name\":\"a\"}\ntrailing junk",
        )
        .unwrap();
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert_eq!(request.body, b"{\"name\":\"a\"}\n");
        assert_eq!(request.transport, Transport::Unix);
    }

    #[test]
    fn answers_expect_100_continue_before_reading_the_body() {
        let mut stream = Duplex::new(
            b"PUT /v1/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        );
        let head = read_head(&mut stream).unwrap();
        // Read in 7-byte pieces, the body has not arrived with the head.
        assert!(head.leftover.is_empty());
        let body = read_body(&mut stream, &head).unwrap();
        assert_eq!(body, b"{}");
        assert_eq!(stream.output, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn every_malformed_class_gets_its_status() {
        assert_eq!(status_of(b""), 400, "empty");
        assert_eq!(status_of(b"\x00\x01garbage\r\n\r\n"), 400, "garbage");
        assert_eq!(status_of(b"\r\nHost: x\r\n\r\n"), 400, "no request line");
        assert_eq!(
            status_of(b"GET\r\n\r\n"),
            400,
            "request line without target"
        );
        assert_eq!(
            status_of(b"GET /v1 HTTP/1.1\r\n"),
            400,
            "closed inside head"
        );
        assert_eq!(
            status_of(b"GET http://x/v1 HTTP/1.1\r\n\r\n"),
            400,
            "absolute form"
        );
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status_of(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431,
            "too many headers"
        );
        let long = "a".repeat(MAX_HEAD_BYTES);
        assert_eq!(
            status_of(format!("GET / HTTP/1.1\r\nX: {long}\r\n\r\n").as_bytes()),
            431,
            "head too large"
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            413,
            "body too large"
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            411,
            "chunked"
        );
        assert_eq!(
            status_of(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"
            ),
            400,
            "chunked and length"
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\n\r\n{\"a\":1}"),
            411,
            "body without Content-Length"
        );
        for bad in ["abc", "-1", "1e3", "", "0x10", "1 2"] {
            assert_eq!(
                status_of(format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n").as_bytes()),
                400,
                "Content-Length {bad:?}"
            );
        }
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413,
            "huge Content-Length"
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
            400,
            "conflicting Content-Length"
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}"),
            400,
            "short body"
        );
    }

    #[test]
    fn a_body_at_the_limit_is_accepted() {
        let body = vec![b' '; MAX_BODY_BYTES];
        let mut input =
            format!("PUT / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n").into_bytes();
        input.extend_from_slice(&body);
        assert_eq!(read(&input).unwrap().body.len(), MAX_BODY_BYTES);
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift64*: seeded, so a failure is reproducible.
        let mut state: u64 = 0x786c_6221_dead_beef;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let prefixes: [&[u8]; 4] = [
            b"",
            b"GET / HTTP/1.1\r\n",
            b"POST /v1/vips HTTP/1.1\r\nContent-Length: ",
            b"PUT /v1/x HTTP/1.1\r\nTransfer-Encoding: ",
        ];
        for round in 0..3000 {
            let mut input = prefixes[round % prefixes.len()].to_vec();
            let len = (next() % 300) as usize;
            for _ in 0..len {
                let byte = next() as u8;
                // Lean towards the bytes that matter to the parser.
                input.push(match byte % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => b' ',
                    _ => byte,
                });
            }
            if let Err(error) = read(&input) {
                assert!((400..500).contains(&error.status), "{error:?}");
            }
        }
    }

    #[test]
    fn responses_are_json_with_connection_close() {
        let text = String::from_utf8(encode_response(&Response::new(
            200,
            serde_json::json!({"ok": true}),
        )))
        .unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\
             Connection: close\r\n\r\n{\"ok\":true}\n"
        );
        let text = String::from_utf8(encode_response(
            &ApiError::method_not_allowed("PUT", "/v1/vips", &["GET", "POST"]).into(),
        ))
        .unwrap();
        assert!(text.contains("\r\nAllow: GET, POST\r\n"), "{text}");
        let text =
            String::from_utf8(encode_response(&ApiError::unauthorized("no token").into())).unwrap();
        assert!(text.contains("\r\nWWW-Authenticate: Bearer"), "{text}");
    }
}
