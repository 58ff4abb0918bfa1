//! `[mqtt]` in the daemon's configuration: what the TOML says ([`MqttSection`]) and the checked
//! runtime form ([`MqttConfig`]). Every field is documented in `docs/mqtt.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[mqtt]` as written. Off while `url` is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883, TLS). Empty: no MQTT.
    pub url: String,
    /// Client id; empty: `reidcam-<camera>`.
    pub client_id: String,
    /// User name; empty: connect without credentials.
    pub username: String,
    /// File holding the password (first line). Never the password itself: configuration files
    /// get copied, logged and committed.
    pub password_file: String,
    /// PEM file of the certificate authorities that `mqtts://` brokers are checked against;
    /// empty: the system's store.
    pub ca_file: String,
    /// Seconds between keep-alive pings; the broker declares the camera offline after 1.5×.
    pub keep_alive_secs: u64,
    /// First topic level (`<prefix>/<camera>/events`, …).
    pub topic_prefix: String,
    /// Events held while the broker is away; when full, the oldest are dropped and counted.
    pub queue: usize,
    /// Spool file: undelivered events survive a restart. Empty: memory only.
    pub spool: String,
    /// Spool size bound (the oldest events are dropped past it).
    pub spool_bytes: String,
    /// Publish Home Assistant discovery configurations.
    pub discovery: bool,
    /// Home Assistant's discovery prefix (its status topic is `<prefix>/status`).
    pub discovery_prefix: String,
    /// At a clean stop, wait this long for the broker to take what is queued.
    pub drain_secs: u64,
    /// Share enrolled identities (their embeddings) with the other cameras on this broker.
    /// Off by default: biometric data leaves the device only when asked to.
    pub share_gallery: bool,
    /// With `share_gallery`: share passers-by's provisional identities too (their embeddings
    /// leave the device: off by default).
    pub share_passers_by: bool,
    /// With `share_gallery`: merge an own identity into another camera's identity of the same
    /// person (`docs/mqtt.md`, "Merges").
    pub merge: bool,
    /// The similarity a merge needs; 0: the model's `[matching] threshold` + 0.1.
    pub merge_threshold: f32,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            keep_alive_secs: 30,
            topic_prefix: "reidcam".into(),
            queue: 1000,
            spool: String::new(),
            spool_bytes: "4MiB".into(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            drain_secs: 5,
            share_gallery: false,
            share_passers_by: false,
            merge: true,
            merge_threshold: 0.0,
        }
    }
}

/// Bounds, with the reason for each.
pub const MIN_KEEP_ALIVE: u64 = 5;
pub const MAX_KEEP_ALIVE: u64 = 3600;
/// Events queued at most: each is a JSON line (≈ 0.5 KiB).
pub const MAX_QUEUE: usize = 100_000;
/// Spool bounds: below, a few events would fill it; above, it outgrows a board's flash.
pub const MIN_SPOOL_BYTES: usize = 64 << 10;
pub const MAX_SPOOL_BYTES: usize = 1 << 30;
pub const MAX_DRAIN_SECS: u64 = 60;
/// How far above the model's match threshold a merge is decided by default: a merge cannot be
/// undone by the cameras, so it asks for a clearer match than a sighting does.
pub const MERGE_ABOVE_MATCH: f32 = 0.1;

/// The checked `[mqtt]`.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub prefix: String,
    pub queue: usize,
    pub spool: Option<PathBuf>,
    pub spool_bytes: u64,
    pub discovery: Option<String>,
    pub drain: Duration,
    pub share_gallery: bool,
    pub share_passers_by: bool,
    /// Merges: `None` off; `Some(0.0)` the model's threshold + [`MERGE_ABOVE_MATCH`].
    pub merge_threshold: Option<f32>,
}

impl fmt::Debug for MqttConfig {
    /// Says where the password is, never what it is (it is not in here anyway: only its file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{} as {:?}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port,
            self.client_id
        )
    }
}

/// Topic levels may not hold wildcards or NUL; ours may not be empty either.
fn check_topic_level(what: &str, text: &str, slashes: bool) -> Result<(), String> {
    if text.is_empty()
        || text.starts_with('/')
        || text.ends_with('/')
        || text.contains("//")
        || (!slashes && text.contains('/'))
        || text
            .chars()
            .any(|c| matches!(c, '+' | '#' | '\0') || c.is_control())
    {
        return Err(format!(
            "{what} {text:?}: expected a non-empty MQTT topic level without '+', '#', control \
             characters{}",
            if slashes {
                " or empty levels"
            } else {
                " or '/'"
            }
        ));
    }
    Ok(())
}

/// Splits `mqtt://host:port` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "is {url:?}: expected mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "is {url:?}: expected only a host and a port after the scheme (credentials go in \
             mqtt.username and mqtt.password_file)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("is {url:?}: unclosed '[' in an IPv6 address"))?;
        let port =
            match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("is {url:?}: expected ':port' after the IPv6 address")
                })?),
            };
        (host.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("is {url:?}: no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("is {url:?}: port {p:?} is not 1..65535")),
        },
    };
    Ok((tls, host, port))
}

impl MqttSection {
    /// Checks the section; `Ok(None)` when MQTT is off. Errors are `(field, problem)`.
    pub fn validate(&self, camera: &str) -> Result<Option<MqttConfig>, (&'static str, String)> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let (tls, host, port) = parse_url(&self.url).map_err(|e| ("mqtt.url", e))?;
        let client_id = if self.client_id.is_empty() {
            format!("reidcam-{camera}")
        } else {
            self.client_id.clone()
        };
        if client_id.len() > 256 || client_id.chars().any(|c| c.is_control()) {
            return Err((
                "mqtt.client_id",
                format!("is {client_id:?}: expected at most 256 printable characters"),
            ));
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let password_file = nonempty(&self.password_file);
        if password_file.is_some() && self.username.is_empty() {
            return Err((
                "mqtt.password_file",
                "is set but mqtt.username is empty: MQTT sends a password only with a user name"
                    .into(),
            ));
        }
        if let Some(p) = &password_file
            && !p.is_file()
        {
            return Err((
                "mqtt.password_file",
                format!("{}: no such file", p.display()),
            ));
        }
        let ca_file = nonempty(&self.ca_file);
        if let Some(ca) = &ca_file {
            if !tls {
                return Err((
                    "mqtt.ca_file",
                    format!(
                        "is set but mqtt.url {:?} is not mqtts://: the CA would check nothing",
                        self.url
                    ),
                ));
            }
            if !ca.is_file() {
                return Err(("mqtt.ca_file", format!("{}: no such file", ca.display())));
            }
        }
        if !(MIN_KEEP_ALIVE..=MAX_KEEP_ALIVE).contains(&self.keep_alive_secs) {
            return Err((
                "mqtt.keep_alive_secs",
                format!(
                    "is {}: expected {MIN_KEEP_ALIVE} to {MAX_KEEP_ALIVE} seconds",
                    self.keep_alive_secs
                ),
            ));
        }
        check_topic_level("is", &self.topic_prefix, true).map_err(|e| ("mqtt.topic_prefix", e))?;
        check_topic_level("is", &self.discovery_prefix, true)
            .map_err(|e| ("mqtt.discovery_prefix", e))?;
        if self.queue == 0 || self.queue > MAX_QUEUE {
            return Err((
                "mqtt.queue",
                format!("is {}: expected 1 to {MAX_QUEUE} events", self.queue),
            ));
        }
        let spool_bytes =
            crate::config::parse_bytes(&self.spool_bytes).map_err(|e| ("mqtt.spool_bytes", e))?;
        if !(MIN_SPOOL_BYTES..=MAX_SPOOL_BYTES).contains(&spool_bytes) {
            return Err((
                "mqtt.spool_bytes",
                format!("is {spool_bytes} bytes: expected 64KiB to 1GiB"),
            ));
        }
        let spool = nonempty(&self.spool);
        if let Some(dir) = spool.as_deref().and_then(Path::parent)
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err((
                "mqtt.spool",
                format!("{}: the directory does not exist", dir.display()),
            ));
        }
        if self.drain_secs > MAX_DRAIN_SECS {
            return Err((
                "mqtt.drain_secs",
                format!("is {}: expected 0 to {MAX_DRAIN_SECS}", self.drain_secs),
            ));
        }
        if !(0.0..=1.0).contains(&self.merge_threshold) {
            return Err((
                "mqtt.merge_threshold",
                format!(
                    "is {}: expected a cosine similarity 0 to 1 (0: the model's threshold + {MERGE_ABOVE_MATCH})",
                    self.merge_threshold
                ),
            ));
        }
        if self.share_passers_by && !self.share_gallery {
            return Err((
                "mqtt.share_passers_by",
                "is true but mqtt.share_gallery is false: passers-by are shared with the gallery"
                    .into(),
            ));
        }
        Ok(Some(MqttConfig {
            host,
            port,
            tls,
            ca_file,
            client_id,
            username: (!self.username.is_empty()).then(|| self.username.clone()),
            password_file,
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            prefix: self.topic_prefix.clone(),
            queue: self.queue,
            spool,
            spool_bytes: spool_bytes as u64,
            discovery: self.discovery.then(|| self.discovery_prefix.clone()),
            drain: Duration::from_secs(self.drain_secs),
            share_gallery: self.share_gallery,
            share_passers_by: self.share_passers_by,
            merge_threshold: self.merge.then_some(self.merge_threshold),
        }))
    }
}

/// Reads the password: the file's first line. A file others can read is used but warned about.
pub fn read_password(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the password: {e}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "{}: the MQTT password file is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!(
            "{}: empty: expected the password on the first line",
            path.display()
        ));
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> MqttSection {
        MqttSection {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls_parse_with_default_ports_and_ipv6() {
        assert_eq!(
            parse_url("mqtt://broker").unwrap(),
            (false, "broker".into(), 1883)
        );
        assert_eq!(
            parse_url("mqtts://broker.lan:8884/").unwrap(),
            (true, "broker.lan".into(), 8884)
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1999").unwrap(),
            (false, "::1".into(), 1999)
        );
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://x:0",
            "mqtt://x:70000",
            "mqtt://u:p@x",
            "mqtt://x/t",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn off_without_a_url_and_fields_are_named() {
        assert!(MqttSection::default().validate("door").unwrap().is_none());
        let c = section("mqtt://127.0.0.1")
            .validate("door")
            .unwrap()
            .unwrap();
        assert_eq!(c.client_id, "reidcam-door");
        assert_eq!(c.discovery.as_deref(), Some("homeassistant"));
        let field = |s: MqttSection| s.validate("door").unwrap_err().0;
        assert_eq!(
            field(MqttSection {
                password_file: "/etc/passwd".into(),
                ..section("mqtt://x")
            }),
            "mqtt.password_file"
        );
        assert_eq!(
            field(MqttSection {
                ca_file: "/etc/hostname".into(),
                ..section("mqtt://x")
            }),
            "mqtt.ca_file"
        );
        assert_eq!(
            field(MqttSection {
                topic_prefix: "a/+/b".into(),
                ..section("mqtt://x")
            }),
            "mqtt.topic_prefix"
        );
        assert_eq!(
            field(MqttSection {
                queue: 0,
                ..section("mqtt://x")
            }),
            "mqtt.queue"
        );
        assert_eq!(
            field(MqttSection {
                spool_bytes: "1KiB".into(),
                ..section("mqtt://x")
            }),
            "mqtt.spool_bytes"
        );
        assert_eq!(
            field(MqttSection {
                keep_alive_secs: 0,
                ..section("mqtt://x")
            }),
            "mqtt.keep_alive_secs"
        );
    }

    #[test]
    fn the_debug_form_carries_no_credentials() {
        let c = MqttSection {
            username: "cam".into(),
            ..section("mqtts://broker")
        }
        .validate("door")
        .unwrap()
        .unwrap();
        let shown = format!("{c:?}");
        assert_eq!(shown, "mqtts://broker:8883 as \"reidcam-door\"");
    }
}
