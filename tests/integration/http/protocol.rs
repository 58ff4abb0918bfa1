//! HTTP itself, below the API: what the server (tiny_http, patched in third_party/) does with
//! requests no browser or script of ours sends.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use reidcam::http::{Http, HttpSection, Recent};

/// `GET / HTTP/2.0` (or HTTP/2's prior-knowledge preface) made tiny_http 0.12 wait for ever in
/// the connection's thread — no answer, one thread and socket lost per request, before any
/// authentication. Found by the `http_request` fuzz target.
#[test]
fn an_http2_request_line_is_answered_505_and_loses_no_thread() {
    let section = HttpSection {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        ..HttpSection::default()
    };
    let config = section.validate().unwrap().unwrap();
    let http = Http::start(&config, 4, Recent::new()).unwrap();
    let addr = http.local_addr().unwrap();
    let requests: [&[u8]; 3] = [
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /api/v1/status HTTP/3.0\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    ];
    // More requests than tiny_http keeps threads for, each answered and closed by the server
    // (the client keeps its side open: the server must close it).
    for i in 0..40 {
        let raw = requests[i % requests.len()];
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(raw).unwrap();
        let mut reply = Vec::new();
        let read = stream.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            read.is_ok() && text.starts_with("HTTP/1.1 505 "),
            "{:?}: {read:?}, answered {text:?}",
            String::from_utf8_lossy(raw)
        );
        stream.shutdown(Shutdown::Both).ok();
    }
    let (code, body) = super::request(addr, "GET", "/healthz", None, b"");
    assert!(code == 200 || code == 503, "{code} {body}");
    http.stop();
}

/// A request refused before its body was read (here: no token) had the rest of its body drained
/// into one buffer of the declared `Content-Length`: past `isize::MAX` that panicked the API's
/// request thread (two such requests and nothing was served), and a length the machine could
/// not allocate aborted the daemon — before authentication. Found by the `http_request` fuzz
/// target.
#[test]
fn a_huge_content_length_neither_aborts_nor_stops_the_api() {
    let dir = crate::common::scratch("http-huge-length");
    let token = dir.join("token");
    std::fs::write(&token, super::TOKEN).unwrap();
    let section = HttpSection {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        token_file: token.display().to_string(),
        ..HttpSection::default()
    };
    let config = section.validate().unwrap().unwrap();
    let http = Http::start(&config, 4, Recent::new()).unwrap();
    let addr = http.local_addr().unwrap();
    // 2^46 bytes (64 TiB) cannot be allocated; 2^63 + 1 is past isize::MAX. Three of each: more
    // than the API's request threads.
    for length in [1u64 << 46, (1 << 63) + 1].repeat(3) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST /api/v1/enrol HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&[0u8; 4096]).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).ok();
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 401 ") || text.starts_with("HTTP/1.1 413 "),
            "Content-Length {length}: answered {text:?}"
        );
    }
    let (code, body) = super::request(addr, "GET", "/api/v1/status", Some(super::TOKEN), b"");
    assert_eq!(code, 200, "the API still answers: {body}");
    http.stop();
}
