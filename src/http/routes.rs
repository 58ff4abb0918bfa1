//! Request handling: authentication, routing, bounded bodies, JSON out.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use super::{Command, IdentityRow, Op, Shared};
use crate::gallery::{LABEL_CAPACITY, PersonId};

/// How long a change waits for the frame loop (a frame takes well under a second).
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    allow: Option<&'static str>,
}

fn json_reply(status: u16, value: &Value) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        content_type: "application/json",
        allow: None,
    }
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    json_reply(status, &json!({ "error": message.into() }))
}

pub(super) fn handle(mut request: Request, shared: &Shared) {
    let reply = route(&mut request, shared);
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        // Scripts, styles and requests only from this camera; never inside another site's frame.
        (
            "Content-Security-Policy",
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        ("Referrer-Policy", "no-referrer"),
    ] {
        if let Ok(h) = Header::from_bytes(name, value) {
            response.add_header(h);
        }
    }
    if let Some(allow) = reply.allow
        && let Ok(h) = Header::from_bytes("Allow", allow)
    {
        response.add_header(h);
    }
    if reply.status == 401
        && let Ok(h) = Header::from_bytes("WWW-Authenticate", "Bearer realm=\"reidcam\"")
    {
        response.add_header(h);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("http: cannot answer: {e}");
    }
}

fn route(request: &mut Request, shared: &Shared) -> Reply {
    let url = request.url().to_owned();
    let path = url.split(['?', '#']).next().unwrap_or("");
    let method = request.method().clone();
    if path == "/healthz" {
        return only(&method, "GET", || health(shared));
    }
    // The page itself holds no data (it asks for the token, then reads the API): no auth.
    if let Some((body, content_type)) = page(path) {
        return only(&method, "GET", || Reply {
            status: 200,
            body: body.to_vec(),
            content_type,
            allow: None,
        });
    }
    if !authorised(request, shared) {
        return error(401, "missing or wrong bearer token");
    }
    match path {
        "/metrics" => only(&method, "GET", || Reply {
            status: 200,
            body: shared.metrics.encode(shared).into_bytes(),
            content_type: super::metrics::CONTENT_TYPE,
            allow: None,
        }),
        "/api/v1/status" => only(&method, "GET", || json_reply(200, &status(shared))),
        "/api/v1/identities" => only(&method, "GET", || {
            let rows = shared
                .identities
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            json_reply(
                200,
                &json!({ "identities": rows.iter().map(identity_json).collect::<Vec<_>>() }),
            )
        }),
        "/api/v1/events" => only(&method, "GET", || events(&url, shared)),
        _ => match path.strip_prefix("/api/v1/identities/") {
            Some(id) => identity(request, &method, id, shared),
            None => error(404, format!("no such resource: {path}")),
        },
    }
}

/// The web page's files, compiled into the binary (src/http/web/).
fn page(path: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match path {
        "/" | "/index.html" => (include_bytes!("web/index.html"), "text/html; charset=utf-8"),
        "/app.js" => (
            include_bytes!("web/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "/app.css" => (include_bytes!("web/app.css"), "text/css; charset=utf-8"),
        _ => return None,
    })
}

/// `GET` (and `HEAD`) only.
fn only(method: &Method, allowed: &'static str, f: impl FnOnce() -> Reply) -> Reply {
    match method {
        Method::Get | Method::Head => f(),
        _ => Reply {
            allow: Some(allowed),
            ..error(405, format!("method {method} not allowed here"))
        },
    }
}

/// The bearer token, compared in constant time; no token configured → loopback, allowed.
fn authorised(request: &Request, shared: &Shared) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .any(|h| {
            h.value
                .as_str()
                .strip_prefix("Bearer ")
                .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
        })
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn health(shared: &Shared) -> Reply {
    let now = shared.started.elapsed().as_millis() as u64;
    let beat = shared.heartbeat_ms.load(Ordering::Relaxed);
    let age_ms = now.saturating_sub(beat);
    let stall = shared.config.stall.as_millis() as u64;
    let reason = if shared.camera_down.load(Ordering::Relaxed) {
        Some("camera lost: reopening".to_owned())
    } else if age_ms > stall {
        Some(format!(
            "frame loop has not advanced for {:.1} s (http.stall_secs {})",
            age_ms as f64 / 1e3,
            stall / 1000
        ))
    } else {
        None
    };
    json_reply(
        if reason.is_some() { 503 } else { 200 },
        &json!({ "healthy": reason.is_none(), "reason": reason, "last_turn_ms_ago": age_ms }),
    )
}

fn status(shared: &Shared) -> Value {
    let s = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs_f64(),
        "camera": s.camera,
        "source": s.source,
        "camera_down": shared.camera_down.load(Ordering::Relaxed),
        "detector": s.detector,
        "model": s.model,
        "frames": s.frames,
        "fps": s.fps,
        "stage_ms": s.stage_ms,
        "counts": s.counts,
        "camera_reopens": s.camera_reopens,
        "gallery": {
            "identities": s.identities,
            "capacity": s.capacity,
            "bytes": s.gallery_bytes,
            "budget_bytes": s.budget_bytes,
        },
        "mqtt": s.mqtt_delivered.map(|d| json!({ "delivered": d, "dropped": s.mqtt_dropped })),
    })
}

/// `?since=<seq>`: the kept events after that sequence number (0 or none: all kept).
fn events(url: &str, shared: &Shared) -> Reply {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut since = 0u64;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) => match v.parse() {
                Ok(n) => since = n,
                Err(_) => return error(400, format!("since={v:?}: expected a whole number")),
            },
            _ => {
                return error(
                    400,
                    format!("unknown query parameter {pair:?}: expected since"),
                );
            }
        }
    }
    let (kept, last) = shared.recent.since(since);
    let events: Vec<Value> = kept
        .iter()
        .filter_map(|(seq, line)| {
            let mut v: Value = serde_json::from_slice(line).ok()?;
            v.as_object_mut()?.insert("seq".into(), json!(seq));
            Some(v)
        })
        .collect();
    json_reply(200, &json!({ "events": events, "last_seq": last }))
}

fn identity_json(r: &IdentityRow) -> Value {
    json!({
        "id": r.id,
        "label": (!r.label.is_empty()).then_some(r.label.as_str()),
        "pinned": r.pinned,
        "first_seen_ms": r.first_seen_ms,
        "last_seen_ms": r.last_seen_ms,
        "times_seen": r.times_seen,
        "exemplars": r.exemplars,
    })
}

fn identity(request: &mut Request, method: &Method, id: &str, shared: &Shared) -> Reply {
    let id = match id.parse::<u32>() {
        Ok(n) if !id.starts_with('+') => PersonId(n),
        _ => return error(404, format!("no identity {id:?}: ids are whole numbers")),
    };
    let current = shared
        .identities
        .lock()
        .ok()
        .and_then(|rows| rows.iter().find(|r| r.id == u64::from(id.0)).cloned());
    match method {
        Method::Get | Method::Head => match current {
            Some(r) => json_reply(200, &identity_json(&r)),
            None => error(404, format!("no identity {}", id.0)),
        },
        Method::Delete => apply(shared, Op::Erase(id)),
        Method::Patch => {
            let body = match read_body(request, shared.config.max_body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            match parse_edit(id, &body) {
                Ok(op) => apply(shared, op),
                Err(message) => error(400, message),
            }
        }
        _ => Reply {
            allow: Some("GET, PATCH, DELETE"),
            ..error(405, format!("method {method} not allowed here"))
        },
    }
}

/// The body, refused past `max` bytes (413) before more than `max + 1` are read.
fn read_body(request: &mut Request, max: usize) -> Result<Vec<u8>, Reply> {
    if request.body_length().is_some_and(|n| n > max) {
        return Err(error(413, format!("request body over {max} bytes")));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| error(400, format!("cannot read the request body: {e}")))?;
    if body.len() > max {
        return Err(error(413, format!("request body over {max} bytes")));
    }
    Ok(body)
}

/// `{"label": "name" | null, "pinned": true | false}`, either or both.
pub(super) fn parse_edit(id: PersonId, body: &[u8]) -> Result<Op, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body: expected a JSON object: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("body: expected a JSON object like {\"label\": \"Alice\"}".into());
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "label" | "pinned"))
    {
        return Err(format!(
            "body: unknown field {key:?}: expected \"label\" and/or \"pinned\""
        ));
    }
    let label = match object.get("label") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) if s.is_empty() => Some(None),
        Some(Value::String(s)) => {
            if s.len() > LABEL_CAPACITY || s.chars().any(char::is_control) {
                return Err(format!(
                    "label: expected at most {LABEL_CAPACITY} bytes without control characters"
                ));
            }
            Some(Some(s.clone()))
        }
        Some(_) => return Err("label: expected a string or null".into()),
    };
    let pinned = match object.get("pinned") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("pinned: expected true or false".into()),
    };
    if label.is_none() && pinned.is_none() {
        return Err("body: nothing to change: give \"label\" and/or \"pinned\"".into());
    }
    Ok(Op::Edit { id, label, pinned })
}

/// Hands a change to the frame loop and waits for its outcome.
fn apply(shared: &Shared, op: Op) -> Reply {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let describe = format!("{op:?}");
    if shared.commands.try_send(Command { op, reply: tx }).is_err() {
        return error(503, "too many changes waiting: try again");
    }
    match rx.recv_timeout(APPLY_TIMEOUT) {
        Ok(Ok(())) => {
            log::info!("http: applied {describe}");
            json_reply(200, &json!({ "ok": true }))
        }
        Ok(Err((status, message))) => error(status, message),
        Err(_) => error(
            503,
            "the frame loop did not take the change in time (camera stalled?)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_parsed_strictly() {
        let id = PersonId(3);
        assert_eq!(
            parse_edit(id, br#"{"label":"Alice"}"#),
            Ok(Op::Edit {
                id,
                label: Some(Some("Alice".into())),
                pinned: None
            })
        );
        assert_eq!(
            parse_edit(id, br#"{"label":null,"pinned":true}"#),
            Ok(Op::Edit {
                id,
                label: Some(None),
                pinned: Some(true)
            })
        );
        for bad in [
            &br#"{}"#[..],
            br#"[1]"#,
            br#"{"label":3}"#,
            br#"{"pinned":"yes"}"#,
            br#"{"label":"a","admin":true}"#,
            b"not json",
            br#"{"label":"a\u0007b"}"#,
        ] {
            assert!(
                parse_edit(id, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(r#"{{"label":"{}"}}"#, "x".repeat(LABEL_CAPACITY + 1));
        assert!(
            parse_edit(id, long.as_bytes())
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
        assert!(!same(b"", b"a"));
    }
}
