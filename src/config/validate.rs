//! Phase two: [`ConfigFile::validate`] checks every field and builds the [`RunConfig`], with
//! errors that name the field; and the defaults found at run time (a camera, else the sample
//! video, else the synthetic scene; our default model, else the shared OSNet).

use super::*;

impl ConfigFile {
    /// Checks every field and builds the runtime configuration (phase two). `origin` names the
    /// file (or "built-in defaults") in errors.
    pub fn validate(&self, origin: &str) -> Result<RunConfig, ConfigError> {
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            field,
            problem,
        };
        let s = &self.source;
        let format: PixelFormat = s.format.parse().map_err(|e| invalid("source.format", e))?;
        let mut camera = V4l2Config::new("/dev/video0", format, s.width, s.height);
        camera.fps = (s.fps > 0).then_some(s.fps);
        camera.controls = s.controls.iter().map(|(k, v)| (k.clone(), *v)).collect();
        if !(MIN_REPLAY_FPS..=MAX_REPLAY_FPS).contains(&s.replay_fps) {
            return Err(invalid(
                "source.replay_fps",
                format!(
                    "is {}: expected {MIN_REPLAY_FPS} to {MAX_REPLAY_FPS} frames per second",
                    s.replay_fps
                ),
            ));
        }
        let path = if s.path == "auto" {
            auto_source()
        } else {
            s.path.clone()
        };
        let source = SourceSpec::parse(&path, &camera, s.replay_fps)
            .map_err(|e| invalid("source.path", e))?;

        let mut d = std::borrow::Cow::Borrowed(&self.detector);
        if s.path == "auto"
            && matches!(source, SourceSpec::Synthetic(_))
            && d.kind == "model"
            && (d.model.path.as_os_str().is_empty() || d.model.path == Path::new("auto"))
        {
            // The synthetic scene's flat figures are not people a detector network knows; it
            // is made for motion detection.
            log::warn!("synthetic scene: motion detection instead of the person detector");
            d.to_mut().kind = "motion".into();
        }
        if d.model.threads > MAX_THREADS {
            return Err(invalid(
                "detector.model.threads",
                format!(
                    "is {}: expected 0 (as many as the cores, at most {}) or 1..{MAX_THREADS}",
                    d.model.threads,
                    crate::detect::AUTO_THREADS
                ),
            ));
        }
        let detector = match d.kind.as_str() {
            "motion" => {
                d.motion
                    .validate()
                    .map_err(|e| invalid("detector.motion", e))?;
                DetectorChoice::Motion(d.motion.clone())
            }
            "zones" => DetectorChoice::Zones(d.zones.clone()),
            "model" => {
                let mut model = d.model.clone();
                if model.path.as_os_str().is_empty() || model.path == Path::new("auto") {
                    model.path = find_model("detector.onnx").ok_or_else(|| {
                        invalid(
                            "detector.model.path",
                            "is auto, but models/detector.onnx was not found (in the working \
                             directory or beside the executable): name a YOLOX ONNX file"
                                .into(),
                        )
                    })?;
                }
                if !model.path.is_file() {
                    return Err(invalid(
                        "detector.model.path",
                        format!("{}: no such file", model.path.display()),
                    ));
                }
                DetectorChoice::Model(model)
            }
            other => {
                return Err(invalid(
                    "detector.kind",
                    format!("is {other:?}: expected motion, zones or model"),
                ));
            }
        };

        if d.every > MAX_DETECT_EVERY {
            return Err(invalid(
                "detector.every",
                format!(
                    "is {}: expected 0 (automatic) to {MAX_DETECT_EVERY}",
                    d.every
                ),
            ));
        }
        let m = &self.model;
        let model = if m.path == "auto" {
            auto_model()
        } else {
            PathBuf::from(&m.path)
        };
        if !model.is_file() {
            return Err(invalid(
                "model.path",
                format!("{}: no such file", model.display()),
            ));
        }
        let manifest = if m.manifest.is_empty() {
            let sidecar = crate::manifest::sidecar_path(&model);
            let reference = model.file_stem().map(|stem| {
                Path::new("models/reference")
                    .join(stem)
                    .with_extension("toml")
            });
            match reference {
                Some(r) if !sidecar.exists() && r.is_file() => Some(r),
                _ => None,
            }
        } else {
            Some(PathBuf::from(&m.manifest))
        };
        if m.threads == 0 || m.threads > MAX_THREADS {
            return Err(invalid(
                "model.threads",
                format!("is {}: expected 1..{MAX_THREADS}", m.threads),
            ));
        }

        let g = &self.gallery;
        let budget = parse_bytes(&g.budget).map_err(|e| invalid("gallery.budget", e))?;
        if budget as u64 > MAX_GALLERY_BUDGET {
            return Err(invalid(
                "gallery.budget",
                format!(
                    "is {budget} bytes: at most {MAX_GALLERY_BUDGET} (4 GiB; the gallery is held \
                     in memory, and 16 MiB holds thousands of identities)"
                ),
            ));
        }
        let storage: StorageFormat = g.format.parse().map_err(|e| invalid("gallery.format", e))?;
        if g.exemplars == 0 || g.exemplars > 255 {
            return Err(invalid(
                "gallery.exemplars",
                format!("is {}: expected 1..255", g.exemplars),
            ));
        }
        if !(0.0..1.0).contains(&g.margin) {
            return Err(invalid(
                "gallery.margin",
                format!("is {}: expected 0 ≤ margin < 1", g.margin),
            ));
        }
        if !(0.0..=60.0).contains(&g.recent_seconds) {
            return Err(invalid(
                "gallery.recent_seconds",
                format!("is {}: expected 0 (off) to 60 seconds", g.recent_seconds),
            ));
        }
        if g.recent_threshold.is_nan() || g.recent_threshold > 1.0 {
            return Err(invalid(
                "gallery.recent_threshold",
                format!(
                    "is {}: a cosine threshold is at most 1 (negative: the manifest's)",
                    g.recent_threshold
                ),
            ));
        }
        if g.threshold > 1.0 {
            return Err(invalid(
                "gallery.threshold",
                format!("is {}: a cosine threshold is at most 1", g.threshold),
            ));
        }
        let recovery = match g.recovery.as_str() {
            "backup" => Recovery::Backup,
            "empty" => Recovery::Empty,
            "fail" => Recovery::Fail,
            other => {
                return Err(invalid(
                    "gallery.recovery",
                    format!("is {other:?}: expected backup, empty or fail"),
                ));
            }
        };
        let forget_after = if g.forget_after.is_empty() {
            None
        } else {
            Some(parse_duration(&g.forget_after).map_err(|e| invalid("gallery.forget_after", e))?)
        };
        self.tracker.validate().map_err(|e| invalid("tracker", e))?;
        self.quality.validate().map_err(|e| invalid("quality", e))?;
        let e = &self.events;
        let rotate_bytes =
            parse_bytes(&e.rotate_bytes).map_err(|e| invalid("events.rotate_bytes", e))?;
        if rotate_bytes != 0 && rotate_bytes < MIN_ROTATE_BYTES {
            return Err(invalid(
                "events.rotate_bytes",
                format!("is {rotate_bytes} bytes: expected 0 (never rotate) or at least 4KiB"),
            ));
        }
        if e.keep > MAX_KEEP {
            return Err(invalid(
                "events.keep",
                format!("is {}: expected 0..{MAX_KEEP}", e.keep),
            ));
        }
        let nonempty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        if let Some(dir) = nonempty(&e.crops_dir)
            && !dir.is_dir()
        {
            return Err(invalid(
                "events.crops_dir",
                format!("{}: not a directory", dir.display()),
            ));
        }
        if !self.camera.is_empty() {
            check_camera_name(&self.camera).map_err(|e| invalid("camera", e))?;
        }
        let camera = if self.camera.is_empty() {
            "camera".to_owned()
        } else {
            self.camera.clone()
        };
        let mqtt = self
            .mqtt
            .validate(&camera)
            .map_err(|(field, problem)| invalid(field, problem))?;
        let http = self
            .http
            .validate()
            .map_err(|(field, problem)| invalid(field, problem))?;
        let thumbnail_budget =
            parse_bytes(&g.thumbnail_budget).map_err(|e| invalid("gallery.thumbnail_budget", e))?;
        let thumbnails = match nonempty(&g.path) {
            Some(path) if g.thumbnails => Some(crate::thumbs::ThumbConfig {
                dir: crate::thumbs::ThumbConfig::dir_for(&path),
                budget_bytes: thumbnail_budget as u64,
            }),
            _ => None,
        };
        Ok(RunConfig {
            camera,
            board: nonempty(&self.board),
            realtime: s.realtime,
            max_frames: (s.max_frames > 0).then_some(s.max_frames),
            source,
            detector,
            detect_every: (d.every > 0).then_some(d.every),
            threads: m.threads,
            overlap: m.overlap,
            manifest,
            model,
            gallery_path: nonempty(&g.path),
            gallery: crate::gallery::GalleryConfig {
                dim: 0,
                exemplars: g.exemplars,
                format: storage,
                budget_bytes: budget,
            },
            threshold: (g.threshold >= 0.0).then_some(g.threshold),
            margin: g.margin,
            recent_ms: (g.recent_seconds * 1000.0).round() as u64,
            recent_threshold: (g.recent_threshold >= 0.0).then_some(g.recent_threshold),
            aggregation: g.aggregation,
            recovery,
            save_every: std::time::Duration::from_secs(g.save_every_secs.max(1)),
            forget_after,
            tracker: self.tracker.clone(),
            quality: self.quality.clone(),
            events: (e.output != "-").then(|| PathBuf::from(&e.output)),
            rotate_bytes: rotate_bytes as u64,
            keep: e.keep,
            crops_dir: nonempty(&e.crops_dir),
            thumbnails,
            mqtt,
            http,
        })
    }
}

fn auto_source() -> String {
    if Path::new("/dev/video0").exists() {
        return "/dev/video0".into();
    }
    let video = shared_dir().join("data/video/one-by-one-person-detection.mp4");
    if video.is_file() {
        log::warn!(
            "no camera at /dev/video0: replaying {} (set source.path or --source)",
            video.display()
        );
        video.display().to_string()
    } else {
        log::warn!(
            "no camera at /dev/video0 and no sample video at {}: running on the synthetic scene \
             until stopped (set source.path or --source)",
            video.display()
        );
        "synthetic".into()
    }
}

fn auto_model() -> PathBuf {
    find_model("default.onnx")
        .unwrap_or_else(|| shared_dir().join("models/osnet_x0_25_msmt17.onnx"))
}
