//! A camera that goes away (unplugged, driver reset, a stalled stream) is closed and reopened
//! instead of ending the daemon. [`Reopening`] wraps any source behind an opener; the caller
//! waits [`Backoff::next_delay`] between attempts so that it can still react to signals.

use std::time::Duration;

use super::{CaptureError, Frame, FrameSource};

/// Opens (or reopens) a source.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn FrameSource>, CaptureError>>;

/// A source that is reopened after a transient error.
pub struct Reopening {
    name: String,
    open: Opener,
    source: Option<Box<dyn FrameSource>>,
    /// The current source failed: close it before the next frame.
    broken: bool,
    size: (u32, u32),
    reopens: u64,
}

impl Reopening {
    /// Opens the source once now: a source that cannot open at start-up is a configuration error
    /// for the caller to report, not something to retry forever.
    pub fn open(name: impl Into<String>, mut open: Opener) -> Result<Self, CaptureError> {
        let source = open()?;
        Ok(Reopening {
            name: name.into(),
            size: source.size(),
            open,
            source: Some(source),
            broken: false,
            reopens: 0,
        })
    }

    /// True while no source is open (between a failure and a successful reopen).
    pub fn is_down(&self) -> bool {
        self.broken || self.source.is_none()
    }
}

impl FrameSource for Reopening {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        if self.broken {
            // Close the device before opening it again (drivers allow one streaming user).
            self.source = None;
            self.broken = false;
        }
        if self.source.is_none() {
            let source = (self.open)()?;
            if source.size() != self.size {
                log::warn!(
                    "{}: reopened with size {:?} instead of {:?}",
                    self.name,
                    source.size(),
                    self.size
                );
                self.size = source.size();
            }
            log::info!("{}: reopened: {}", self.name, source.describe());
            self.source = Some(source);
            self.reopens += 1;
        }
        let source = self.source.as_mut().expect("opened above");
        match source.next_frame() {
            Ok(frame) => Ok(frame),
            Err(e) => {
                if e.is_transient() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            Some(s) => s.describe(),
            None => format!("{} (closed, reopening)", self.name),
        }
    }

    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn reopens(&self) -> u64 {
        self.reopens
    }
}

/// Exponential back-off between reopen attempts: `initial`, doubling, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A frame arrived: start again from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::frame::RgbImage;

    /// Delivers `frames` frames, then fails with a timeout (a camera that stops).
    struct Flaky {
        rgb: RgbImage,
        left: usize,
    }

    impl FrameSource for Flaky {
        fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
            if self.left == 0 {
                return Err(CaptureError::Timeout {
                    device: "/dev/flaky".into(),
                    timeout: Duration::from_millis(1),
                });
            }
            self.left -= 1;
            Ok(Frame {
                image: self.rgb.view(),
                sequence: 0,
                timestamp: Duration::ZERO,
                raw: &[],
                name: "",
            })
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn size(&self) -> (u32, u32) {
            (self.rgb.width(), self.rgb.height())
        }
    }

    #[test]
    fn a_lost_source_is_reopened_and_open_failures_are_reported() {
        // Opens: 1st ok (2 frames), 2nd fails (unplugged), 3rd ok (2 frames), …
        let attempts = Arc::new(Mutex::new(0));
        let counter = attempts.clone();
        let opener: Opener = Box::new(move || {
            let mut n = counter.lock().unwrap();
            *n += 1;
            if *n == 2 {
                return Err(CaptureError::Open {
                    device: "/dev/flaky".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            Ok(Box::new(Flaky {
                rgb: RgbImage::black(4, 2).unwrap(),
                left: 2,
            }))
        });
        let mut source = Reopening::open("flaky", opener).unwrap();
        let mut log = Vec::new();
        for _ in 0..8 {
            log.push(match source.next_frame() {
                Ok(_) => "frame",
                Err(e) if e.is_transient() => "lost",
                Err(_) => "fatal",
            });
        }
        assert_eq!(
            log,
            [
                "frame", "frame", "lost", "lost", "frame", "frame", "lost", "frame"
            ]
        );
        assert_eq!(source.reopens(), 2);
        assert_eq!(*attempts.lock().unwrap(), 4);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
