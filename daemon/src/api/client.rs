//! A blocking client of the API, over the Unix socket or over TCP with a bearer token. One
//! request per connection, like the server.

use std::{
    io::{self, Read},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::http::Connection;

/// Where `xlb` and `xlbd` put the API socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlbd.sock";
/// Connect, read and write timeout of a call. Generous: a reload builds Maglev tables.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted, in bytes.
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// Why a call got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection.
    #[error("cannot connect to {target} (is xlbd running?): {source}")]
    Connect {
        /// The socket path or address.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket exists but its permissions keep us out.
    #[error("permission denied on {target}: run as root or as a member of the socket's group")]
    PermissionDenied {
        /// The socket path.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The connection failed or timed out mid-call.
    #[error("talking to {target}: {source}")]
    Io {
        /// The socket path or address.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The answer was not the HTTP/JSON the API sends.
    #[error("invalid answer from {target}: {message}")]
    Protocol {
        /// The socket path or address.
        target: String,
        /// What was wrong.
        message: String,
    },
}

/// Calls the API over the Unix socket: `path` is already percent-encoded (see
/// [`encode_segment`]). Returns the HTTP status and the JSON body, whatever the status.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let target = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            ClientError::PermissionDenied {
                target: target.clone(),
                source,
            }
        } else {
            ClientError::Connect {
                target: target.clone(),
                source,
            }
        }
    })?;
    exchange(stream, &target, None, method, path, body)
}

/// Calls the API over TCP with a bearer token; otherwise as [`call`].
pub fn call_tcp(
    address: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let target = address.to_string();
    let stream =
        TcpStream::connect_timeout(&address, TIMEOUT).map_err(|source| ClientError::Connect {
            target: target.clone(),
            source,
        })?;
    exchange(stream, &target, Some(token), method, path, body)
}

/// Percent-encodes one path segment (a VIP name, a backend address).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn exchange(
    mut stream: impl Connection,
    target: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let io = |source| ClientError::Io {
        target: target.to_owned(),
        source,
    };
    stream.set_timeouts(TIMEOUT).map_err(io)?;
    let request = encode_request(token, method, path, body);
    // The server may answer before reading the whole request (503 when busy, 401, 413) and
    // close: the write then fails, but its answer is waiting to be read, and says more.
    let write_error = match stream.write_all(&request).and_then(|()| stream.flush()) {
        Ok(()) => None,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Some(error)
        }
        Err(error) => return Err(io(error)),
    };
    let mut answer = Vec::new();
    // The server closes the connection after its answer.
    let read_error = stream
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut answer)
        .err();
    if let Some(error) = write_error.or(read_error)
        && parse_response(&answer).is_err()
    {
        return Err(io(error));
    }
    if answer.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(protocol(target, "answer larger than 64 MiB"));
    }
    parse_response(&answer).map_err(|message| protocol(target, &message))
}

fn protocol(target: &str, message: &str) -> ClientError {
    ClientError::Protocol {
        target: target.to_owned(),
        message: message.to_owned(),
    }
}

fn encode_request(
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: xlbd\r\nUser-Agent: xlb/{}\r\nAccept: application/json\r\n\
         Connection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Parses a whole HTTP response into status and JSON body.
fn parse_response(bytes: &[u8]) -> Result<(u16, serde_json::Value), String> {
    if bytes.is_empty() {
        return Err("connection closed without an answer".into());
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("answer ends inside its head".into()),
        Err(error) => return Err(format!("malformed HTTP: {error}")),
    };
    let status = response.code.ok_or("no status code")?;
    let mut body = &bytes[head_len..];
    if let Some(header) = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let length: usize = std::str::from_utf8(header.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or("bad Content-Length")?;
        body = body
            .get(..length)
            .ok_or_else(|| format!("answer body truncated: {} of {length} bytes", body.len()))?;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, serde_json::Value::Null));
    }
    let value =
        serde_json::from_slice(body).map_err(|error| format!("body is not JSON: {error}"))?;
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_so_the_router_decodes_them_back() {
        assert_eq!(encode_segment("web"), "web");
        assert_eq!(encode_segment("10.0.0.1"), "10.0.0.1");
        assert_eq!(encode_segment("my web/a"), "my%20web%2Fa");
        assert_eq!(encode_segment("fe80::1"), "fe80%3A%3A1");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn requests_carry_length_type_and_token() {
        let body = serde_json::json!({"weight": 3});
        let text =
            String::from_utf8(encode_request(Some("t"), "PUT", "/v1/x", Some(&body))).unwrap();
        assert!(text.starts_with("PUT /v1/x HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nAuthorization: Bearer t\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"weight\":3}"));
        let text = String::from_utf8(encode_request(None, "GET", "/v1/status", None)).unwrap();
        assert!(!text.contains("Content-Length") && !text.contains("Authorization"));
    }

    #[test]
    fn responses_parse_and_bad_ones_are_protocol_errors() {
        let (status, body) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 16\r\n\r\n{\"error\":\"no\"}\n\nextra",
        )
        .unwrap();
        assert_eq!(status, 404);
        assert_eq!(body["error"], "no");
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().1,
            serde_json::Value::Null
        );
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\n\r\nnot json",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_socket_is_a_connect_error_that_says_so() {
        let error = call(
            Path::new("/nonexistent/xlb/xlbd.sock"),
            "GET",
            "/v1/status",
            None,
        )
        .unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains("is xlbd running?"), "{error}");
    }
}
