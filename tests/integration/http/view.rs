//! The API's pictures and enrolment against a running daemon (the paced synthetic scene, a real
//! gallery file and thumbnail directory): the live frame with its tracks, thumbnails kept 0600
//! and erased with their identity, enrolment of a track in view and of an uploaded picture.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::{Daemon, exchange, json, listed_ids, request, scene_config, within};
use crate::common::{models, scratch};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A row of `reidcam gallery list` for `id`: (label, pinned).
fn listed(gallery: &Path, id: u64) -> Option<(String, bool)> {
    listed_ids(&models().join("tiny_reid.onnx"), gallery)
        .iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id.to_string().as_str()))
        .map(|w| (w[1].to_owned(), w[2] == "yes"))
}

/// A header's value in a response head (name in any case).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A GET with `If-None-Match: tag`: (status, head, body).
fn conditional(addr: std::net::SocketAddr, path: &str, tag: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nIf-None-Match: {tag}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head, raw[end + 4..].to_vec())
}

#[test]
fn the_api_shows_the_frame_keeps_thumbnails_and_enrols() {
    let dir = scratch("http-view");
    let config = scene_config(&dir);
    let gallery = dir.join("g.bin");
    let thumbs = dir.join("g.bin.thumbs");
    let daemon = Daemon::start(&dir, &config, &gallery);
    let addr = daemon.addr;

    // The live frame: the camera's size, with the tracks it shows.
    let (code, head, jpeg) = exchange(addr, "GET", "/api/v1/frame.jpg", None, "", b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&jpeg));
    assert!(head.contains("image/jpeg"), "{head}");
    let picture = reidcam::frame::decode_image(&jpeg).unwrap();
    assert_eq!((picture.width(), picture.height()), (320, 180));
    // Asked again with its ETag: 304 and no body while no newer frame is copied (a new frame
    // comes at most every 200 ms: a newer one answers 200 with another tag).
    let etag = header(&head, "etag").expect("the live frame has an ETag");
    within(20, "a 304 for an unchanged live frame", || {
        let (code, again, body) = conditional(addr, "/api/v1/frame.jpg", &etag);
        match code {
            304 => {
                assert!(body.is_empty(), "a 304 with {} bytes", body.len());
                Some(())
            }
            200 => {
                assert_ne!(header(&again, "etag").as_deref(), Some(etag.as_str()));
                None
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
        }
    });
    let tracks = within(60, "a track in the live frame", || {
        let (code, body) = request(addr, "GET", "/api/v1/frame", None, b"");
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(320), Some(180))
        );
        let tracks = v["tracks"].as_array().unwrap().clone();
        (!tracks.is_empty()).then_some(tracks)
    });
    let b = tracks[0]["box"].as_array().unwrap();
    assert!(
        b[0].as_u64().unwrap() + b[2].as_u64().unwrap() <= 320,
        "{b:?}"
    );
    assert!(tracks[0]["caption"].as_str().is_some(), "{tracks:?}");

    // Thumbnails: the identities the scene made get one, private, readable through the API.
    let (id, url) = within(90, "an identity with a thumbnail", || {
        let (_, body) = request(addr, "GET", "/api/v1/identities", None, b"");
        json(&body)["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["thumbnail"].is_string())
            .map(|p| {
                (
                    p["id"].as_u64().unwrap(),
                    p["thumbnail"].as_str().unwrap().to_owned(),
                )
            })
    });
    assert_eq!(url, format!("/api/v1/identities/{id}/thumbnail.jpg"));
    let (code, head, thumb) = exchange(addr, "GET", &url, None, "", b"");
    assert_eq!(code, 200);
    assert!(head.contains("image/jpeg"), "{head}");
    let file = thumbs.join(format!("{id}.jpg"));
    assert_eq!(std::fs::read(&file).unwrap(), thumb);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&thumbs), 0o700);
    let crop = reidcam::frame::decode_image(&thumb).unwrap();
    assert!(crop.height() > crop.width(), "a person-shaped crop");

    // Enrol the person in view: a pinned, named identity in the gallery file.
    let enrolled = within(60, "an enrolment of a track in view", || {
        let (_, body) = request(addr, "GET", "/api/v1/frame", None, b"");
        let track = json(&body)["tracks"].as_array()?.first()?["track"].as_u64()?;
        let ask = format!(r#"{{"track":{track},"label":"Bob"}}"#);
        let (code, body) = request(addr, "POST", "/api/v1/enrol", None, ask.as_bytes());
        // 409: that track left (or has no embedding yet) meanwhile.
        assert!(code == 201 || code == 409, "{code} {body}");
        (code == 201).then(|| json(&body)["id"].as_u64().unwrap())
    });
    assert_eq!(listed(&gallery, enrolled), Some(("Bob".into(), true)));
    let (code, body) = request(addr, "POST", "/api/v1/enrol", None, br#"{"track":999999}"#);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("track 999999"), "{body}");

    // Enrol from a picture of a person (the thumbnail, at the tiny model's 8×16, enlarged to
    // pass the crop gate's least height, as a phone would send a photo).
    let crop =
        image::RgbImage::from_raw(crop.width(), crop.height(), crop.as_bytes().to_vec()).unwrap();
    let big = image::imageops::resize(&crop, 48, 96, image::imageops::FilterType::Nearest);
    let photo = reidcam::frame::encode_jpeg(big.as_raw(), 48, 96, 75.0).unwrap();
    let (code, _, body) = exchange(
        addr,
        "POST",
        "/api/v1/enrol?label=Carol%20D",
        None,
        "image/jpeg",
        &photo,
    );
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 201, "{body}");
    let carol = json(&body)["id"].as_u64().unwrap();
    let row = listed_ids(&models().join("tiny_reid.onnx"), &gallery)
        .into_iter()
        .find(|r| r.split_whitespace().next() == Some(&carol.to_string()))
        .unwrap();
    assert!(row.contains("Carol D") && row.contains("yes"), "{row}");
    within(10, "Carol's thumbnail", || {
        thumbs.join(format!("{carol}.jpg")).is_file().then_some(())
    });
    // Not a picture: refused, nothing enrolled.
    let (code, _, body) = exchange(
        addr,
        "POST",
        "/api/v1/enrol",
        None,
        "image/jpeg",
        b"\xFF\xD8 not really",
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    // A picture, but not one a person could be recognised from: a 1×1 PNG, and a landscape
    // (the crop gate's size and shape tests): refused with the reason, nothing enrolled.
    for (width, height, expected) in [(1, 1, "pixels tall"), (400, 200, "times as tall as wide")] {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(width, height, image::Rgb([90, 120, 40]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let (code, _, body) = exchange(
            addr,
            "POST",
            "/api/v1/enrol?label=Refused",
            None,
            "image/png",
            &png,
        );
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 422, "{width}x{height}: {body}");
        assert!(body.contains(expected), "{width}x{height}: {body}");
    }
    assert!(
        !listed_ids(&models().join("tiny_reid.onnx"), &gallery)
            .iter()
            .any(|r| r.contains("Refused"))
    );

    // Erasure takes the thumbnail with it, before the answer.
    let (code, body) = request(
        addr,
        "DELETE",
        &format!("/api/v1/identities/{carol}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert!(!thumbs.join(format!("{carol}.jpg")).exists());
    assert_eq!(
        request(
            addr,
            "GET",
            &format!("/api/v1/identities/{carol}/thumbnail.jpg"),
            None,
            b""
        )
        .0,
        404
    );
    assert_eq!(listed(&gallery, carol), None);
    drop(daemon);
    // Every thumbnail left belongs to an identity still in the gallery.
    let ids: Vec<String> = listed_ids(&models().join("tiny_reid.onnx"), &gallery)
        .iter()
        .filter_map(|r| r.split_whitespace().next().map(str::to_owned))
        .collect();
    for entry in std::fs::read_dir(&thumbs).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".jpg").unwrap_or(&name);
        assert!(
            ids.iter().any(|i| i == id),
            "{name} without identity: {ids:?}"
        );
    }
}
