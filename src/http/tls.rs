//! HTTPS for the web page and the API (`http.tls_cert_file`, `http.tls_key_file`).
//!
//! tiny_http's own TLS (`ssl-rustls`) would bring rustls 0.20 and ring 0.16 beside the rustls
//! 0.23 the MQTT client already uses. Instead, the request threads serve plain HTTP on a Unix
//! socket in a private directory (mode 0700, removed at the stop), and this front end terminates
//! TLS (rustls 0.23 with ring: TLS 1.2 and 1.3) on the configured address and relays each
//! connection's bytes to that socket. Nothing is parsed here: every request still goes through
//! the same authentication and routes. One thread per connection, at most [`MAX_CONNECTIONS`]
//! (more are closed at once), each a poll(2) loop over its two sockets with bounded buffers;
//! a connection idle for [`IDLE`] (a handshake included) is closed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections relayed at once (a camera's page has one or two viewers).
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with no traffic for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// How often the stop flag is looked at.
const TICK_MS: i32 = 200;
/// Relay buffer, each way.
const BUF: usize = 16 << 10;

/// The server's certificate chain and key, checked; errors name the field and the file.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                "http.tls_cert_file",
                format!("{}: {e}: expected PEM certificates", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "http.tls_cert_file",
            format!(
                "{}: no certificate in it: expected PEM certificates (the server's first, then \
                 its chain)",
                cert.display()
            ),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "http.tls_key_file",
            format!(
                "{}: {e}: expected a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("http.tls_cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            (
                "http.tls_key_file",
                format!(
                    "{} does not go with the certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    Ok(Arc::new(config))
}

/// A private directory for the plain-HTTP socket: only this user may connect to it. Those a
/// killed daemon left behind (`kill -9`: no stop to remove it) are removed first.
pub fn socket_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    remove_stale(&base);
    let pid = std::process::id();
    for n in 0..100u32 {
        let dir = base.join(format!("reidcam-https-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::other(format!("{}: {e}", dir.display()))),
        }
    }
    Err(io::Error::other(format!(
        "{}: no free reidcam-https-{pid}-N name",
        base.display()
    )))
}

/// Removes `reidcam-https-<pid>-<n>` directories under `base` that belong to this user and
/// whose process is gone. A live process (even another program that reuses the pid) keeps its
/// own; links and other users' entries are never touched.
fn remove_stale(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("reidcam-https-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if meta.is_dir() && meta.uid() == me && gone {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => log::info!("removed {} (left by a killed daemon)", path.display()),
                Err(e) => log::warn!("{}: cannot remove: {e}", path.display()),
            }
        }
    }
}

/// The TLS listener and its connections.
pub struct TlsFront {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    local: SocketAddr,
}

impl TlsFront {
    /// Listens on `addr`; each connection's plaintext goes to the Unix socket `backend`.
    pub fn start(
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        backend: PathBuf,
    ) -> io::Result<TlsFront> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("https".into())
                .spawn(move || accept_loop(&listener, &config, &backend, &stop))?
        };
        Ok(TlsFront {
            stop,
            accept: Some(accept),
            local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes the listener and every connection (within a tick), and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            t.join().ok();
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `ms` for `events` on `fd`; true if something happened.
fn ready(fd: RawFd, events: i16, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, its count.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn accept_loop(
    listener: &TcpListener,
    config: &Arc<rustls::ServerConfig>,
    backend: &Path,
    stop: &Arc<AtomicBool>,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut refused = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if !ready(listener.as_raw_fd(), libc::POLLIN, TICK_MS) {
            continue;
        }
        let (tcp, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("https: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        connections.retain(|c| !c.is_finished());
        if connections.len() >= MAX_CONNECTIONS {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "https: {peer} closed: {MAX_CONNECTIONS} connections already open ({refused} so far)"
                );
            }
            continue;
        }
        let tls = match rustls::ServerConnection::new(config.clone()) {
            Ok(t) => t,
            Err(e) => {
                log::error!("https: {e}");
                continue;
            }
        };
        log::debug!("https: connection from {peer}");
        let (backend, stop) = (backend.to_owned(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("https-conn".into())
            .spawn(move || {
                if let Err(e) = relay(tcp, tls, &backend, &stop) {
                    log::debug!("https: {peer}: {e}");
                }
            });
        match spawned {
            Ok(c) => connections.push(c),
            Err(e) => log::warn!("https: {peer}: no thread: {e}"),
        }
    }
    for c in connections {
        c.join().ok();
    }
}

/// Moves one connection's bytes between the TLS client and the plain-HTTP socket until either
/// side closes, the connection idles for [`IDLE`], or the daemon stops.
fn relay(
    mut tcp: TcpStream,
    mut tls: rustls::ServerConnection,
    backend: &Path,
    stop: &AtomicBool,
) -> io::Result<()> {
    tcp.set_nonblocking(true)?;
    tcp.set_nodelay(true).ok();
    let mut inner: Option<UnixStream> = None;
    // Plaintext from the client not yet taken by the backend.
    let mut up: Vec<u8> = Vec::with_capacity(2 * BUF);
    let mut buf = vec![0u8; BUF];
    let mut last = Instant::now();
    let (mut client_done, mut shut_up, mut backend_done) = (false, false, false);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if inner.is_none() && !tls.is_handshaking() {
            let s = UnixStream::connect(backend)?;
            s.set_nonblocking(true)?;
            inner = Some(s);
        }
        let mut client = libc::pollfd {
            fd: tcp.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        if !client_done && up.len() < BUF {
            client.events |= libc::POLLIN;
        }
        if tls.wants_write() {
            client.events |= libc::POLLOUT;
        }
        let mut server = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        if let Some(s) = &inner {
            // Read the backend only once the client took what came before (bounded buffers).
            if !backend_done && !tls.wants_write() {
                server.events |= libc::POLLIN;
            }
            if !up.is_empty() {
                server.events |= libc::POLLOUT;
            }
            if server.events != 0 {
                server.fd = s.as_raw_fd();
            }
        }
        if client.events == 0 {
            client.fd = -1;
        }
        let mut fds = [client, server];
        // SAFETY: two valid pollfds (fd -1 entries are ignored), their count.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK_MS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if last.elapsed() > IDLE {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle"));
            }
            continue;
        }
        last = Instant::now();
        let [client, server] = fds;

        if client.events & libc::POLLIN != 0 && client.revents != 0 {
            match tls.read_tls(&mut tcp) {
                Ok(0) => client_done = true,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Tell the client why (an alert), then close.
                        tls.write_tls(&mut tcp).ok();
                        return Err(io::Error::other(e));
                    }
                    loop {
                        match tls.reader().read(&mut buf) {
                            // close_notify
                            Ok(0) => {
                                client_done = true;
                                break;
                            }
                            Ok(n) => up.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if client_done && inner.is_none() {
            // Gone during the handshake.
            return Ok(());
        }
        if let Some(s) = &mut inner {
            if !up.is_empty() {
                match s.write(&up) {
                    Ok(n) => {
                        up.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if client_done && up.is_empty() && !shut_up {
                // The backend finishes what it was asked, then closes.
                s.shutdown(Shutdown::Write).ok();
                shut_up = true;
            }
            if server.events & libc::POLLIN != 0 && server.revents != 0 {
                match s.read(&mut buf) {
                    Ok(0) => {
                        backend_done = true;
                        tls.send_close_notify();
                    }
                    Ok(n) => {
                        let taken = tls.writer().write(&buf[..n])?;
                        if taken < n {
                            return Err(io::Error::other("TLS send buffer full"));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if backend_done && !tls.wants_write() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_killed_daemons_are_removed_and_nothing_else() {
        let base = std::env::temp_dir().join(format!("reidcam-tls-stale-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // A process that has exited: its pid is free (not reused this fast in practice; if
        // it were, the directory would be kept, which the test would report).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = base.join(format!("reidcam-https-{dead}-0"));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("http.sock"), b"").unwrap();
        let live = base.join(format!("reidcam-https-{}-0", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        // A link with a stale name: neither it nor what it points to is removed.
        let target = base.join("elsewhere");
        std::fs::create_dir_all(&target).unwrap();
        let link = base.join(format!("reidcam-https-{dead}-1"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let other = base.join("not-ours");
        std::fs::create_dir_all(&other).unwrap();

        remove_stale(&base);
        assert!(!stale.exists(), "the killed daemon's directory is removed");
        assert!(live.is_dir(), "a live process keeps its directory");
        assert!(std::fs::symlink_metadata(&link).is_ok() && target.is_dir());
        assert!(other.is_dir());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
