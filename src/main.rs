//! The `reidcam` command line: the edge of the program, where errors become one line on stderr and
//! an exit code.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

mod cli;
use cli::out;

use reidcam::bench::{self, BenchOptions};
use reidcam::embed::Kernels;
use reidcam::frame::load_image;
use reidcam::{EmbedConfig, Embedder, ManifestChoice, Preprocessor, npy};

#[derive(Parser)]
#[command(
    name = "reidcam",
    version,
    about = "Person re-identification for edge cameras"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed person crops (JPEG/PNG files): one L2-normalised embedding per image.
    Embed(EmbedArgs),
    /// Measure the inference path: load time, latency per crop, throughput, peak RSS.
    Bench(BenchArgs),
    /// Print the manifest in force for a model (its sidecar, or what inspection found).
    Inspect(ModelArgs),
    /// Evaluate a model on a Market-1501-layout directory through reidcam's own path:
    /// CMC rank-1/5/10, mAP (torchreid and official), mINP.
    Eval(EvalArgs),
    /// Calibrate the match threshold on a Market-1501-layout directory: similarity distributions
    /// of cross-camera pairs, the threshold for target false-match rates, a plot and a config snippet.
    Calibrate(CalibrateArgs),
    /// Manage a gallery file: list, show, enroll, remove, export and import identities.
    Gallery(cli::gallery::GalleryArgs),
    /// Capture frames from a V4L2 camera; with a model, embed a zone of each frame and match it.
    Capture(cli::capture::CaptureArgs),
    /// Find the people in still images with the person detector: one JSON line per image.
    Detect(cli::detect::DetectArgs),
    /// The camera daemon: frames → people → tracks → embeddings → gallery → events (JSON lines).
    /// With no config and no options it runs on built-in defaults.
    Run(cli::run::RunArgs),
    /// Print an `http.users_file` line for NAME: the password is read from standard input (its
    /// first line) and stored as an argon2id hash with a random salt.
    HttpPassword {
        /// The user name (printable, no ':').
        name: String,
    },
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset directory with query/ and bounding_box_test/.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Also rank identities held in a real gallery (each storage format, max and mean
    /// aggregation), enrolled from the gallery crops of the other cameras.
    #[arg(long)]
    identities: bool,
    /// Exemplars per identity for --identities.
    #[arg(long, default_value_t = 8, value_name = "K")]
    exemplars: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset directory with query/ and bounding_box_test/.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Target false-match rates (fractions); the config snippet uses the smallest.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.001])]
    fmr: Vec<f64>,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "calibrate.svg", value_name = "FILE.svg")]
    plot: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// ONNX embedding model.
    #[arg(long, value_name = "MODEL.onnx")]
    model: PathBuf,
    /// Manifest to use instead of the sidecar `MODEL.toml`.
    #[arg(long, value_name = "MANIFEST.toml")]
    manifest: Option<PathBuf>,
    /// Crops per inference.
    #[arg(long, default_value_t = 1, value_name = "B")]
    batch: usize,
    /// Threads: the crops of a batch run side by side (a single crop uses one).
    #[arg(long, default_value_t = 1, value_name = "T")]
    threads: usize,
    /// Who runs the convolutions, pools and channel gates: reidcam's fused kernels, or tract's own
    /// operators for the whole graph.
    #[arg(long, value_enum, default_value_t = KernelsArg::Reidcam)]
    kernels: KernelsArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelsArg {
    Reidcam,
    Tract,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<Embedder> {
        let choice = match &self.manifest {
            Some(path) => ManifestChoice::File(path.clone()),
            None => ManifestChoice::Sidecar,
        };
        let config = EmbedConfig {
            batch: self.batch,
            threads: self.threads,
            kernels: match self.kernels {
                KernelsArg::Reidcam => Kernels::Reidcam,
                KernelsArg::Tract => Kernels::Tract,
            },
        };
        Ok(Embedder::load(&self.model, choice, &config)?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per line: {"path": ..., "embedding": [...]}.
    Jsonl,
    /// One N×D float32 array, rows in argument order.
    Npy,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Embed already preprocessed NCHW tensors instead of images: a 2-D float32 .npy whose rows
    /// are 3·H·W values (for parity checks against other runtimes).
    #[arg(long, value_name = "TENSORS.npy", conflicts_with = "images")]
    tensors: Option<PathBuf>,
    /// Person crops (JPEG or PNG).
    #[arg(value_name = "IMAGE", required_unless_present = "tensors")]
    images: Vec<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Minimum number of timed runs.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Minimum timed duration, seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Check the latency against a board profile's budget (board/NAME.toml): exit 1 if over.
    /// Uses the profile's thread count and batch 1.
    #[arg(long, value_name = "PROFILE.toml")]
    board: Option<PathBuf>,
    /// Also time every operator (over 50 runs of one crop, on `--threads` as a single crop
    /// runs) and print the time per operator kind.
    #[arg(long)]
    profile: bool,
}

/// The error chain joined with ": " on one line; a cause whose text an outer message already
/// quotes (our errors often include their source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn http_password(name: &str) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']);
    let line = reidcam::http::hash_line(name, password).map_err(anyhow::Error::msg)?;
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Inspect(args) => inspect(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Calibrate(args) => calibrate_cmd(args),
        Command::Gallery(args) => cli::gallery::run(args),
        Command::Capture(args) => cli::capture::run(args),
        Command::Detect(args) => cli::detect::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::HttpPassword { name } => http_password(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `reidcam … | head`: the reader has what it wanted.
        Err(e) if cli::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "reidcam: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    path: &'a str,
    embedding: &'a [f32],
}

/// Where results go: a file, or standard output.
fn open_output(path: Option<&Path>, binary: bool) -> anyhow::Result<Box<dyn Write>> {
    match path {
        Some(p) => {
            let file =
                File::create(p).with_context(|| format!("{}: cannot create", p.display()))?;
            Ok(Box::new(BufWriter::new(file)))
        }
        None => {
            if binary && io::stdout().is_terminal() {
                bail!("--format npy writes binary data: give --output FILE or redirect stdout");
            }
            Ok(Box::new(BufWriter::new(io::stdout().lock())))
        }
    }
}

fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let mut embedder = args.model.load()?;
    let dim = embedder.dim();
    let batch = embedder.batch_size();
    let mut out = open_output(args.output.as_deref(), matches!(args.format, Format::Npy))?;
    let mut all = Vec::new(); // npy rows
    let mut emit = |names: &[String],
                    rows: reidcam::Embeddings<'_>,
                    out: &mut dyn Write|
     -> anyhow::Result<()> {
        for (name, row) in names.iter().zip(rows.rows()) {
            match args.format {
                Format::Jsonl => {
                    serde_json::to_writer(
                        &mut *out,
                        &EmbedLine {
                            path: name,
                            embedding: row,
                        },
                    )?;
                    out.write_all(b"\n")?;
                }
                Format::Npy => all.extend_from_slice(row),
            }
        }
        Ok(())
    };

    let mut names = Vec::with_capacity(batch);
    if let Some(tensors) = &args.tensors {
        let file =
            File::open(tensors).with_context(|| format!("{}: cannot open", tensors.display()))?;
        let (_rows, cols, data) = npy::read_f32_2d(io::BufReader::new(file))
            .with_context(|| format!("{}: cannot read tensors", tensors.display()))?;
        let slot = embedder.input_slot(0).len();
        if cols != slot {
            bail!(
                "{}: rows hold {cols} values, the model input needs 3x{}x{} = {slot}",
                tensors.display(),
                embedder.manifest().input.height,
                embedder.manifest().input.width
            );
        }
        for (start, chunk) in data.chunks(batch * cols).enumerate() {
            names.clear();
            for (i, row) in chunk.chunks_exact(cols).enumerate() {
                embedder.input_slot(i).copy_from_slice(row);
                names.push(format!("{}#{}", tensors.display(), start * batch + i));
            }
            let n = names.len();
            emit(&names, embedder.run(n)?, &mut out)?;
        }
    } else {
        let mut pre = Preprocessor::new(&embedder.manifest().input);
        for chunk in args.images.chunks(batch) {
            names.clear();
            for (i, path) in chunk.iter().enumerate() {
                let image = load_image(path)?;
                pre.run(image.view(), image.bounds(), embedder.input_slot(i))?;
                names.push(path.display().to_string());
            }
            let n = names.len();
            emit(&names, embedder.run(n)?, &mut out)?;
        }
    }
    if matches!(args.format, Format::Npy) {
        npy::write_f32_2d(&mut out, all.len() / dim, dim, &all)?;
    }
    out.flush().context("cannot write output")?;
    Ok(())
}

fn bench_cmd(mut args: BenchArgs) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        bail!(
            "--seconds must be a non-negative number, got {}",
            args.seconds
        );
    }
    let board = match &args.board {
        Some(path) => Some(reidcam::board::BoardProfile::load(path)?),
        None => None,
    };
    if let Some(profile) = &board {
        args.model.threads = profile.budget.threads;
        args.model.batch = 1;
    }
    let mut embedder = args.model.load()?;
    let options = BenchOptions {
        min_runs: args.runs.max(1),
        min_time: Duration::from_secs_f64(args.seconds),
        ..BenchOptions::default()
    };
    let report = bench::run(&mut embedder, args.model.threads, &options)?;
    let profile = if args.profile {
        Some(embedder.profile(50)?)
    } else {
        None
    };
    let l = &report.latency_per_crop_ms;
    let budget = board.as_ref().map(|b| (b, b.check(l.p50, l.p99)));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some((profile, check)) = &budget {
            value["budget"] = serde_json::json!({
                "board": profile.board.name,
                "embed_p50_ms": profile.budget.embed_p50_ms,
                "embed_p99_ms": profile.budget.embed_p99_ms,
                "exceeded": check.exceeded,
            });
        }
        if let Some(ops) = &profile {
            value["profile_ms_per_run"] = serde_json::to_value(ops)?;
        }
        out!("{value}");
    } else {
        print_bench(&report)?;
        if let Some(ops) = &profile {
            out!("{}", reidcam::embed::profile_table(ops));
        }
        if let Some((profile, check)) = &budget {
            out!(
                "budget         {}: p50 ≤ {} ms, p99 ≤ {} ms: {}",
                profile.board.name,
                profile.budget.embed_p50_ms,
                profile.budget.embed_p99_ms,
                if check.exceeded.is_empty() {
                    "met"
                } else {
                    "EXCEEDED"
                }
            );
        }
    }
    if let (Some((_, check)), Some(path)) = (&budget, &args.board)
        && !check.exceeded.is_empty()
    {
        bail!("{}: {}", path.display(), check.exceeded.join("; "));
    }
    Ok(())
}

fn print_bench(report: &bench::BenchReport) -> anyhow::Result<()> {
    let l = &report.latency_per_crop_ms;
    out!("cpu            {} ({})", report.cpu, report.kernels);
    out!("model          {} ({})", report.model, report.model_name);
    out!(
        "input          {}x{}, dim {}, batch {}, threads {}",
        report.input[0],
        report.input[1],
        report.dim,
        report.batch,
        report.threads
    );
    out!("load+optimise  {:.1} ms", report.load_ms);
    out!(
        "latency/crop   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  (mean {:.3}, min {:.3}; {} runs)",
        l.p50,
        l.p90,
        l.p99,
        l.mean,
        l.min,
        report.runs
    );
    out!(
        "latency/batch  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
        report.latency_per_batch_ms.p50,
        report.latency_per_batch_ms.p90,
        report.latency_per_batch_ms.p99
    );
    out!(
        "throughput     {:.1} crops/s",
        report.throughput_crops_per_s
    );
    out!(
        "preprocess     {:.1} us/crop (96x240 -> model input)",
        report.preprocess_us_per_crop
    );
    match report.peak_rss_mib {
        Some(mib) => out!("peak RSS       {mib:.1} MiB"),
        None => out!("peak RSS       unavailable"),
    }
    Ok(())
}

fn inspect(args: ModelArgs) -> anyhow::Result<()> {
    let embedder = args.load()?;
    print!("{}", embedder.manifest().to_toml());
    Ok(())
}

/// A dataset embedded through reidcam's path, with its similarity matrix and labels.
struct EmbeddedDataset {
    model_name: String,
    /// How an int8 model ran: "integer" (our int8 kernels) or "dequantised" (float from
    /// dequantised weights, on CPUs without int8 dot products); None for a float model.
    int8_path: Option<&'static str>,
    set: reidcam::eval::MarketSet,
    similarity: ndarray::Array2<f32>,
    query: ndarray::Array2<f32>,
    gallery: ndarray::Array2<f32>,
    query_pids: Vec<i32>,
    query_cameras: Vec<u32>,
    gallery_pids: Vec<i32>,
    gallery_cameras: Vec<u32>,
    unreadable: Vec<(PathBuf, String)>,
    crops: usize,
    seconds: f64,
}

impl EmbeddedDataset {
    fn print_model_line(&self, model: &ModelArgs) -> anyhow::Result<()> {
        out!("model      {} ({})", self.model_name, model.model.display());
        Ok(())
    }

    fn labels(&self) -> reidcam::eval::Labels<'_> {
        reidcam::eval::Labels {
            query_pids: &self.query_pids,
            query_cameras: &self.query_cameras,
            gallery_pids: &self.gallery_pids,
            gallery_cameras: &self.gallery_cameras,
        }
    }
}

fn embed_dataset(model: &ModelArgs, data: &Path) -> anyhow::Result<EmbeddedDataset> {
    let set = reidcam::eval::MarketSet::open(data)?;
    let mut embedder = model.load()?;
    let crops: Vec<&reidcam::eval::Crop> = set.query.iter().chain(&set.gallery).collect();
    let paths: Vec<&Path> = crops.iter().map(|c| c.path.as_path()).collect();
    let bar = cli::progress_bar(paths.len() as u64, "embedding");
    let started = std::time::Instant::now();
    let embedded = reidcam::eval::embed_paths(&mut embedder, &paths, |done, _| {
        bar.set_position(done as u64)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for (i, e) in &embedded.unreadable {
        log::warn!("skipped {}: {e}", paths[*i].display());
    }
    let nq = set.query.len();
    let (mut qrows, mut grows) = (Vec::new(), Vec::new());
    let (mut query_pids, mut query_cameras, mut gallery_pids, mut gallery_cameras) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row, &i) in embedded.kept.iter().enumerate() {
        let crop = crops[i];
        if i < nq {
            qrows.push(row);
            query_pids.push(crop.pid);
            query_cameras.push(crop.camera);
        } else {
            grows.push(row);
            gallery_pids.push(crop.pid);
            gallery_cameras.push(crop.camera);
        }
    }
    if qrows.is_empty() || grows.is_empty() {
        bail!(
            "{}: no readable images in query/ or bounding_box_test/",
            data.display()
        );
    }
    let q = embedded.embeddings.select(ndarray::Axis(0), &qrows);
    let g = embedded.embeddings.select(ndarray::Axis(0), &grows);
    let unreadable = embedded
        .unreadable
        .into_iter()
        .map(|(i, e)| (paths[i].to_owned(), e))
        .collect();
    let crops = paths.len();
    let rewritten = embedder.rewritten();
    Ok(EmbeddedDataset {
        model_name: embedder.manifest().model.name.clone(),
        int8_path: rewritten.quantised.then_some(if rewritten.dot.is_some() {
            "integer"
        } else {
            "dequantised"
        }),
        set,
        similarity: q.dot(&g.t()),
        query: q,
        gallery: g,
        query_pids,
        query_cameras,
        gallery_pids,
        gallery_cameras,
        unreadable,
        crops,
        seconds,
    })
}

const PROTOCOL: &str = "Market-1501: for each query, gallery images of the same id and the same camera are ignored; pid -1 junk dropped, pid 0 distractors kept as negatives; cosine similarity; ties broken by gallery order (stable sort)";

fn eval_cmd(args: EvalArgs) -> anyhow::Result<()> {
    let d = embed_dataset(&args.model, &args.data)?;
    let m = reidcam::eval::evaluate(d.similarity.view(), d.labels());
    if m.queries == 0 {
        bail!(
            "{}: none of the {} queries has a valid gallery match (same id on another camera)",
            args.data.display(),
            m.queries_without_match
        );
    }
    let per_s = d.crops as f64 / d.seconds;
    let identities = if args.identities {
        identity_table(&d, args.exemplars)?
    } else {
        Vec::new()
    };
    if args.json {
        let out = serde_json::json!({
            "identities": identities,
            "model": d.model_name,
            "model_path": args.model.model,
            "int8_path": d.int8_path,
            "data": args.data,
            "protocol": PROTOCOL,
            "query_images": d.set.query.len(),
            "gallery_images": d.set.gallery.len(),
            "junk_dropped": d.set.junk_dropped,
            "unreadable": d.unreadable.iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
            "embedding": {"crops": d.crops, "seconds": d.seconds, "crops_per_s": per_s,
                          "batch": args.model.batch, "threads": args.model.threads},
            "metrics": m,
        });
        out!("{out}");
        return Ok(());
    }
    d.print_model_line(&args.model)?;
    out!(
        "data       {}: {} query, {} gallery images; {} junk dropped; {} unreadable",
        args.data.display(),
        d.set.query.len(),
        d.set.gallery.len(),
        d.set.junk_dropped,
        d.unreadable.len()
    );
    out!("protocol   {PROTOCOL}");
    out!(
        "embedding  {} crops in {:.2} s ({per_s:.1} crops/s), batch {}, {} thread(s)",
        d.crops,
        d.seconds,
        args.model.batch,
        args.model.threads
    );
    out!(
        "queries without a valid gallery match: {} (not in the metrics)",
        m.queries_without_match
    );
    out!(
        "rank1={:.2} rank5={:.2} rank10={:.2} mAP={:.2} mAP_official={:.2} mINP={:.2} queries={} gallery={}",
        m.rank1,
        m.rank5,
        m.rank10,
        m.map,
        m.map_official,
        m.minp,
        m.queries,
        m.gallery
    );
    if let Some(first) = identities.first() {
        out!(
            "identities {} queries ranked over {} identities ({} exemplars, K = {}), gallery built from the other camera(s)",
            first.metrics.queries,
            first.metrics.identities,
            first.metrics.exemplars,
            args.exemplars
        );
        out!("format  aggregation  rank1   rank5   heap bytes");
        for row in &identities {
            out!(
                "{:<7} {:<12} {:<7.2} {:<7.2} {}",
                row.format.name(),
                format!("{:?}", row.aggregation).to_lowercase(),
                row.metrics.rank1,
                row.metrics.rank5,
                row.metrics.heap_bytes
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct IdentityRow {
    format: reidcam::gallery::StorageFormat,
    aggregation: reidcam::gallery::Aggregation,
    metrics: reidcam::eval::IdentityMetrics,
}

/// Identity-level rank-1/5 for every storage format and aggregation.
fn identity_table(d: &EmbeddedDataset, exemplars: usize) -> anyhow::Result<Vec<IdentityRow>> {
    use reidcam::gallery::{Aggregation, GalleryConfig, MatchPolicy, StorageFormat};
    let mut rows = Vec::new();
    for format in StorageFormat::ALL {
        for aggregation in [Aggregation::Max, Aggregation::Mean] {
            let config = GalleryConfig {
                dim: d.query.ncols(),
                exemplars,
                format,
                budget_bytes: 0,
            };
            let policy = MatchPolicy {
                aggregation,
                ..MatchPolicy::default()
            };
            let metrics = reidcam::eval::evaluate_identities(
                d.query.view(),
                d.gallery.view(),
                d.labels(),
                config,
                policy,
            )?;
            rows.push(IdentityRow {
                format,
                aggregation,
                metrics,
            });
        }
    }
    Ok(rows)
}

fn calibrate_cmd(args: CalibrateArgs) -> anyhow::Result<()> {
    // Before minutes of embedding, not after.
    if !cfg!(feature = "tools") {
        bail!(
            "{}: calibrate writes a plot, and this build has none (built without the Cargo \
             feature `tools`: a board build)",
            args.plot.display()
        );
    }
    if args.fmr.is_empty() || args.fmr.iter().any(|f| !(*f > 0.0 && *f < 1.0)) {
        bail!(
            "--fmr takes rates between 0 and 1 (e.g. 0.01,0.001), got {:?}",
            args.fmr
        );
    }
    let d = embed_dataset(&args.model, &args.data)?;
    let pairs = reidcam::eval::PairSimilarities::cross_camera(d.similarity.view(), d.labels());
    if pairs.same.is_empty() || pairs.different.is_empty() {
        bail!(
            "{}: need cross-camera pairs of the same and of different people (found {} and {})",
            args.data.display(),
            pairs.same.len(),
            pairs.different.len()
        );
    }
    let mut points = reidcam::eval::calibrate(&pairs, &args.fmr);
    points.sort_by(|a, b| b.target_fmr.total_cmp(&a.target_fmr));
    let title = format!(
        "{} on {}: cross-camera pair similarities",
        d.model_name,
        args.data.file_name().map_or_else(
            || args.data.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        )
    );
    cli::plot::similarity_distributions(&args.plot, &title, &pairs, &points)?;
    let chosen = points.last().expect("at least one target");
    #[derive(Serialize)]
    struct Section {
        matching: reidcam::manifest::MatchingSpec,
    }
    let snippet = toml::to_string(&Section {
        matching: reidcam::manifest::MatchingSpec {
            // calibrate() rounds up to 4 decimals; this only drops f32 → f64 noise.
            threshold: (f64::from(chosen.threshold) * 1e4).round() / 1e4,
            calibration: format!(
                "reidcam calibrate on {}: {} same-person / {} different-person cross-camera pairs; false-match rate {:.3}% (target {}%), true-match rate {:.1}%",
                args.data.display(),
                pairs.same.len(),
                pairs.different.len(),
                100.0 * chosen.fmr,
                100.0 * chosen.target_fmr,
                100.0 * chosen.tmr
            ),
            split_below: None,
            recent_threshold: None,
        },
    })?;
    if args.json {
        let out = serde_json::json!({
            "model": d.model_name,
            "data": args.data,
            "same_pairs": pairs.same.len(),
            "different_pairs": pairs.different.len(),
            "operating_points": points,
            "plot": args.plot,
            "config_snippet": snippet,
        });
        out!("{out}");
        return Ok(());
    }
    d.print_model_line(&args.model)?;
    out!(
        "pairs      cross-camera: {} same-person, {} different-person",
        pairs.same.len(),
        pairs.different.len()
    );
    out!("target FMR   threshold   FMR        TMR");
    for p in &points {
        out!(
            "{:<12} {:<11.4} {:<10} {:.2}%",
            format!("{}%", 100.0 * p.target_fmr),
            p.threshold,
            format!("{:.3}%", 100.0 * p.fmr),
            100.0 * p.tmr
        );
    }
    out!("plot       {}", args.plot.display());
    out!(
        "suggested [matching] section for the model's manifest ({}):\n{snippet}",
        d.model_name
    );
    Ok(())
}
