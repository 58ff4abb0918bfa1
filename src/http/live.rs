//! The live frame: `GET /api/v1/frame.jpg` (the latest frame with boxes and names drawn) and
//! `GET /api/v1/frame` (its tracks as JSON, for enrolment by track).
//!
//! Nothing happens while nobody looks. A request marks the frame as wanted; for the next
//! [`WATCH`] the frame loop copies a frame (pixels and the tracks it shows) into one buffer at
//! most every [`EVERY`], under `try_lock` (a request reading it only makes it skip one).
//!
//! Drawing and JPEG encoding happen on a request's thread, once per copied frame however many
//! clients watch: the first request after a copy encodes it, the others wait for it on the
//! encoder's lock and are all served the same JPEG ([`Picture`], shared by `Arc`). Twenty
//! clients at 5 Hz thus cost at most 5 encodes a second, not 100.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::font;
use crate::frame::RgbView;
use crate::pipeline::{MAX_SHOWN, Shown, ShownKind};

/// How long the frame loop keeps copying after a request.
const WATCH: Duration = Duration::from_secs(10);
/// At most this often (a copy of a 640×480 frame is ~0.1 ms).
const EVERY: Duration = Duration::from_millis(200);
/// A kept frame younger than this is served at once; else the request waits for a new one.
const FRESH: Duration = Duration::from_millis(500);
/// How long a request waits for a new frame (then 503: the camera is away or stalled).
const WAIT: Duration = Duration::from_secs(2);
/// JPEG quality of the live frame.
const QUALITY: f32 = 75.0;

/// One copied frame.
#[derive(Clone, Default)]
pub(super) struct Still {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Milliseconds since the server started when copied (0: never).
    pub at_ms: u64,
    pub frame: u64,
    /// Which copy this is (1, 2, …; 0: none yet).
    pub copy: u64,
    pub shown: heapless::Vec<Shown, MAX_SHOWN>,
}

pub(super) struct Live {
    /// When a request last asked, ms since start + 1 (0: never).
    wanted_ms: AtomicU64,
    still: Mutex<Still>,
    /// Frame-loop side: when it last copied, ms since start.
    copied_ms: AtomicU64,
    /// The last JPEG made, for the copy it was made from; its lock also makes concurrent
    /// requests for a new copy wait for one encoding instead of each making its own.
    picture: Mutex<Option<Picture>>,
}

/// One encoded live frame.
#[derive(Clone)]
pub(super) struct Picture {
    /// The [`Still::copy`] it shows (the `ETag`).
    pub copy: u64,
    pub jpeg: Arc<Vec<u8>>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            wanted_ms: AtomicU64::new(0),
            still: Mutex::new(Still::default()),
            copied_ms: AtomicU64::new(0),
            picture: Mutex::new(None),
        }
    }

    /// Frame loop: whether to copy this frame.
    pub fn due(&self, now_ms: u64) -> bool {
        let wanted = self.wanted_ms.load(Ordering::Relaxed);
        wanted != 0
            && (now_ms + 1).saturating_sub(wanted) <= WATCH.as_millis() as u64
            && now_ms.saturating_sub(self.copied_ms.load(Ordering::Relaxed))
                >= EVERY.as_millis() as u64
    }

    /// Frame loop: copies `image` and the tracks `fill` writes. The buffer grows to the frame's
    /// size on the first copy (and on a larger camera after a reload), then never again.
    pub fn copy(
        &self,
        now_ms: u64,
        frame: u64,
        image: RgbView<'_>,
        fill: impl FnOnce(&mut heapless::Vec<Shown, MAX_SHOWN>),
    ) {
        let Ok(mut still) = self.still.try_lock() else {
            return;
        };
        let (w, h) = (image.width(), image.height());
        let row = w as usize * 3;
        still.rgb.resize(row * h as usize, 0);
        for (y, dst) in still.rgb.chunks_exact_mut(row).enumerate() {
            dst.copy_from_slice(image.row(y as u32));
        }
        still.width = w;
        still.height = h;
        still.at_ms = now_ms.max(1);
        still.frame = frame;
        still.copy += 1;
        fill(&mut still.shown);
        self.copied_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Request side: a recent frame (waiting up to [`WAIT`] for one), or None. `take` reads
    /// what the request needs from it, under the lock (the frame loop skips a copy meanwhile).
    fn latest<T>(&self, started: Instant, take: impl Fn(&Still) -> T) -> Option<T> {
        let asked = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        self.wanted_ms.store(now_ms() + 1, Ordering::Relaxed);
        loop {
            if let Ok(still) = self.still.lock()
                && still.at_ms != 0
                && now_ms().saturating_sub(still.at_ms) <= FRESH.as_millis() as u64
            {
                return Some(take(&still));
            }
            if asked.elapsed() >= WAIT {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Request side: the latest frame's tracks and size, without its pixels.
    pub fn tracks(&self, started: Instant) -> Option<Still> {
        self.latest(started, |s| Still {
            rgb: Vec::new(),
            shown: s.shown.clone(),
            ..*s
        })
    }

    /// Request side: the latest frame drawn and encoded, made once per copy and shared by
    /// every request for it. None: no recent frame (see [`WAIT`]).
    pub fn picture(&self, started: Instant) -> Option<std::io::Result<Picture>> {
        // Held while encoding: requests arriving meanwhile wait here, then find it made.
        let mut made = self.picture.lock().unwrap_or_else(|e| e.into_inner());
        let cached = made.as_ref().map(|p| p.copy);
        // One look at the frame: its pixels are copied only when they are not encoded yet.
        let fresh = self.latest(started, |s| (Some(s.copy) != cached).then(|| s.clone()))?;
        let Some(still) = fresh else {
            return made.clone().map(Ok);
        };
        let copy = still.copy;
        Some(render(still).map(|jpeg| {
            let p = Picture {
                copy,
                jpeg: Arc::new(jpeg),
            };
            *made = Some(p.clone());
            p
        }))
    }
}

/// Box colour by what the track holds.
fn colour(kind: ShownKind) -> [u8; 3] {
    match kind {
        ShownKind::Known => [40, 200, 70],
        ShownKind::New => [255, 160, 0],
        ShownKind::Ambiguous => [240, 220, 0],
        ShownKind::Undecided | ShownKind::Unstored => [170, 170, 170],
    }
}

/// The text drawn over a track's box.
pub(super) fn caption(s: &Shown) -> String {
    let who = match (s.label.is_empty(), s.id) {
        (false, _) => s.label.to_string(),
        (true, Some(id)) => format!("#{id}"),
        (true, None) => String::new(),
    };
    match s.kind {
        ShownKind::Known => match s.similarity {
            Some(sim) => format!("{who} {sim:.2}"),
            None => who,
        },
        ShownKind::New => format!("new {who}"),
        ShownKind::Ambiguous => "?".into(),
        ShownKind::Undecided | ShownKind::Unstored => format!("track {}", s.track),
    }
}

/// Draws the boxes and captions into `still` and encodes it as JPEG.
pub(super) fn render(mut still: Still) -> std::io::Result<Vec<u8>> {
    let (w, h) = (still.width, still.height);
    // Text readable on a phone: 2 pixels per font pixel from 480 pixels wide.
    let scale = if w >= 480 { 2 } else { 1 };
    let shown = std::mem::take(&mut still.shown);
    let mut canvas = Canvas {
        rgb: &mut still.rgb,
        width: w,
        height: h,
    };
    for s in &shown {
        let [x, y, bw, bh] = s.rect;
        let c = colour(s.kind);
        canvas.frame(x, y, bw, bh, 2 * scale, c);
        let text = caption(s);
        let tw = font::text_width(&text) * scale + 4;
        let th = font::HEIGHT * scale + 4;
        // Above the box, or inside its top when the box touches the frame's top.
        let ty = if y >= th { y - th } else { y };
        canvas.fill(x, ty, tw, th, c);
        canvas.text(x + 2, ty + 2, scale, &text, [0, 0, 0]);
    }
    crate::frame::encode_jpeg(&still.rgb, w, h, QUALITY)
}

/// Packed RGB8 rows; every drawing call clips to the image.
struct Canvas<'a> {
    rgb: &'a mut [u8],
    width: u32,
    height: u32,
}

impl Canvas<'_> {
    fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, c: [u8; 3]) {
        let x1 = x.saturating_add(w).min(self.width);
        let y1 = y.saturating_add(h).min(self.height);
        for yy in y.min(y1)..y1 {
            let row = yy as usize * self.width as usize * 3;
            for xx in x.min(x1)..x1 {
                let i = row + xx as usize * 3;
                self.rgb[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// A rectangle outline `t` pixels thick, inside `x, y, w, h`.
    fn frame(&mut self, x: u32, y: u32, w: u32, h: u32, t: u32, c: [u8; 3]) {
        let t = t.min(w / 2).min(h / 2).max(1);
        self.fill(x, y, w, t, c);
        self.fill(x, (y + h).saturating_sub(t), w, t, c);
        self.fill(x, y, t, h, c);
        self.fill((x + w).saturating_sub(t), y, t, h, c);
    }

    fn text(&mut self, x: u32, y: u32, scale: u32, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let gx = x + i as u32 * (font::WIDTH + 1) * scale;
            if gx >= self.width {
                break;
            }
            for (r, bits) in font::glyph(ch).iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits & (1 << (font::WIDTH - 1 - col)) != 0 {
                        let px = gx + col * scale;
                        let py = y + r as u32 * scale;
                        self.fill(px, py, scale, scale, c);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(kind: ShownKind, label: &str, rect: [u32; 4]) -> Shown {
        Shown {
            track: 4,
            rect,
            kind,
            id: Some(9),
            label: heapless::String::try_from(label).unwrap(),
            similarity: Some(0.876),
            seen_now: true,
        }
    }

    #[test]
    fn captions_say_who() {
        assert_eq!(
            caption(&shown(ShownKind::Known, "Alice", [0; 4])),
            "Alice 0.88"
        );
        assert_eq!(caption(&shown(ShownKind::Known, "", [0; 4])), "#9 0.88");
        assert_eq!(caption(&shown(ShownKind::New, "", [0; 4])), "new #9");
        assert_eq!(caption(&shown(ShownKind::Undecided, "", [0; 4])), "track 4");
    }

    #[test]
    fn boxes_and_names_are_drawn_and_clipped() {
        let (w, h) = (64u32, 48u32);
        let mut still = Still {
            rgb: vec![0; (w * h * 3) as usize],
            width: w,
            height: h,
            at_ms: 1,
            frame: 1,
            copy: 1,
            shown: heapless::Vec::new(),
        };
        // One box inside, one hanging over the right and bottom edges.
        still
            .shown
            .push(shown(ShownKind::Known, "Al", [10, 20, 20, 20]))
            .unwrap();
        still
            .shown
            .push(shown(ShownKind::New, "Bo", [50, 40, 40, 40]))
            .unwrap();
        let mut drawn = still.clone();
        let mut canvas = Canvas {
            rgb: &mut drawn.rgb,
            width: w,
            height: h,
        };
        canvas.frame(10, 20, 20, 20, 2, colour(ShownKind::Known));
        let px = |rgb: &[u8], x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        assert_eq!(px(&drawn.rgb, 10, 30), colour(ShownKind::Known));
        assert_eq!(px(&drawn.rgb, 20, 30), [0, 0, 0], "the inside stays");
        let jpeg = render(still).unwrap();
        let back = crate::frame::decode_image(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (w, h));
        // The caption's background sits above the first box, in its colour (JPEG: roughly).
        let above = px(back.as_bytes(), 11, 19);
        let green = colour(ShownKind::Known);
        assert!(
            above.iter().zip(green).all(|(a, b)| a.abs_diff(b) < 60),
            "{above:?}"
        );
    }

    #[test]
    fn one_encoding_per_copy_shared_by_every_request() {
        let live = Live::new();
        let started = Instant::now();
        let (w, h) = (32u32, 24u32);
        let rgb = vec![90u8; (w * h * 3) as usize];
        let image = RgbView::new(&rgb, w, h, w as usize * 3).unwrap();
        let now = || started.elapsed().as_millis() as u64;
        live.copy(now(), 7, image, |_| {});
        let first = live.picture(started).unwrap().unwrap();
        let again = live.picture(started).unwrap().unwrap();
        assert_eq!(first.copy, 1);
        assert!(Arc::ptr_eq(&first.jpeg, &again.jpeg), "encoded twice");
        // Many requests at once: still one encoding.
        let pictures: Vec<Picture> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| live.picture(started).unwrap().unwrap()))
                .collect();
            handles.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(pictures.iter().all(|p| Arc::ptr_eq(&p.jpeg, &first.jpeg)));
        // A new copy → a new picture.
        live.copy(now(), 8, image, |_| {});
        let next = live.picture(started).unwrap().unwrap();
        assert_eq!(next.copy, 2);
        assert!(!Arc::ptr_eq(&next.jpeg, &first.jpeg));
        // The tracks' reader takes no pixels.
        let t = live.tracks(started).unwrap();
        assert_eq!((t.frame, t.width, t.copy, t.rgb.len()), (8, w, 2, 0));
    }
}
