//! Password logins (`http.users_file`): user names with argon2id password hashes, checked on
//! HTTP Basic credentials. A browser asks for them with its own dialog and then sends them with
//! every request of the page, so a verified credential is remembered (at most [`REMEMBERED`],
//! for [`REMEMBER`]) rather than hashed again each second. A wrong one waits [`PENALTY`] before
//! its answer.
//!
//! The file: one `name:$argon2id$v=19$m=…,t=…,p=…$salt$hash` per line (`reidcam http-password
//! NAME` prints one), `#` comments and blank lines allowed. Basic credentials travel in clear
//! text like a bearer token: off loopback, put TLS in front.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64ct::Encoding as _;

/// Verified credentials remembered at most, and for how long.
const REMEMBERED: usize = 32;
const REMEMBER: Duration = Duration::from_secs(600);
/// A wrong password's answer waits this long (a guess per request thread per PENALTY).
pub const PENALTY: Duration = Duration::from_millis(500);
const MAX_USERS: usize = 64;
const MAX_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// The users of `http.users_file`.
pub struct Users {
    /// (name, PHC string).
    users: Vec<(String, String)>,
    /// Verified `Authorization` values and when.
    remembered: Mutex<Vec<(String, Instant)>>,
}

impl std::fmt::Debug for Users {
    /// Names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Users({names:?})")
    }
}

/// Reads and checks a users file; errors name the line and what was expected.
pub fn read_users(path: &Path) -> Result<Users, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut users: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let Some((name, hash)) = line.split_once(':') else {
            return Err(format!(
                "{}: expected name:$argon2id$... (reidcam http-password NAME)",
                at()
            ));
        };
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
        {
            return Err(format!(
                "{}: user name: expected 1-{MAX_NAME} printable characters without ':'",
                at()
            ));
        }
        let parsed =
            PasswordHash::new(hash).map_err(|e| format!("{}: not a password hash: {e}", at()))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(format!(
                "{}: {} hash: expected argon2id (reidcam http-password NAME)",
                at(),
                parsed.algorithm
            ));
        }
        if users.iter().any(|(u, _)| u == name) {
            return Err(format!("{}: user {name:?} given twice", at()));
        }
        users.push((name.to_owned(), hash.to_owned()));
        if users.len() > MAX_USERS {
            return Err(format!("{}: more than {MAX_USERS} users", path.display()));
        }
    }
    if users.is_empty() {
        return Err(format!("{}: no user in it", path.display()));
    }
    Ok(Users {
        users,
        remembered: Mutex::new(Vec::with_capacity(REMEMBERED)),
    })
}

/// A users-file line for `name` with `password` (a fresh random salt, argon2id defaults).
pub fn hash_line(name: &str, password: &str) -> Result<String, String> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
    {
        return Err(format!(
            "user name: expected 1-{MAX_NAME} printable characters without ':'"
        ));
    }
    if password.len() < 8 || password.len() > MAX_PASSWORD {
        return Err(format!("password: expected 8-{MAX_PASSWORD} bytes"));
    }
    let mut salt = [0u8; 16];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{name}:{hash}"))
}

impl Users {
    /// Whether `header` (an `Authorization` value) holds a user's right password. Returns the
    /// user's name when it does.
    pub fn check(&self, header: &str) -> Option<String> {
        let encoded = header.strip_prefix("Basic ")?.trim();
        if encoded.len() > 4 * (MAX_NAME + MAX_PASSWORD) / 3 + 8 {
            return None;
        }
        let decoded = base64ct::Base64::decode_vec(encoded).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (name, password) = decoded.split_once(':')?;
        let now = Instant::now();
        if let Ok(mut kept) = self.remembered.lock() {
            kept.retain(|(_, at)| now.duration_since(*at) < REMEMBER);
            if kept
                .iter()
                .any(|(h, _)| super::routes::same(h.as_bytes(), header.as_bytes()))
            {
                return Some(name.to_owned());
            }
        }
        let (_, hash) = self.users.iter().find(|(u, _)| u == name)?;
        let parsed = PasswordHash::new(hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .ok()?;
        if let Ok(mut kept) = self.remembered.lock() {
            if kept.len() >= REMEMBERED {
                kept.remove(0);
            }
            kept.push((header.to_owned(), now));
        }
        Some(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_checked_and_remembered() {
        let dir = std::env::temp_dir().join(format!("reidcam-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        let line = hash_line("ana", "correct horse").unwrap();
        assert!(line.starts_with("ana:$argon2id$"), "{line}");
        std::fs::write(&file, format!("# operators\n\n{line}\n")).unwrap();
        let users = read_users(&file).unwrap();
        let basic = |s: &str| format!("Basic {}", base64ct::Base64::encode_string(s.as_bytes()));
        assert_eq!(
            users.check(&basic("ana:correct horse")).as_deref(),
            Some("ana")
        );
        // Remembered: the second check does not hash again.
        let t = Instant::now();
        assert!(users.check(&basic("ana:correct horse")).is_some());
        assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());
        for wrong in ["ana:wrong horse", "bob:correct horse", "ana", "", "ana:"] {
            assert_eq!(users.check(&basic(wrong)), None, "{wrong}");
        }
        assert_eq!(users.check("Bearer abc"), None);
        assert_eq!(users.check("Basic !!!"), None);
        assert!(hash_line("a:b", "long enough").is_err());
        assert!(hash_line("ana", "short").is_err());
        // Bad files name the line.
        for (text, expected) in [
            ("ana\n", "line 1: expected name:"),
            ("# x\nana:$2b$12$abc\n", "line 2: not a password hash"),
            ("", "no user"),
            (
                &format!("{line}\n{line}\n"),
                "line 2: user \"ana\" given twice",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = read_users(&file).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
