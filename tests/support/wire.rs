//! HTTP/1.1 as bytes, for the tests that must send what no client library would (a body
//! cut short, a stalled upload, a header too many) and read exactly what came back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// One answer as the wire carried it.
#[allow(dead_code)]
pub struct WireAnswer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as received.
    pub raw: Vec<u8>,
}

#[allow(dead_code)]
impl WireAnswer {
    /// The refusal's code (`""` when the body has none).
    pub fn code(&self) -> String {
        self.body["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Opens a connection to `address` (host:port) with a read timeout.
pub fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Sends `head` (the request line and headers, blank line included) and `body` on a new
/// connection, half-closes it and reads the whole answer. The server may answer and close
/// before the body is sent (a body too large): write errors are its answer arriving early.
#[allow(dead_code)]
pub fn exchange(address: &str, head: &str, body: &[u8]) -> WireAnswer {
    let mut stream = connect(address);
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.shutdown(Shutdown::Write);
    read_answer(&mut stream)
}

/// Reads an answer to its end (the server closes the connection after it).
pub fn read_answer(stream: &mut TcpStream) -> WireAnswer {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    WireAnswer {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        raw: body.as_bytes().to_vec(),
    }
}
