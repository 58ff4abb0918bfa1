//! RGB8 frames and crops: an owned image, a borrowed view with a row stride, rectangles, and
//! decoding of image files: JPEG through `mozjpeg` (libjpeg-turbo's decoder, so pixels are
//! bit-identical to Pillow's, which the models were evaluated with), PNG through `image`.
//!
//! Everything downstream (preprocess, later capture and detect) speaks [`RgbView`]: interleaved
//! `R,G,B` bytes, `stride` bytes per row, so a crop of a larger frame needs no copy.

use std::fmt;
use std::path::{Path, PathBuf};

/// An owned, tightly packed RGB8 image (`stride == width * 3`).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wraps packed RGB8 pixels. Fails if `data` is not exactly `width * height * 3` bytes or a
    /// side is zero.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, FrameError> {
        let expected = width as usize * height as usize * 3;
        if width == 0 || height == 0 || data.len() != expected {
            return Err(FrameError::BadBuffer {
                width,
                height,
                stride: width as usize * 3,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// A black image (capture and conversion buffers are made once, then overwritten).
    pub fn black(width: u32, height: u32) -> Result<Self, FrameError> {
        Self::from_raw(width, height, vec![0; width as usize * height as usize * 3])
    }

    /// The packed pixels, row after row.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The packed pixels, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// A borrowed view of the whole image.
    pub fn view(&self) -> RgbView<'_> {
        RgbView {
            data: &self.data,
            width: self.width,
            height: self.height,
            stride: self.width as usize * 3,
        }
    }

    /// The whole image as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }
}

/// A borrowed RGB8 image: `height` rows of `width` pixels, each row starting `stride` bytes after
/// the previous one (`stride >= width * 3`).
#[derive(Clone, Copy)]
pub struct RgbView<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    stride: usize,
}

impl fmt::Debug for RgbView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RgbView({}x{}, stride {})",
            self.width, self.height, self.stride
        )
    }
}

impl<'a> RgbView<'a> {
    /// Checks that `data` holds `height` rows of `stride` bytes (the last row may stop after its
    /// last pixel) and that a row fits in the stride.
    pub fn new(data: &'a [u8], width: u32, height: u32, stride: usize) -> Result<Self, FrameError> {
        let row = width as usize * 3;
        let needed = if height == 0 {
            0
        } else {
            stride * (height as usize - 1) + row
        };
        if width == 0 || height == 0 || stride < row || data.len() < needed {
            return Err(FrameError::BadBuffer {
                width,
                height,
                stride,
                len: data.len(),
            });
        }
        Ok(Self {
            data,
            width,
            height,
            stride,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Pixels of row `y` (exactly `width * 3` bytes).
    #[inline]
    pub fn row(&self, y: u32) -> &'a [u8] {
        let start = y as usize * self.stride;
        &self.data[start..start + self.width as usize * 3]
    }

    /// The sub-view covering `rect`, which must lie inside this view.
    pub fn crop(&self, rect: Rect) -> Result<RgbView<'a>, FrameError> {
        if rect.is_empty() || !rect.fits_in(self.width, self.height) {
            return Err(FrameError::RectOutside {
                rect,
                width: self.width,
                height: self.height,
            });
        }
        let start = rect.y as usize * self.stride + rect.x as usize * 3;
        Ok(RgbView {
            data: &self.data[start..],
            width: rect.width,
            height: rect.height,
            stride: self.stride,
        })
    }
}

/// An axis-aligned rectangle in pixels: top-left corner and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The part of the box with corners `(x0, y0)`–`(x1, y1)` (exclusive) inside a `width` ×
    /// `height` image; None if nothing is left.
    pub fn from_corners_clipped(
        x0: i64,
        y0: i64,
        x1: i64,
        y1: i64,
        width: u32,
        height: u32,
    ) -> Option<Rect> {
        let (x0, y0) = (x0.max(0), y0.max(0));
        let (x1, y1) = (x1.min(i64::from(width)), y1.min(i64::from(height)));
        (x1 > x0 && y1 > y0)
            .then(|| Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
    }

    /// Whether the rectangle lies inside a `width` × `height` image.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        u64::from(self.x) + u64::from(self.width) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(height)
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}+{}+{}", self.width, self.height, self.x, self.y)
    }
}

/// What can go wrong with frames and image files.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "pixel buffer of {len} bytes cannot hold a {width}x{height} RGB8 image with stride {stride}"
    )]
    BadBuffer {
        width: u32,
        height: u32,
        stride: usize,
        len: usize,
    },
    #[error("rectangle {rect} is empty or lies outside the {width}x{height} frame")]
    RectOutside { rect: Rect, width: u32, height: u32 },
    #[error("{}: cannot read image: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a decodable JPEG or PNG image: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
}

/// Encodes packed RGB8 rows (`width × height × 3` bytes) as a baseline JPEG of `quality`
/// (0–100). libjpeg's fatal errors unwind; they come back as an error.
pub fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: f32) -> std::io::Result<Vec<u8>> {
    if rgb.len() != width as usize * height as usize * 3 || width == 0 || height == 0 {
        return Err(std::io::Error::other(format!(
            "JPEG encoder: {} bytes are not a {width}x{height} RGB image",
            rgb.len()
        )));
    }
    std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(width as usize, height as usize);
        c.set_quality(quality);
        let mut started = c.start_compress(Vec::new())?;
        started.write_scanlines(rgb)?;
        started.finish()
    })
    .map_err(|_| std::io::Error::other("JPEG encoder failed"))?
}

/// Decodes a JPEG or PNG file (format sniffed from the bytes, not the name) into RGB8.
///
/// A JPEG whose data stops before its end-of-image marker is refused: decoders fill the missing
/// rows with grey, which would silently produce an embedding of half a person.
pub fn load_image(path: &Path) -> Result<RgbImage, FrameError> {
    let bytes = std::fs::read(path).map_err(|source| FrameError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode_image(&bytes).map_err(|reason| FrameError::Decode {
        path: path.to_owned(),
        reason,
    })
}

/// Largest image accepted, in pixels (a 100-megapixel frame is far beyond any camera we drive;
/// a header claiming more is corrupt or hostile, and would otherwise allocate gigabytes).
pub const MAX_PIXELS: usize = 100_000_000;

/// Decodes JPEG or PNG bytes into RGB8; the error is a one-line reason.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, String> {
    let format = image::guess_format(bytes)
        .map_err(|_| "unrecognised file signature (expected JPEG or PNG)".to_string())?;
    match format {
        image::ImageFormat::Jpeg => decode_jpeg(bytes),
        image::ImageFormat::Png => {
            let decoded = image::load_from_memory_with_format(bytes, format)
                .map_err(|e| e.to_string().replace('\n', " "))?;
            let (width, height) = (decoded.width(), decoded.height());
            if width as usize * height as usize > MAX_PIXELS {
                return Err(format!(
                    "{width}x{height} is larger than {MAX_PIXELS} pixels"
                ));
            }
            let rgb = decoded.into_rgb8();
            RgbImage::from_raw(width, height, rgb.into_raw()).map_err(|e| e.to_string())
        }
        other => Err(format!("{other:?} images are not supported (JPEG or PNG)")),
    }
}

/// Decodes a JPEG with libjpeg-turbo's algorithms (islow IDCT, fancy upsampling), as Pillow does.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut data = Vec::new();
    let (width, height) = jpeg_into(bytes, |w, h| {
        data.resize(w * h * 3, 0);
        Ok(&mut data[..])
    })?;
    RgbImage::from_raw(width as u32, height as u32, data).map_err(|e| e.to_string())
}

/// Decodes a JPEG (e.g. an MJPEG camera frame) into `image`, which must already have the JPEG's
/// size: no allocation on our side (libjpeg's own working memory is C-allocated).
pub fn decode_jpeg_into(bytes: &[u8], image: &mut RgbImage) -> Result<(), String> {
    let (want_w, want_h) = (image.width as usize, image.height as usize);
    let data = &mut image.data;
    jpeg_into(bytes, |w, h| {
        if (w, h) != (want_w, want_h) {
            return Err(format!("JPEG is {w}x{h}, expected {want_w}x{want_h}"));
        }
        Ok(&mut data[..])
    })
    .map(|_| ())
}

/// Decodes JPEG or PNG bytes into `image`, resizing it only when the size changes (a replay of
/// same-sized frames allocates nothing on our side after the first).
pub fn decode_image_into(bytes: &[u8], image: &mut RgbImage) -> Result<(), String> {
    if image::guess_format(bytes).ok() != Some(image::ImageFormat::Jpeg) {
        *image = decode_image(bytes)?;
        return Ok(());
    }
    let RgbImage {
        width,
        height,
        data,
    } = image;
    jpeg_into(bytes, |w, h| {
        if (w, h) != (*width as usize, *height as usize) {
            data.resize(w * h * 3, 0);
            (*width, *height) = (w as u32, h as u32);
        }
        Ok(&mut data[..])
    })
    .map(|_| ())
}

/// Runs libjpeg on `bytes`, writing RGB rows into the buffer `dest(width, height)` returns.
fn jpeg_into<'d>(
    bytes: &[u8],
    dest: impl FnOnce(usize, usize) -> Result<&'d mut [u8], String>,
) -> Result<(usize, usize), String> {
    if !jpeg_is_complete(bytes) {
        return Err("JPEG data is truncated (no end-of-image marker)".into());
    }
    // libjpeg reports fatal errors by unwinding (mozjpeg's error manager uses resume_unwind, so no
    // panic message is printed); catch it here and turn it into an error.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> std::io::Result<Result<(usize, usize), String>> {
            let mut rgb = mozjpeg::Decompress::new_mem(bytes)?.rgb()?;
            let (width, height) = (rgb.width(), rgb.height());
            if width * height > MAX_PIXELS {
                return Ok(Err(format!(
                    "{width}x{height} is larger than {MAX_PIXELS} pixels"
                )));
            }
            let data = match dest(width, height) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e)),
            };
            let read = rgb.read_scanlines_into(data)?.len();
            rgb.finish()?;
            if read != width * height * 3 {
                return Ok(Err(format!(
                    "JPEG data ends after {} of {height} rows",
                    read / (width * 3)
                )));
            }
            Ok(Ok((width, height)))
        },
    ));
    match decoded {
        Ok(Ok(result)) => result,
        Ok(Err(io)) => Err(io.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg fatal error".into())),
    }
}

/// A complete JPEG ends with the EOI marker `FF D9`, possibly followed by padding zeros or
/// trailing bytes some cameras append; we look for it in the last few bytes.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[x as u8, y as u8, (x + y) as u8]);
            }
        }
        RgbImage::from_raw(width, height, data).unwrap()
    }

    fn encode(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
        if format == image::ImageFormat::Jpeg {
            // Our encoder: `image` is built without its JPEG codec (see tests/integration/common.rs).
            return encode_jpeg(img.as_bytes(), img.width(), img.height(), 75.0).unwrap();
        }
        let mut bytes = Vec::new();
        image::RgbImage::from_raw(img.width(), img.height(), img.as_bytes().to_vec())
            .unwrap()
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    #[test]
    fn crop_sees_the_right_pixels() {
        let img = gradient(10, 8);
        let view = img.view().crop(Rect::new(3, 2, 4, 5)).unwrap();
        assert_eq!((view.width(), view.height()), (4, 5));
        assert_eq!(view.row(0)[..3], [3, 2, 5]);
        assert_eq!(view.row(4)[9..12], [6, 6, 12]);
    }

    #[test]
    fn crop_outside_is_refused() {
        let img = gradient(10, 8);
        assert!(img.view().crop(Rect::new(7, 0, 4, 2)).is_err());
        assert!(img.view().crop(Rect::new(0, 0, 0, 2)).is_err());
        assert!(img.view().crop(Rect::new(u32::MAX, 0, 2, 2)).is_err());
    }

    #[test]
    fn view_checks_its_buffer() {
        let data = vec![0u8; 10 * 3 * 4];
        assert!(RgbView::new(&data, 10, 4, 30).is_ok());
        assert!(RgbView::new(&data, 10, 5, 30).is_err());
        assert!(RgbView::new(&data, 11, 4, 30).is_err());
        assert!(RgbImage::from_raw(2, 2, vec![0; 11]).is_err());
    }

    #[test]
    fn png_round_trip_and_truncated_jpeg() {
        let img = gradient(7, 5);
        let png = encode(&img, image::ImageFormat::Png);
        assert_eq!(decode_image(&png).unwrap(), img);

        let jpeg = encode(&img, image::ImageFormat::Jpeg);
        assert!(decode_image(&jpeg).is_ok());
        let err = decode_image(&jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(decode_image(b"not an image at all").is_err());
    }

    #[test]
    fn corrupt_jpeg_is_an_error_not_a_crash() {
        let img = gradient(16, 16);
        let jpeg = encode(&img, image::ImageFormat::Jpeg);
        // Keep SOI and the end marker, wreck the headers in between.
        let mut broken = jpeg.clone();
        for b in &mut broken[4..60] {
            *b = 0xAB;
        }
        let err = decode_image(&broken).unwrap_err();
        assert!(!err.is_empty() && !err.contains('\n'), "{err}");
        // A header claiming an absurd size is refused before allocating.
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
            .expect("a frame header (SOF0 or SOF2)");
        let mut huge = jpeg.clone();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let err = decode_image(&huge).unwrap_err();
        assert!(
            err.contains("larger than") || err.contains("libjpeg"),
            "{err}"
        );
    }
}
