//! The HTTP API (`http`): any bytes sent on a connection to a real server — tiny_http's request
//! parsing, then ours: routing, the bearer token, query strings, JSON bodies, picture uploads.
//! Changes the API asks for are answered as the frame loop would answer them; the server must
//! answer every request and keep serving.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use reidcam::gallery::{Gallery, GalleryConfig, MatchPolicy, NewIdentity, StorageFormat, Timestamp};
use reidcam::http::{Http, HttpConfig, Recent};

/// The token the seeds carry (`Authorization: Bearer …`).
const TOKEN: &str = "fuzz-token-0123456789";

struct Server {
    http: Http,
    addr: SocketAddr,
    /// Keeps the ring the events route reads alive (its sink allocates its slots).
    _events: reidcam::http::RecentSink,
}

fn server() -> &'static std::sync::Mutex<Server> {
    static SERVER: OnceLock<std::sync::Mutex<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("reidcam-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let config = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: Some(token),
            users_file: None,
            stall: Duration::from_secs(10),
            max_body: 16 << 10,
            max_upload: 64 << 10,
            tls: None,
        };
        let recent = Recent::new();
        let events = recent.sink();
        let http = Http::start(&config, 8, recent).unwrap();
        // Two identities for the identity routes to find.
        let gallery_config = GalleryConfig {
            dim: 8,
            exemplars: 2,
            format: StorageFormat::Int8,
            budget_bytes: 4 << 10,
        };
        let mut gallery = Gallery::with_budget(gallery_config, MatchPolicy::default()).unwrap();
        for pinned in [true, false] {
            let mut e = [0.1f32; 8];
            e[usize::from(pinned)] = 1.0;
            let new = NewIdentity {
                label: None,
                pinned,
                now: Timestamp(1),
            };
            gallery.insert(&e, new).unwrap();
        }
        http.beat();
        http.publish_identities(&gallery);
        let addr = http.local_addr().unwrap();
        std::sync::Mutex::new(Server {
            http,
            addr,
            _events: events,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let server = server().lock().unwrap();
    let mut stream = TcpStream::connect(server.addr).expect("the server stopped listening");
    stream.set_nodelay(true).ok();
    // The server may answer (and close) before it has read everything: a refused write is fine.
    if stream.write_all(data).is_ok() {
        stream.shutdown(Shutdown::Write).ok();
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // What a change asks of the frame loop: answered at once, as a refusal now and then.
        while let Some(command) = server.http.next_command() {
            let refuse = matches!(command.op, reidcam::http::Op::Erase(_));
            command.reply(if refuse {
                Err((404, "no such identity".into()))
            } else {
                Ok(None)
            });
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Reset by the server after an answer to a request it did not read whole.
            Err(_) => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no answer in 8 s to {} bytes",
            data.len()
        );
    }
    // Every answer is an HTTP response (tiny_http may also close at once on what is not HTTP;
    // it answers a bad header with the request's version, `HTTP/2.0 400` included).
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/"),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(64)])
    );
});
