//! HTTPS (`http.tls_cert_file`, `http.tls_key_file`) against a running daemon: a rustls client
//! that trusts only the test CA reads the API through TLS (token checked, a 1 MiB upload and
//! the live frame relayed whole); a client trusting another CA is refused at the handshake; a
//! plain-HTTP client gets no answer and leaves the daemon serving; the private socket directory
//! is 0700 and removed at the stop; mismatched or missing TLS files stop the start-up with the
//! field named.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Daemon, TOKEN, json, talk, within};
use crate::common::scratch;

fn client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request; Err: the TLS connection failed (the reason).
fn https(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, String, Vec<u8>), String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = "localhost".try_into().unwrap();
    let mut tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(config.clone(), name).unwrap(),
        tcp,
    );
    // The handshake first, so that a refused certificate is an error here, not a panic.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(talk(
        &mut tls,
        addr,
        method,
        path,
        token,
        content_type,
        body,
    ))
}

#[test]
fn the_api_is_served_over_tls_with_the_configured_certificate() {
    if !crate::broker::openssl_present() {
        eprintln!("SKIPPED: openssl not installed (tools/setup.sh installs it)");
        return;
    }
    let dir = scratch("http-tls");
    crate::broker::make_certificates(&dir);
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let section = |cert: &str, key: &str| {
        format!(
            "camera = \"door\"\n[detector]\nkind = \"motion\"\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             tls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n",
            token.display()
        )
    };
    let d = |f: &str| dir.join(f).to_str().unwrap().to_owned();

    // Bad TLS settings stop the start-up, naming the field.
    for (cert, key, field) in [
        (d("server.crt"), String::new(), "http.tls_key_file"),
        (d("token"), d("server.key"), "http.tls_cert_file"),
        (d("server.crt"), d("ca.key"), "http.tls_key_file"),
    ] {
        let config = dir.join("bad.toml");
        std::fs::write(&config, section(&cert, &key)).unwrap();
        let err = super::refused_at_start(&config);
        assert!(err.contains(field), "{cert} {key}: {err}");
    }

    let config = dir.join("c.toml");
    std::fs::write(&config, section(&d("server.crt"), &d("server.key"))).unwrap();
    let daemon = Daemon::start(&dir, &config, &dir.join("g.bin"));
    let addr = daemon.addr;
    let trusted = client(&dir.join("ca.crt"));

    let (code, _, body) = https(&trusted, addr, "GET", "/healthz", None, "", b"").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = https(&trusted, addr, "GET", "/api/v1/status", None, "", b"").unwrap();
    assert_eq!(code, 401, "the token is still required");
    let (code, _, body) = https(
        &trusted,
        addr,
        "GET",
        "/api/v1/status",
        Some(TOKEN),
        "",
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    let status = json(&String::from_utf8_lossy(&body));
    assert!(status["frames"].as_u64().is_some(), "{status}");

    // Large bodies both ways go through the relay whole: a 1 MiB upload (not a picture: 400,
    // after it was read) and the live frame.
    let junk = vec![0x5a; 1 << 20];
    let (code, _, body) = https(
        &trusted,
        addr,
        "POST",
        "/api/v1/enrol",
        Some(TOKEN),
        "image/jpeg",
        &junk,
    )
    .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    let frame = within(30, "a live frame over TLS", || {
        let (code, head, body) = https(
            &trusted,
            addr,
            "GET",
            "/api/v1/frame.jpg",
            Some(TOKEN),
            "",
            b"",
        )
        .unwrap();
        (code == 200).then_some((head, body))
    });
    assert!(frame.0.contains("image/jpeg"), "{}", frame.0);
    let picture = reidcam::frame::decode_image(&frame.1).unwrap();
    assert_eq!((picture.width(), picture.height()), (320, 180));

    // A client that trusts another CA refuses the daemon's certificate.
    let other = client(&dir.join("other-ca.crt"));
    let refused = https(&other, addr, "GET", "/healthz", None, "", b"");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("certificate")),
        "{refused:?}"
    );
    // Plain HTTP on the TLS port: no HTTP answer, and the daemon keeps serving.
    {
        use std::io::{Read as _, Write as _};
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        plain.read_to_end(&mut answer).ok();
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    let (code, _, _) = https(&trusted, addr, "GET", "/healthz", None, "", b"").unwrap();
    assert_eq!(code, 200);

    // The plain-HTTP socket lives in a private directory, gone after the stop.
    let private = std::env::temp_dir().join(format!("reidcam-https-{}-0", daemon.pid()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", private.display());
    }
    drop(daemon);
    assert!(!private.exists(), "{} left behind", private.display());
}
