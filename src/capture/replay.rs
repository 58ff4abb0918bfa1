//! Replays of recordings, one file per source: a directory of images, a Motion-JPEG file
//! (concatenated JPEGs, as `ffmpeg -c:v mjpeg -f mjpeg` or a camera dump writes), a YUV4MPEG2
//! (`.y4m`) file. Each reuses its read buffer and RGB image from frame to frame.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::convert::{self, Planes, YuvRange};
use super::{CaptureError, Frame, FrameSource};
use crate::frame::{RgbImage, RgbView, decode_image_into};

/// Timestamp of frame `index` at `fps` frames per second.
pub(crate) fn frame_time(index: u64, fps: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / fps)
}

/// Frame numbers and times of a decoded stream, for sources that decode their first frame when
/// they open (to learn the size and refuse a corrupt file early).
pub(crate) struct Numbering {
    pub(crate) fps: f64,
    sequence: u64,
    primed: bool,
}

impl Numbering {
    pub(crate) fn new(fps: f64) -> Self {
        Numbering {
            fps,
            sequence: 0,
            primed: false,
        }
    }

    /// The number the next frame gets.
    pub(crate) fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The first frame was decoded when opening.
    pub(crate) fn prime(&mut self) {
        self.primed = true;
    }

    /// Whether the caller must decode a frame now (not for the one decoded when opening).
    pub(crate) fn needs_decode(&mut self) -> bool {
        !std::mem::take(&mut self.primed)
    }

    /// The next frame, numbered and timed.
    pub(crate) fn frame<'a>(&mut self, image: RgbView<'a>, raw: &'a [u8]) -> Frame<'a> {
        let sequence = self.sequence;
        self.sequence += 1;
        Frame {
            image,
            sequence,
            timestamp: frame_time(sequence, self.fps),
            raw,
            name: "",
        }
    }
}

/// The error that ends a replay.
pub(crate) fn ended(path: &Path) -> CaptureError {
    CaptureError::Ended {
        source_name: path.display().to_string(),
    }
}

/// Every JPEG and PNG file of a directory, in file-name order (camera dumps are named by time or
/// frame number). Frames are timed at `fps`, and carry their file name.
pub struct ImageDirSource {
    dir: PathBuf,
    files: Vec<(PathBuf, String)>,
    next: usize,
    fps: f64,
    bytes: Vec<u8>,
    rgb: RgbImage,
}

impl ImageDirSource {
    pub fn open(dir: &Path, fps: f64) -> Result<Self, CaptureError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CaptureError::Open {
            device: dir.to_owned(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| CaptureError::replay(dir, format!("cannot list: {e}")))?
                .path();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) && path.is_file() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.push((path, name));
            }
        }
        if files.is_empty() {
            return Err(CaptureError::replay(
                dir,
                "no .jpg, .jpeg or .png files in this directory",
            ));
        }
        files.sort();
        // The first image gives the size; later ones may differ (the image is resized then).
        let mut source = ImageDirSource {
            dir: dir.to_owned(),
            files,
            next: 0,
            fps,
            bytes: Vec::new(),
            rgb: RgbImage::black(1, 1).expect("1x1 image"),
        };
        source.load(0)?;
        Ok(source)
    }

    fn load(&mut self, index: usize) -> Result<(), CaptureError> {
        let path = &self.files[index].0;
        self.bytes.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut self.bytes))
            .map_err(|e| CaptureError::replay(path, format!("cannot read: {e}")))?;
        decode_image_into(&self.bytes, &mut self.rgb).map_err(|e| CaptureError::replay(path, e))
    }
}

impl FrameSource for ImageDirSource {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        let index = self.next;
        if index >= self.files.len() {
            return Err(ended(&self.dir));
        }
        self.next += 1;
        // Image 0 was decoded when opening (to learn the size). A later one that cannot be
        // read or decoded is skipped (the error says which).
        if index > 0
            && let Err(e) = self.load(index)
        {
            return Err(match e {
                CaptureError::Replay { path, problem } => CaptureError::BadFrame { path, problem },
                other => other,
            });
        }
        Ok(Frame {
            image: self.rgb.view(),
            sequence: index as u64,
            timestamp: frame_time(index as u64, self.fps),
            raw: &self.bytes,
            name: &self.files[index].1,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}: {} images, first {}x{}",
            self.dir.display(),
            self.files.len(),
            self.rgb.width(),
            self.rgb.height()
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.rgb.width(), self.rgb.height())
    }
}

/// A Motion-JPEG file: JPEGs back to back. Each JPEG is found by walking its marker segments
/// (not by searching for an end marker, which an embedded thumbnail also contains).
pub struct MjpegSource {
    path: PathBuf,
    reader: BufReader<File>,
    numbering: Numbering,
    /// Byte offset of the next JPEG, for error messages.
    offset: u64,
    bytes: Vec<u8>,
    rgb: RgbImage,
}

impl MjpegSource {
    pub fn open(path: &Path, fps: f64) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            device: path.to_owned(),
            source,
        })?;
        let mut source = MjpegSource {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, file),
            numbering: Numbering::new(fps),
            offset: 0,
            bytes: Vec::new(),
            rgb: RgbImage::black(1, 1).expect("1x1 image"),
        };
        if !source.read_next()? {
            return Err(CaptureError::replay(path, "empty file: no JPEG frames"));
        }
        source.numbering.prime();
        Ok(source)
    }

    /// Reads and decodes the next JPEG; false at the end of the file.
    fn read_next(&mut self) -> Result<bool, CaptureError> {
        self.bytes.clear();
        let at = self.offset;
        let found = read_jpeg(&mut self.reader, &mut self.bytes).map_err(|e| {
            CaptureError::replay(
                &self.path,
                format!("frame {} at byte {at}: {e}", self.numbering.sequence()),
            )
        })?;
        if !found {
            return Ok(false);
        }
        self.offset += self.bytes.len() as u64;
        // The frame's bytes are read: a frame that does not decode is skipped.
        decode_image_into(&self.bytes, &mut self.rgb).map_err(|e| {
            CaptureError::bad_frame(
                &self.path,
                format!("frame {} at byte {at}: {e}", self.numbering.sequence()),
            )
        })?;
        Ok(true)
    }
}

impl FrameSource for MjpegSource {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        if self.numbering.needs_decode() && !self.read_next()? {
            return Err(ended(&self.path));
        }
        Ok(self.numbering.frame(self.rgb.view(), &self.bytes))
    }

    fn describe(&self) -> String {
        format!(
            "{}: MJPEG {}x{} at {} fps",
            self.path.display(),
            self.rgb.width(),
            self.rgb.height(),
            self.numbering.fps
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.rgb.width(), self.rgb.height())
    }
}

fn read_u8(r: &mut impl BufRead) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn unexpected_end(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "truncated JPEG (the file ends inside it)".into()
    } else {
        e.to_string()
    }
}

/// Appends one whole JPEG from `r` to `out`; Ok(false) at a clean end of file.
fn read_jpeg(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<bool, String> {
    if r.fill_buf().map_err(|e| e.to_string())?.is_empty() {
        return Ok(false);
    }
    let mut soi = [0u8; 2];
    r.read_exact(&mut soi).map_err(unexpected_end)?;
    if soi != [0xFF, 0xD8] {
        return Err(format!(
            "expected a JPEG start-of-image marker (FF D8), found {:02X} {:02X}",
            soi[0], soi[1]
        ));
    }
    out.extend_from_slice(&soi);
    let mut marker = next_marker(r)?;
    loop {
        out.extend_from_slice(&[0xFF, marker]);
        match marker {
            0xD9 => return Ok(true),
            0x01 | 0xD0..=0xD7 => marker = next_marker(r)?,
            _ => {
                let mut raw = [0u8; 2];
                r.read_exact(&mut raw).map_err(unexpected_end)?;
                let len = usize::from(u16::from_be_bytes(raw));
                if len < 2 {
                    return Err(format!("marker FF {marker:02X} has a bad length {len}"));
                }
                // The length as read (a usize's last two bytes are not it on 32-bit ARM).
                out.extend_from_slice(&raw);
                let start = out.len();
                out.resize(start + len - 2, 0);
                r.read_exact(&mut out[start..]).map_err(unexpected_end)?;
                marker = if marker == 0xDA {
                    entropy_data(r, out)?
                } else {
                    next_marker(r)?
                };
            }
        }
    }
}

/// The next marker code after a segment (fill bytes FF FF… allowed).
fn next_marker(r: &mut impl BufRead) -> Result<u8, String> {
    let b = read_u8(r).map_err(unexpected_end)?;
    if b != 0xFF {
        return Err(format!("expected a marker (FF xx), found {b:02X}"));
    }
    loop {
        match read_u8(r).map_err(unexpected_end)? {
            0xFF => continue,
            m => return Ok(m),
        }
    }
}

/// Copies entropy-coded data up to the next marker (stuffed FF 00 and restart markers are data)
/// and returns that marker's code.
fn entropy_data(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<u8, String> {
    loop {
        let b = read_u8(r).map_err(unexpected_end)?;
        if b != 0xFF {
            out.push(b);
            continue;
        }
        let mut m = read_u8(r).map_err(unexpected_end)?;
        while m == 0xFF {
            m = read_u8(r).map_err(unexpected_end)?;
        }
        match m {
            0x00 | 0xD0..=0xD7 => out.extend_from_slice(&[0xFF, m]),
            _ => return Ok(m),
        }
    }
}

/// A YUV4MPEG2 file (`ffmpeg -pix_fmt yuv420p -f yuv4mpegpipe`): 4:2:0 (any chroma siting) or
/// 4:4:4, 8 bits, progressive; the frame rate from its header.
pub struct Y4mSource {
    path: PathBuf,
    reader: BufReader<File>,
    width: u32,
    height: u32,
    subsampled: bool,
    range: YuvRange,
    numbering: Numbering,
    line: Vec<u8>,
    bytes: Vec<u8>,
    rgb: RgbImage,
}

impl Y4mSource {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            device: path.to_owned(),
            source,
        })?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut header = Vec::new();
        reader
            .read_until(b'\n', &mut header)
            .map_err(|e| CaptureError::replay(path, format!("cannot read: {e}")))?;
        let bad = |problem: String| CaptureError::replay(path, problem);
        let text = std::str::from_utf8(&header)
            .map_err(|_| bad("not a YUV4MPEG2 file (header is not text)".into()))?
            .trim_end();
        let mut fields = text.split(' ');
        if fields.next() != Some("YUV4MPEG2") {
            return Err(bad(
                "not a YUV4MPEG2 file (expected the header to start with \"YUV4MPEG2 \")".into(),
            ));
        }
        let (mut width, mut height, mut fps) = (0u32, 0u32, 25.0f64);
        let (mut subsampled, mut range) = (true, YuvRange::Limited);
        for field in fields.filter(|f| !f.is_empty()) {
            // The tag is the first character (not byte: the header is any UTF-8).
            let mut chars = field.chars();
            let tag = chars.next().unwrap_or(' ');
            let value = chars.as_str();
            match tag {
                'W' => {
                    width = value
                        .parse()
                        .map_err(|_| bad(format!("bad width {field:?}")))?
                }
                'H' => {
                    height = value
                        .parse()
                        .map_err(|_| bad(format!("bad height {field:?}")))?
                }
                'F' => {
                    let (n, d) = value.split_once(':').unwrap_or((value, "1"));
                    match (n.parse::<f64>(), d.parse::<f64>()) {
                        (Ok(n), Ok(d)) if n > 0.0 && d > 0.0 => fps = n / d,
                        _ => return Err(bad(format!("bad frame rate {field:?}"))),
                    }
                }
                'I' if value != "p" && value != "?" => {
                    return Err(bad(format!(
                        "interlaced video ({field}) is not supported: expected Ip"
                    )));
                }
                'C' => {
                    subsampled = match value {
                        "420" | "420jpeg" | "420mpeg2" | "420paldv" => true,
                        "444" => false,
                        other => {
                            return Err(bad(format!(
                                "colour space C{other} is not supported: expected C420* or C444 (8-bit)"
                            )));
                        }
                    }
                }
                'X' if value == "COLORRANGE=FULL" => range = YuvRange::Full,
                _ => {}
            }
        }
        if width == 0 || height == 0 || width as usize * height as usize > crate::frame::MAX_PIXELS
        {
            return Err(bad(format!(
                "frame size {width}x{height} is missing or out of range"
            )));
        }
        let rgb = RgbImage::black(width, height).map_err(|e| bad(e.to_string()))?;
        let mut source = Y4mSource {
            path: path.to_owned(),
            reader,
            width,
            height,
            subsampled,
            range,
            numbering: Numbering::new(fps),
            line: Vec::with_capacity(64),
            bytes: Vec::new(),
            rgb,
        };
        let frame_len = source.frame_len();
        source.bytes.resize(frame_len, 0);
        Ok(source)
    }

    fn frame_len(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        if self.subsampled {
            w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
        } else {
            3 * w * h
        }
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        let sequence = self.numbering.sequence();
        let bad = |problem: String| {
            CaptureError::replay(&self.path, format!("frame {sequence}: {problem}"))
        };
        self.line.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.line)
            .map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Err(ended(&self.path));
        }
        if !self.line.starts_with(b"FRAME") {
            return Err(bad("expected a FRAME header".into()));
        }
        self.reader.read_exact(&mut self.bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad("truncated (the file ends inside the frame)".into())
            } else {
                bad(e.to_string())
            }
        })?;
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = if self.subsampled {
            (w.div_ceil(2), h.div_ceil(2))
        } else {
            (w, h)
        };
        let (y, chroma) = self.bytes.split_at(w * h);
        let (u, v) = chroma.split_at(cw * ch);
        let planes = Planes {
            y,
            u,
            v,
            y_stride: w,
            uv_stride: cw,
            subsampled: self.subsampled,
        };
        convert::planar_to_rgb(&planes, self.range, &mut self.rgb)
            .map_err(|e| bad(e.to_string()))?;
        Ok(self.numbering.frame(self.rgb.view(), &self.bytes))
    }

    fn describe(&self) -> String {
        format!(
            "{}: Y4M {}x{} {} at {:.2} fps",
            self.path.display(),
            self.width,
            self.height,
            if self.subsampled { "4:2:0" } else { "4:4:4" },
            self.numbering.fps
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}
