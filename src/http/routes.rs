//! Request handling: authentication, routing, bounded bodies, JSON out.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use super::{Command, IdentityRow, Op, Shared, live};
use crate::gallery::{LABEL_CAPACITY, PersonId};

/// How long a change waits for the frame loop (a frame takes well under a second).
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    allow: Option<&'static str>,
    /// The `ETag` of what the body shows (the live frame).
    etag: Option<String>,
}

fn json_reply(status: u16, value: &Value) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        content_type: "application/json",
        allow: None,
        etag: None,
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
            "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'",
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
    if let Some(tag) = &reply.etag
        && let Ok(h) = Header::from_bytes("ETag", tag.as_bytes())
    {
        response.add_header(h);
    }
    if reply.status == 401 {
        let schemes = [
            (shared.token.is_some(), "Bearer realm=\"reidcam\""),
            (
                shared.users.is_some(),
                "Basic realm=\"reidcam\", charset=\"UTF-8\"",
            ),
        ];
        for (_, scheme) in schemes.iter().filter(|(on, _)| *on) {
            if let Ok(h) = Header::from_bytes("WWW-Authenticate", *scheme) {
                response.add_header(h);
            }
        }
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
            etag: None,
        });
    }
    if !authorised(request, shared) {
        return error(401, "missing or wrong bearer token or password");
    }
    match path {
        "/metrics" => only(&method, "GET", || Reply {
            status: 200,
            body: shared.metrics.encode(shared).into_bytes(),
            content_type: super::metrics::CONTENT_TYPE,
            allow: None,
            etag: None,
        }),
        "/api/v1/status" => only(&method, "GET", || json_reply(200, &status(shared))),
        "/api/v1/identities" => only(&method, "GET", || {
            let rows = shared
                .identities
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            let pictured = pictured(shared);
            let list: Vec<Value> = rows
                .iter()
                .map(|r| identity_json(r, pictured.as_ref()))
                .collect();
            json_reply(200, &json!({ "identities": list }))
        }),
        "/api/v1/events" => only(&method, "GET", || events(&url, shared)),
        "/api/v1/frame.jpg" => only(&method, "GET", || frame_jpeg(request, shared)),
        "/api/v1/frame" => only(&method, "GET", || frame_json(shared)),
        "/api/v1/enrol" => match method {
            Method::Post => enrol(request, &url, shared),
            _ => Reply {
                allow: Some("POST"),
                ..error(405, format!("method {method} not allowed here"))
            },
        },
        _ => match path.strip_prefix("/api/v1/identities/") {
            Some(rest) => match rest.strip_suffix("/thumbnail.jpg") {
                Some(id) => only(&method, "GET", || thumbnail(id, shared)),
                None => identity(request, &method, rest, shared),
            },
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

/// The bearer token (compared in constant time) or a user's password (`http.users_file`);
/// neither configured → loopback, allowed. A wrong password waits [`super::users::PENALTY`].
fn authorised(request: &Request, shared: &Shared) -> bool {
    if shared.token.is_none() && shared.users.is_none() {
        return true;
    }
    let mut wrong_password = false;
    for h in request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
    {
        let value = h.value.as_str();
        if let (Some(token), Some(given)) = (&shared.token, value.strip_prefix("Bearer "))
            && same(given.trim().as_bytes(), token.as_bytes())
        {
            return true;
        }
        if let Some(users) = &shared.users
            && value.starts_with("Basic ")
        {
            if users.check(value).is_some() {
                return true;
            }
            wrong_password = true;
        }
    }
    if wrong_password {
        log::warn!(
            "http: wrong user name or password from {}",
            request
                .remote_addr()
                .map_or_else(|| "an HTTPS client".to_owned(), |a| a.ip().to_string())
        );
        std::thread::sleep(super::users::PENALTY);
    }
    false
}

pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
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
            "used_bytes": s.used_bytes,
            "budget_bytes": s.budget_bytes,
        },
        "thumbnails": s.thumbnails.map(|(files, bytes, budget)| json!({
            "files": files,
            "bytes": bytes,
            "budget_bytes": budget,
        })),
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

/// `pictured`: the ids with a thumbnail on disk (None: none are kept).
fn identity_json(r: &IdentityRow, pictured: Option<&HashSet<u32>>) -> Value {
    let thumbnail = pictured
        .filter(|ids| ids.contains(&(r.id as u32)))
        .map(|_| format!("/api/v1/identities/{}/thumbnail.jpg", r.id));
    json!({
        "id": r.id,
        "label": (!r.label.is_empty()).then_some(r.label.as_str()),
        "pinned": r.pinned,
        "first_seen_ms": r.first_seen_ms,
        "last_seen_ms": r.last_seen_ms,
        "times_seen": r.times_seen,
        "exemplars": r.exemplars,
        "thumbnail": thumbnail,
    })
}

fn thumbs_dir(shared: &Shared) -> Option<std::path::PathBuf> {
    shared.thumbs.lock().ok().and_then(|d| d.clone())
}

/// The ids with a thumbnail: one directory read for a whole listing.
fn pictured(shared: &Shared) -> Option<HashSet<u32>> {
    thumbs_dir(shared).map(|dir| crate::thumbs::listed(&dir))
}

fn parse_id(id: &str) -> Option<PersonId> {
    match id.parse::<u32>() {
        Ok(n) if !id.starts_with('+') => Some(PersonId(n)),
        _ => None,
    }
}

fn jpeg(body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        body,
        content_type: "image/jpeg",
        allow: None,
        etag: None,
    }
}

/// `GET /api/v1/identities/<id>/thumbnail.jpg`.
fn thumbnail(id: &str, shared: &Shared) -> Reply {
    let Some(id) = parse_id(id) else {
        return error(404, format!("no identity {id:?}: ids are whole numbers"));
    };
    let Some(dir) = thumbs_dir(shared) else {
        return error(404, "no thumbnails are kept (gallery.thumbnails = false)");
    };
    match crate::thumbs::read(&dir, id) {
        Ok(bytes) => jpeg(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(404, format!("no thumbnail for identity {}", id.0))
        }
        Err(e) => error(500, format!("thumbnail {}: {e}", id.0)),
    }
}

/// `GET /api/v1/frame.jpg`: the latest frame with the tracks drawn, encoded once per copied
/// frame for all clients. Its `ETag` names the copy; `If-None-Match` with it → 304, no body.
fn frame_jpeg(request: &Request, shared: &Shared) -> Reply {
    let picture = match shared.live.picture(shared.started) {
        None => return error(503, "no frame in the last 2 s (camera away or stalled)"),
        Some(Err(e)) => return error(500, format!("cannot encode the frame: {e}")),
        Some(Ok(p)) => p,
    };
    // Unique across restarts of the daemon, so a browser never keeps an earlier run's frame.
    let etag = format!("\"{}-{}\"", shared.boot_id, picture.copy);
    let unchanged = request.headers().iter().any(|h| {
        h.field.equiv("If-None-Match") && h.value.as_str().split(',').any(|t| t.trim() == etag)
    });
    Reply {
        status: if unchanged { 304 } else { 200 },
        body: if unchanged {
            Vec::new()
        } else {
            picture.jpeg.to_vec()
        },
        etag: Some(etag),
        ..jpeg(Vec::new())
    }
}

/// `GET /api/v1/frame`: the tracks of the latest frame.
fn frame_json(shared: &Shared) -> Reply {
    let Some(still) = shared.live.tracks(shared.started) else {
        return error(503, "no frame in the last 2 s (camera away or stalled)");
    };
    let tracks: Vec<Value> = still
        .shown
        .iter()
        .map(|s| {
            json!({
                "track": s.track,
                "box": s.rect,
                "kind": s.kind,
                "id": s.id,
                "label": (!s.label.is_empty()).then_some(s.label.as_str()),
                "similarity": s.similarity,
                "seen_now": s.seen_now,
                "caption": live::caption(s),
            })
        })
        .collect();
    json_reply(
        200,
        &json!({
            "frame": still.frame,
            "width": still.width,
            "height": still.height,
            "age_ms": (shared.started.elapsed().as_millis() as u64).saturating_sub(still.at_ms),
            "tracks": tracks,
        }),
    )
}

/// The largest picture taken for enrolment, in pixels (a 16-megapixel photo).
const MAX_UPLOAD_PIXELS: u64 = 16 << 20;

/// `POST /api/v1/enrol`: `{"track": 12, "label": "Alice"}` (both optional: the tallest person
/// in view, no name), or a JPEG/PNG picture of the person (`Content-Type: image/jpeg` or
/// `image/png`) with `?label=Alice`.
fn enrol(request: &mut Request, url: &str, shared: &Shared) -> Reply {
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("image/") {
        let label = match query_label(url) {
            Ok(l) => l,
            Err(m) => return error(400, m),
        };
        let body = match read_body(request, shared.config.max_upload) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let image = match crate::frame::decode_image(&body) {
            Ok(i) => i,
            Err(e) => return error(400, format!("body: expected a JPEG or PNG picture: {e}")),
        };
        let pixels = u64::from(image.width()) * u64::from(image.height());
        if pixels > MAX_UPLOAD_PIXELS {
            return error(
                413,
                format!(
                    "picture is {}x{}: at most {MAX_UPLOAD_PIXELS} pixels",
                    image.width(),
                    image.height()
                ),
            );
        }
        return apply(shared, Op::EnrolImage { image, label });
    }
    let body = match read_body(request, shared.config.max_body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse_enrol(&body) {
        Ok(op) => apply(shared, op),
        Err(message) => error(400, message),
    }
}

/// `?label=` (percent-encoded, `+` for a space), checked as a label; absent: none.
fn query_label(url: &str) -> Result<Option<String>, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut label = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("label", v)) => {
                let decoded = percent_decode(v).ok_or("label: bad percent-encoding")?;
                label = check_label(&decoded)?;
            }
            _ => return Err(format!("unknown query parameter {pair:?}: expected label")),
        }
    }
    Ok(label)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// A label as given: empty → none; too long or with control characters → refused.
fn check_label(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > LABEL_CAPACITY || s.chars().any(char::is_control) {
        return Err(format!(
            "label: expected at most {LABEL_CAPACITY} bytes without control characters"
        ));
    }
    Ok(Some(s.to_owned()))
}

/// `{"track": 12, "label": "Alice"}`, either or both (an empty body: the tallest, no name).
pub(super) fn parse_enrol(body: &[u8]) -> Result<Op, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Op::EnrolTrack {
            track: None,
            label: None,
        });
    }
    let object = strict_object(
        body,
        ["track", "label"],
        r#"{"track": 3, "label": "Alice"}"#,
    )?;
    let track = match object.get("track") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("track: expected a track number (GET /api/v1/frame lists them)")?,
        ),
    };
    let label = match object.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => check_label(s)?,
        Some(_) => return Err("label: expected a string or null".into()),
    };
    Ok(Op::EnrolTrack { track, label })
}

fn identity(request: &mut Request, method: &Method, id: &str, shared: &Shared) -> Reply {
    let Some(id) = parse_id(id) else {
        return error(404, format!("no identity {id:?}: ids are whole numbers"));
    };
    let current = shared
        .identities
        .lock()
        .ok()
        .and_then(|rows| rows.iter().find(|r| r.id == u64::from(id.0)).cloned());
    match method {
        Method::Get | Method::Head => match current {
            Some(r) => json_reply(200, &identity_json(&r, pictured(shared).as_ref())),
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

/// A JSON object with no field but `fields` (the error shows `example`).
fn strict_object(
    body: &[u8],
    fields: [&str; 2],
    example: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body: expected a JSON object: {e}"))?;
    let Value::Object(object) = value else {
        return Err(format!("body: expected a JSON object like {example}"));
    };
    if let Some(key) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!(
            "body: unknown field {key:?}: expected {:?} and/or {:?}",
            fields[0], fields[1]
        ));
    }
    Ok(object)
}

/// `{"label": "name" | null, "pinned": true | false}`, either or both.
pub(super) fn parse_edit(id: PersonId, body: &[u8]) -> Result<Op, String> {
    let object = strict_object(body, ["label", "pinned"], r#"{"label": "Alice"}"#)?;
    let label = match object.get("label") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(check_label(s)?),
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
    let describe = match &op {
        // Not the picture's pixels.
        Op::EnrolImage { image, label } => format!(
            "EnrolImage {{ {}x{}, label: {label:?} }}",
            image.width(),
            image.height()
        ),
        other => format!("{other:?}"),
    };
    if shared.commands.try_send(Command { op, reply: tx }).is_err() {
        return error(503, "too many changes waiting: try again");
    }
    match rx.recv_timeout(APPLY_TIMEOUT) {
        Ok(Ok(made)) => {
            log::info!("http: applied {describe}");
            match made {
                Some(id) => json_reply(201, &json!({ "ok": true, "id": id.0 })),
                None => json_reply(200, &json!({ "ok": true })),
            }
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
    fn enrolments_are_parsed_strictly() {
        let track = |t: Option<u64>, l: Option<&str>| Op::EnrolTrack {
            track: t,
            label: l.map(str::to_owned),
        };
        assert_eq!(parse_enrol(b""), Ok(track(None, None)));
        assert_eq!(parse_enrol(b"{}"), Ok(track(None, None)));
        assert_eq!(
            parse_enrol(br#"{"track":12,"label":"Alice"}"#),
            Ok(track(Some(12), Some("Alice")))
        );
        assert_eq!(parse_enrol(br#"{"label":""}"#), Ok(track(None, None)));
        for bad in [
            &br#"{"track":-1}"#[..],
            br#"{"track":"3"}"#,
            br#"{"label":5}"#,
            br#"{"id":3}"#,
            br#"[]"#,
        ] {
            assert!(
                parse_enrol(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            query_label("/api/v1/enrol?label=Ana%20Mar%C3%ADa+B"),
            Ok(Some("Ana María B".into()))
        );
        assert_eq!(query_label("/api/v1/enrol"), Ok(None));
        assert!(query_label("/api/v1/enrol?label=%0Ax").is_err());
        assert!(query_label("/api/v1/enrol?label=%zz").is_err());
        assert!(query_label("/api/v1/enrol?name=x").is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abc", b"abcdef"));
        assert!(!same(b"", b"a"));
    }
}
