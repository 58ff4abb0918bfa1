//! V4L2 cameras through the `v4l` crate: open by path, negotiate format, size and frame rate and
//! verify what the driver chose, set controls by name, stream with mmap buffers allocated once,
//! convert each frame into one RGB buffer allocated once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::Type;
use v4l::capability::Flags;
use v4l::control::{Control, Value};
use v4l::format::Quantization;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, FourCC};

use super::convert::{self, PixelFormat, RawLayout, YuvRange};
use super::{CaptureError, Frame, FrameSource};
use crate::frame::RgbImage;

/// What to ask a V4L2 device for.
#[derive(Clone, Debug, PartialEq)]
pub struct V4l2Config {
    pub device: PathBuf,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frames per second to ask for (None: the driver's current rate).
    pub fps: Option<u32>,
    /// mmap buffers in the queue.
    pub buffers: u32,
    /// How long to wait for a frame before giving up (the daemon then reopens the device).
    pub timeout: Duration,
    /// Controls to set after opening, by name (as `v4l2-ctl --list-ctrls` shows them, any case).
    pub controls: Vec<(String, i64)>,
}

impl V4l2Config {
    pub fn new(device: impl Into<PathBuf>, format: PixelFormat, width: u32, height: u32) -> Self {
        V4l2Config {
            device: device.into(),
            format,
            width,
            height,
            fps: None,
            buffers: 4,
            timeout: Duration::from_secs(2),
            controls: Vec::new(),
        }
    }
}

/// What the driver actually gave us.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Negotiated {
    pub driver: String,
    pub card: String,
    pub pixel_format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub bytes_per_line: usize,
    /// Frames per second the driver reports after the request.
    pub fps: f64,
    pub quantization: String,
}

/// A streaming V4L2 capture device.
pub struct V4l2Source {
    device: PathBuf,
    // Field order matters: the stream (which unmaps and stops streaming) goes before the device.
    stream: Stream<'static>,
    _dev: Device,
    layout: RawLayout,
    negotiated: Negotiated,
    rgb: RgbImage,
    timeout: Duration,
}

fn io<'a>(
    device: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> CaptureError + 'a {
    move |source| CaptureError::Io {
        device: device.to_owned(),
        action,
        source,
    }
}

impl V4l2Source {
    /// Opens and configures the device, and maps its buffers. Every setting is read back: a
    /// format or size the driver does not honour is an error naming both.
    pub fn open(config: &V4l2Config) -> Result<Self, CaptureError> {
        let path = config.device.as_path();
        let dev = Device::with_path(path).map_err(|source| CaptureError::Open {
            device: path.to_owned(),
            source,
        })?;
        let caps = dev
            .query_caps()
            .map_err(|source| match source.raw_os_error() {
                // ENOTTY: not a V4L2 node; ENOSYS: qemu-user, which does not translate V4L2 ioctls.
                Some(25) | Some(38) => CaptureError::NotV4l2 {
                    device: path.to_owned(),
                    source,
                },
                _ => io(path, "query capabilities")(source),
            })?;
        if !caps.capabilities.contains(Flags::VIDEO_CAPTURE)
            || !caps.capabilities.contains(Flags::STREAMING)
        {
            return Err(CaptureError::NotCapture {
                device: path.to_owned(),
                card: caps.card,
            });
        }
        let offered = dev.enum_formats().map_err(io(path, "list formats"))?;
        if !offered
            .iter()
            .any(|d| d.fourcc.repr == config.format.fourcc())
        {
            let names: Vec<String> = offered
                .iter()
                .map(|d| format!("{} ({})", d.fourcc.str().unwrap_or("????"), d.description))
                .collect();
            return Err(CaptureError::FormatNotOffered {
                device: path.to_owned(),
                format: config.format,
                offered: names.join(", "),
            });
        }
        let mut want = dev.format().map_err(io(path, "read the format"))?;
        want.width = config.width;
        want.height = config.height;
        want.fourcc = FourCC::new(&config.format.fourcc());
        // Let the driver choose the row padding (the current format's may be for another width).
        want.stride = 0;
        want.size = 0;
        let got = dev.set_format(&want).map_err(io(path, "set the format"))?;
        let chosen_format = PixelFormat::from_fourcc(got.fourcc.repr);
        if chosen_format != Some(config.format)
            || (got.width, got.height) != (config.width, config.height)
        {
            return Err(CaptureError::Negotiation {
                device: path.to_owned(),
                asked: format!("{} {}x{}", config.format, config.width, config.height),
                chosen: format!("{} {}x{}", got.fourcc, got.width, got.height),
            });
        }
        let mut params = dev.params().map_err(io(path, "read the frame rate"))?;
        if let Some(fps) = config.fps {
            params = dev
                .set_params(&Parameters::with_fps(fps))
                .map_err(io(path, "set the frame rate"))?;
        }
        let interval = params.interval;
        let fps = if interval.numerator > 0 {
            f64::from(interval.denominator) / f64::from(interval.numerator)
        } else {
            0.0
        };
        if let Some(asked) = config.fps
            && (fps - f64::from(asked)).abs() > 0.5
        {
            log::warn!(
                "{}: asked for {asked} fps, the driver runs at {fps:.2}",
                path.display()
            );
        }
        set_controls(&dev, path, &config.controls)?;

        let range = match got.quantization {
            Quantization::FullRange => YuvRange::Full,
            _ => YuvRange::Limited,
        };
        let layout = RawLayout {
            format: config.format,
            width: got.width,
            height: got.height,
            bytes_per_line: got.stride as usize,
            range,
        };
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, config.buffers.max(2))
            .map_err(io(path, "map buffers"))?;
        stream.set_timeout(config.timeout);
        let rgb =
            RgbImage::black(got.width, got.height).map_err(|e| CaptureError::Negotiation {
                device: path.to_owned(),
                asked: format!("{}x{}", config.width, config.height),
                chosen: e.to_string(),
            })?;
        let negotiated = Negotiated {
            driver: caps.driver,
            card: caps.card,
            pixel_format: config.format,
            width: got.width,
            height: got.height,
            bytes_per_line: got.stride as usize,
            fps,
            quantization: got.quantization.to_string(),
        };
        log::info!(
            "{}: {} ({}), {} {}x{}, {} bytes/line, {:.2} fps, {} range",
            path.display(),
            negotiated.card,
            negotiated.driver,
            negotiated.pixel_format,
            negotiated.width,
            negotiated.height,
            negotiated.bytes_per_line,
            fps,
            negotiated.quantization
        );
        Ok(V4l2Source {
            device: path.to_owned(),
            stream,
            _dev: dev,
            layout,
            negotiated,
            rgb,
            timeout: config.timeout,
        })
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }
}

/// Sets integer/boolean/menu controls by name; an unknown name lists the device's controls.
fn set_controls(dev: &Device, path: &Path, controls: &[(String, i64)]) -> Result<(), CaptureError> {
    if controls.is_empty() {
        return Ok(());
    }
    let available = dev.query_controls().map_err(io(path, "list controls"))?;
    for (name, value) in controls {
        let Some(description) = available.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            let names: Vec<&str> = available.iter().map(|c| c.name.as_str()).collect();
            return Err(CaptureError::NoSuchControl {
                device: path.to_owned(),
                name: name.clone(),
                available: names.join(", "),
            });
        };
        dev.set_control(Control {
            id: description.id,
            value: Value::Integer(*value),
        })
        .map_err(io(path, "set a control"))?;
        log::info!(
            "{}: control {:?} = {value}",
            path.display(),
            description.name
        );
    }
    Ok(())
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        let (buffer, meta) = match self.stream.next() {
            Ok(frame) => frame,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(CaptureError::Timeout {
                    device: self.device.clone(),
                    timeout: self.timeout,
                });
            }
            Err(e) => return Err(io(&self.device, "dequeue a frame")(e)),
        };
        let used = (meta.bytesused as usize).min(buffer.len());
        let raw = &buffer[..if used == 0 { buffer.len() } else { used }];
        let sequence = u64::from(meta.sequence);
        convert::to_rgb(raw, &self.layout, &mut self.rgb).map_err(|source| {
            CaptureError::Convert {
                device: self.device.clone(),
                sequence,
                source,
            }
        })?;
        let timestamp = Duration::new(
            meta.timestamp.sec.max(0) as u64,
            (meta.timestamp.usec.max(0) as u32) * 1000,
        );
        Ok(Frame {
            image: self.rgb.view(),
            sequence,
            timestamp,
            raw,
            name: "",
        })
    }

    fn size(&self) -> (u32, u32) {
        (self.negotiated.width, self.negotiated.height)
    }

    fn describe(&self) -> String {
        let n = &self.negotiated;
        format!(
            "{} ({}): {} {}x{} at {:.2} fps",
            self.device.display(),
            n.card,
            n.pixel_format,
            n.width,
            n.height,
            n.fps
        )
    }
}
