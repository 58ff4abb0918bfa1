//! `[http]` in the daemon's configuration: as written ([`HttpSection`]) and checked
//! ([`HttpConfig`]). Every field is documented in `docs/http.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]` as written. Off unless `enabled`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve the API, `/metrics` and `/healthz`.
    pub enabled: bool,
    /// `address:port` to listen on. Anything but a loopback address needs `token_file`.
    pub listen: String,
    /// File whose first line is the bearer token every request but `/healthz` must carry
    /// (`Authorization: Bearer <token>`). Empty: no authentication, loopback only.
    pub token_file: String,
    /// File of `name:<argon2id hash>` lines (`reidcam http-password NAME`): HTTP Basic logins,
    /// beside or instead of the token. Empty: none.
    pub users_file: String,
    /// `/healthz` reports unhealthy when the frame loop has not advanced for this long.
    pub stall_secs: u64,
    /// Largest request body taken (a label change is a few bytes).
    pub max_body_bytes: usize,
    /// Largest picture taken by `POST /api/v1/enrol` (JPEG or PNG).
    pub max_upload_bytes: usize,
    /// PEM certificate chain (the server's first): serve HTTPS instead of HTTP. Needs
    /// `tls_key_file`. Empty: plain HTTP.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`'s certificate (keep it 0600).
    pub tls_key_file: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: false,
            listen: "127.0.0.1:8080".into(),
            token_file: String::new(),
            users_file: String::new(),
            stall_secs: 10,
            max_body_bytes: 16 << 10,
            max_upload_bytes: 4 << 20,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// Bounds, with the reason for each.
/// A token shorter than this can be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 4096;
pub const MIN_STALL_SECS: u64 = 2;
pub const MAX_STALL_SECS: u64 = 3600;
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A phone's photo is a few MB; decoded pictures are also limited in pixels (routes).
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;

/// The checked `[http]`.
#[derive(Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub users_file: Option<PathBuf>,
    pub stall: Duration,
    pub max_body: usize,
    pub max_upload: usize,
    /// Certificate chain and key files (HTTPS), checked at validation and read again at start.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for HttpConfig {
    /// Never the token (it is not in here: only its file).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{} ({})",
            if self.tls.is_some() { "https" } else { "http" },
            self.listen,
            match (&self.token_file, &self.users_file) {
                (Some(_), Some(_)) => "token, users",
                (Some(_), None) => "token",
                (None, Some(_)) => "users",
                (None, None) => "no auth",
            }
        )
    }
}

impl HttpSection {
    /// Checks the section; `Ok(None)` when HTTP is off. Errors are `(field, problem)`.
    pub fn validate(&self) -> Result<Option<HttpConfig>, (&'static str, String)> {
        if !self.enabled {
            return Ok(None);
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            (
                "http.listen",
                format!(
                    "is {:?}: expected address:port, e.g. 127.0.0.1:8080 or [::1]:8080",
                    self.listen
                ),
            )
        })?;
        let token_file = (!self.token_file.is_empty()).then(|| PathBuf::from(&self.token_file));
        let users_file = (!self.users_file.is_empty()).then(|| PathBuf::from(&self.users_file));
        if token_file.is_none() && users_file.is_none() && !is_loopback(listen.ip()) {
            return Err((
                "http.listen",
                format!(
                    "is {}: a non-loopback address needs authentication (set http.token_file \
                     or http.users_file); without it only 127.0.0.1 or ::1 is allowed",
                    self.listen
                ),
            ));
        }
        if let Some(path) = &users_file {
            super::users::read_users(path).map_err(|e| ("http.users_file", e))?;
        }
        if let Some(path) = &token_file {
            read_token(path).map_err(|e| ("http.token_file", e))?;
        }
        if !(MIN_STALL_SECS..=MAX_STALL_SECS).contains(&self.stall_secs) {
            return Err((
                "http.stall_secs",
                format!(
                    "is {}: expected {MIN_STALL_SECS}..{MAX_STALL_SECS}",
                    self.stall_secs
                ),
            ));
        }
        if !(64..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err((
                "http.max_body_bytes",
                format!("is {}: expected 64..{MAX_BODY_BYTES}", self.max_body_bytes),
            ));
        }
        if !(1024..=MAX_UPLOAD_BYTES).contains(&self.max_upload_bytes) {
            return Err((
                "http.max_upload_bytes",
                format!(
                    "is {}: expected 1024..{MAX_UPLOAD_BYTES}",
                    self.max_upload_bytes
                ),
            ));
        }
        let tls = match (self.tls_cert_file.is_empty(), self.tls_key_file.is_empty()) {
            (true, true) => None,
            (false, false) => {
                let files = (
                    PathBuf::from(&self.tls_cert_file),
                    PathBuf::from(&self.tls_key_file),
                );
                super::tls::server_config(&files.0, &files.1)?;
                Some(files)
            }
            (false, true) => {
                return Err((
                    "http.tls_key_file",
                    "is empty: tls_cert_file needs the certificate's private key".into(),
                ));
            }
            (true, false) => {
                return Err((
                    "http.tls_cert_file",
                    "is empty: tls_key_file needs its certificate".into(),
                ));
            }
        };
        Ok(Some(HttpConfig {
            listen,
            token_file,
            users_file,
            stall: Duration::from_secs(self.stall_secs),
            max_body: self.max_body_bytes,
            max_upload: self.max_upload_bytes,
            tls,
        }))
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The token: the file's first line, trimmed; refused when short, long or not printable ASCII.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "{}: the token on its first line is {} characters: expected {MIN_TOKEN_LEN}..{MAX_TOKEN_LEN}",
            path.display(),
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be printable ASCII without spaces",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(listen: &str, token_file: &str) -> HttpSection {
        HttpSection {
            enabled: true,
            listen: listen.into(),
            token_file: token_file.into(),
            ..HttpSection::default()
        }
    }

    #[test]
    fn off_unless_enabled() {
        assert_eq!(HttpSection::default().validate(), Ok(None));
    }

    #[test]
    fn a_non_loopback_address_without_a_token_is_refused_naming_the_field() {
        for listen in ["0.0.0.0:8080", "192.168.1.10:80", "[::]:8080"] {
            let (field, problem) = section(listen, "").validate().unwrap_err();
            assert_eq!(field, "http.listen", "{listen}");
            assert!(problem.contains("http.token_file"), "{problem}");
        }
        for listen in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:1"] {
            assert!(
                section(listen, "").validate().unwrap().is_some(),
                "{listen}"
            );
        }
        // Password logins are authentication too; a bad users file is named.
        let dir = std::env::temp_dir().join(format!("reidcam-http-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        let line = super::super::hash_line("ana", "correct horse").unwrap();
        std::fs::write(&users, format!("{line}\n")).unwrap();
        let with_users = |listen: &str| HttpSection {
            users_file: users.to_str().unwrap().into(),
            ..section(listen, "")
        };
        assert!(with_users("0.0.0.0:8080").validate().unwrap().is_some());
        std::fs::write(&users, "ana:plain-text-password\n").unwrap();
        let (field, problem) = with_users("0.0.0.0:8080").validate().unwrap_err();
        assert_eq!(field, "http.users_file");
        assert!(problem.contains("line 1"), "{problem}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_addresses_and_tokens_are_refused() {
        assert_eq!(
            section("localhost", "").validate().unwrap_err().0,
            "http.listen"
        );
        let dir = std::env::temp_dir().join(format!("reidcam-http-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let (field, problem) = section("0.0.0.0:8080", short.to_str().unwrap())
            .validate()
            .unwrap_err();
        assert_eq!(field, "http.token_file");
        assert!(problem.contains("3 characters"), "{problem}");
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123\nignored\n").unwrap();
        let config = section("0.0.0.0:8080", good.to_str().unwrap())
            .validate()
            .unwrap()
            .unwrap();
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef0123");
        assert!(!format!("{config:?}").contains("0123456789"));
        let missing = section("0.0.0.0:8080", dir.join("nope").to_str().unwrap());
        assert_eq!(missing.validate().unwrap_err().0, "http.token_file");
        std::fs::remove_dir_all(&dir).ok();
    }
}
