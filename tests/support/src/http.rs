//! A minimal HTTP/1.1 client over a std `TcpStream`, for the tests and the load benchmark of
//! `lookalike serve` and for WebDriver. It sends the request target exactly as given (so tests
//! can send `..`, `//` and encoded slashes that other clients would normalise away) and reads
//! responses framed by `Content-Length` (what hyper sends for whole bodies) or chunked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection.
pub struct Connection {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connect to `addr` (reads and writes time out after 60 s).
    pub fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            addr,
            reader: BufReader::new(stream),
        })
    }

    /// Send one request and read its response; `headers` are sent as given (a `content-length`
    /// among them is sent instead of the body's, so a test can declare a body it never sends).
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let declared = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !declared && (!body.is_empty() || method == "POST" || method == "PUT") {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        self.read_response(method == "HEAD")
    }

    fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if !head_only && status != 204 && status != 304 {
            if let Some(n) = find("content-length") {
                let n: usize = n.parse().map_err(|_| bad(format!("bad length {n}")))?;
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                loop {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                    let start = body.len();
                    body.resize(start + n, 0);
                    self.reader.read_exact(&mut body[start..])?;
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    if n == 0 {
                        break;
                    }
                }
            } else {
                self.reader.read_to_end(&mut body)?;
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Connection::open(addr)
        .and_then(|mut c| c.send(method, target, headers, body))
        .unwrap_or_else(|e| panic!("{method} {target} on {addr}: {e}"))
}

/// `GET target`.
pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], &[])
}
