//! Fixed zones: rectangles of the frame where people appear (a doorway, a counter). The crop is
//! the zone. With `require_motion` (default) a zone is reported only while enough of it differs
//! from the learnt background, so an empty doorway is not a person.

use serde::{Deserialize, Serialize};

use super::motion::{Background, MotionConfig};
use super::{DetectError, Detection, Detections, Detector};
use crate::frame::{Rect, RgbView};

/// `[detector.zones]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneConfig {
    /// Zones as `[x, y, width, height]` in frame pixels. Empty: the whole frame is one zone.
    pub rects: Vec<[u32; 4]>,
    /// Report a zone only while at least `min_fill` of it is foreground.
    pub require_motion: bool,
    /// Fraction of a zone that must differ from the background.
    pub min_fill: f32,
    /// Background model used for `require_motion` (see `[detector.motion]`).
    pub threshold: u8,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            rects: Vec::new(),
            require_motion: true,
            min_fill: 0.05,
            threshold: MotionConfig::default().threshold,
        }
    }
}

pub struct ZoneDetector {
    config: ZoneConfig,
    zones: heapless::Vec<Rect, { super::MAX_DETECTIONS }>,
    background: Option<Background>,
}

impl ZoneDetector {
    /// Zones must lie inside frames of `width × height`.
    pub fn new(config: ZoneConfig, width: u32, height: u32) -> Result<Self, DetectError> {
        let mut zones = heapless::Vec::new();
        let rects = if config.rects.is_empty() {
            vec![[0, 0, width, height]]
        } else {
            config.rects.clone()
        };
        for (i, &[x, y, w, h]) in rects.iter().enumerate() {
            let rect = Rect::new(x, y, w, h);
            if rect.is_empty() || !rect.fits_in(width, height) {
                return Err(DetectError::Config(format!(
                    "detector.zones.rects[{i}] = [{x}, {y}, {w}, {h}] does not fit in the {width}x{height} frame"
                )));
            }
            zones.push(rect).map_err(|_| {
                DetectError::Config(format!(
                    "detector.zones.rects: at most {} zones",
                    super::MAX_DETECTIONS
                ))
            })?;
        }
        if !(0.0..=1.0).contains(&config.min_fill) {
            return Err(DetectError::Config(format!(
                "detector.zones.min_fill is {}: expected 0..1",
                config.min_fill
            )));
        }
        let background = config.require_motion.then(|| {
            Background::new(MotionConfig {
                threshold: config.threshold,
                ..MotionConfig::default()
            })
        });
        Ok(ZoneDetector {
            config,
            zones,
            background,
        })
    }
}

impl Detector for ZoneDetector {
    fn detect(&mut self, frame: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
        out.clear();
        let ready = match &mut self.background {
            Some(bg) => bg.update(frame),
            None => true,
        };
        if !ready {
            return Ok(());
        }
        for &rect in &self.zones {
            if !rect.fits_in(frame.width(), frame.height()) {
                continue;
            }
            let score = match &self.background {
                Some(bg) => bg.fill(rect),
                None => 1.0,
            };
            if self.background.is_none() || score >= self.config.min_fill {
                // Capacity equals the zone list's: cannot overflow.
                let _ = out.push(Detection { rect, score });
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "zones ({} zone(s){})",
            self.zones.len(),
            if self.config.require_motion {
                ", reported while there is motion"
            } else {
                ", always reported"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{FrameSource, SyntheticConfig, SyntheticSource};

    #[test]
    fn a_zone_is_reported_only_while_someone_is_in_it() {
        let config = SyntheticConfig {
            width: 320,
            height: 180,
            ..SyntheticConfig::default()
        };
        let mut source = SyntheticSource::new(config.clone()).unwrap();
        let truth = SyntheticSource::new(config).unwrap();
        let zone = Rect::new(120, 0, 80, 180);
        let zones = ZoneConfig {
            rects: vec![[zone.x, zone.y, zone.width, zone.height]],
            ..ZoneConfig::default()
        };
        let mut detector = ZoneDetector::new(zones, 320, 180).unwrap();
        let mut out = Detections::new();
        let (mut agree, mut total) = (0, 0);
        for n in 0..110 {
            let frame = source.next_frame().unwrap();
            detector.detect(frame.image, &mut out).unwrap();
            if n < 10 {
                continue;
            }
            let inside = truth
                .person_at(n)
                .is_some_and(|(_, r)| crate::detect::iou(r, zone) > 0.2);
            total += 1;
            agree += usize::from(inside == (out.len() == 1));
            assert!(out.iter().all(|d| d.rect == zone));
        }
        assert!(
            agree * 10 >= total * 9,
            "agree on {agree} of {total} frames"
        );
        assert!(
            ZoneDetector::new(
                ZoneConfig {
                    rects: vec![[300, 0, 40, 10]],
                    ..ZoneConfig::default()
                },
                320,
                180
            )
            .is_err()
        );
    }
}
