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

use reidcam::bench::{self, BenchOptions};
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
    /// Threads for tract's matrix products.
    #[arg(long, default_value_t = 1, value_name = "T")]
    threads: usize,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error chain joined with ": ".
            let _ = writeln!(
                io::stderr(),
                "reidcam: error: {}",
                format!("{e:#}").replace('\n', " ")
            );
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

fn bench_cmd(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        bail!(
            "--seconds must be a non-negative number, got {}",
            args.seconds
        );
    }
    let mut embedder = args.model.load()?;
    let options = BenchOptions {
        min_runs: args.runs.max(1),
        min_time: Duration::from_secs_f64(args.seconds),
        ..BenchOptions::default()
    };
    let report = bench::run(&mut embedder, args.model.threads, &options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let l = &report.latency_per_crop_ms;
    println!("model          {} ({})", report.model, report.model_name);
    println!(
        "input          {}x{}, dim {}, batch {}, threads {}",
        report.input[0], report.input[1], report.dim, report.batch, report.threads
    );
    println!("load+optimise  {:.1} ms", report.load_ms);
    println!(
        "latency/crop   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  (mean {:.3}, min {:.3}; {} runs)",
        l.p50, l.p90, l.p99, l.mean, l.min, report.runs
    );
    println!(
        "latency/batch  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
        report.latency_per_batch_ms.p50,
        report.latency_per_batch_ms.p90,
        report.latency_per_batch_ms.p99
    );
    println!(
        "throughput     {:.1} crops/s",
        report.throughput_crops_per_s
    );
    println!(
        "preprocess     {:.1} us/crop (96x240 -> model input)",
        report.preprocess_us_per_crop
    );
    match report.peak_rss_mib {
        Some(mib) => println!("peak RSS       {mib:.1} MiB"),
        None => println!("peak RSS       unavailable"),
    }
    Ok(())
}

fn inspect(args: ModelArgs) -> anyhow::Result<()> {
    let embedder = args.load()?;
    print!("{}", embedder.manifest().to_toml());
    Ok(())
}
