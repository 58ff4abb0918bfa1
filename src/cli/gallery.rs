//! `reidcam gallery`: the operator's view of a gallery file.
//!
//! Every action opens the file with the model it was made for (a file for another model is
//! refused), and every change is saved atomically with the previous file kept as `<file>.bak`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use reidcam::gallery::file::{self, ModelTag};
use reidcam::gallery::json::{self, GalleryJson};
use reidcam::gallery::{
    Decision, Gallery, GalleryConfig, NewIdentity, PersonId, StorageFormat, Timestamp,
};

use crate::ModelArgs;

/// Default gallery budget when neither the command line nor a config names one.
pub const DEFAULT_BUDGET: &str = "16MiB";
/// Default exemplars per identity.
pub const DEFAULT_EXEMPLARS: usize = 8;

#[derive(Args)]
pub struct GalleryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The gallery file.
    #[arg(long, value_name = "FILE")]
    gallery: PathBuf,
    /// Storage format of a new gallery (an existing file keeps its own unless this is given).
    #[arg(long, value_name = "int8|f16|f32")]
    format: Option<StorageFormat>,
    /// Exemplars per identity (default: the file's, or 8 for a new gallery).
    #[arg(long, value_name = "K")]
    exemplars: Option<usize>,
    /// Memory budget, e.g. 16MiB, 512KiB or a byte count.
    #[arg(long, default_value = DEFAULT_BUDGET, value_parser = parse_bytes, value_name = "BYTES")]
    budget: usize,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// One line per identity.
    List,
    /// Everything about one identity.
    Show { id: u32 },
    /// Enrol a person from crops of them, as a pinned identity (never evicted).
    Enroll {
        /// Name shown in events.
        #[arg(long)]
        label: Option<String>,
        /// Person crops (JPEG or PNG).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Remove an identity (pinned or not).
    Remove { id: u32 },
    /// Write the gallery as JSON (exemplars dequantised to f32).
    Export {
        #[arg(value_name = "FILE.json")]
        output: PathBuf,
    },
    /// Add the identities of a JSON export (same model; ids kept).
    Import {
        #[arg(value_name = "FILE.json")]
        input: PathBuf,
    },
}

pub use reidcam::config::parse_bytes;

/// A label as it may be shown on a terminal: control characters (escape sequences that could
/// move the cursor, retitle the window or hide text) written as `\u{1b}`.
fn printable(label: &str) -> std::borrow::Cow<'_, str> {
    if !label.chars().any(char::is_control) {
        return label.into();
    }
    label
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

pub fn run(args: GalleryArgs) -> anyhow::Result<()> {
    // A change holds the lock until we return: no other process (a running daemon) may save
    // this file meanwhile. Reading needs none: the daemon replaces the file whole (written
    // beside it, then renamed), so a reader sees one saved state or the next.
    let read_only = matches!(
        args.action,
        Action::List | Action::Show { .. } | Action::Export { .. }
    );
    let _lock = if read_only {
        None
    } else {
        Some(file::GalleryLock::acquire(&args.gallery)?)
    };
    let mut embedder = args.model.load()?;
    let manifest = embedder.manifest().clone();
    let tag = ModelTag {
        name: manifest.model.name.clone(),
        dim: embedder.dim(),
    };
    // Read once: the header picks the defaults below, the same bytes become the gallery.
    let stored = if args.gallery.exists() {
        Some(file::GalleryFile::read(&args.gallery)?)
    } else {
        None
    };
    let header = stored.as_ref().map(file::GalleryFile::header);
    let config = GalleryConfig {
        dim: tag.dim,
        exemplars: args
            .exemplars
            .or(header.as_ref().map(|h| h.exemplars))
            .unwrap_or(DEFAULT_EXEMPLARS),
        format: args
            .format
            .or(header.as_ref().map(|h| h.format))
            .unwrap_or(StorageFormat::Int8),
        budget_bytes: args.budget,
    };
    let policy = super::match_policy(&manifest);
    let exists = stored.is_some();
    // Each action opens the gallery once, after its own argument checks.
    let open = || -> anyhow::Result<Gallery> {
        Ok(match stored {
            Some(file) => file.into_gallery(&tag, config, policy)?,
            None => Gallery::with_budget(config, policy)?,
        })
    };
    let must_exist = || -> anyhow::Result<()> {
        if !exists {
            bail!("{}: no such gallery file", args.gallery.display());
        }
        Ok(())
    };
    match args.action {
        Action::List => {
            must_exist()?;
            let gallery = open()?;
            print_summary(&args.gallery, &gallery)?;
            let mut ids: Vec<_> = gallery.identities().collect();
            ids.sort_by_key(|i| i.id);
            out!(
                "{:>6}  {:<20} {:<6} {:>9} {:>6}  {:<24} last seen",
                "id",
                "label",
                "pinned",
                "exemplars",
                "seen",
                "first seen"
            );
            for i in ids {
                out!(
                    "{:>6}  {:<20} {:<6} {:>9} {:>6}  {:<24} {}",
                    i.id,
                    printable(i.label.unwrap_or("-")),
                    if i.pinned { "yes" } else { "no" },
                    i.exemplars,
                    i.times_seen,
                    i.first_seen.to_string(),
                    i.last_seen
                );
            }
        }
        Action::Show { id } => {
            must_exist()?;
            let gallery = open()?;
            let id = PersonId(id);
            let info = gallery
                .get(id)
                .with_context(|| format!("{}: no identity {id}", args.gallery.display()))?;
            out!("id          {}", info.id);
            out!("label       {}", printable(info.label.unwrap_or("-")));
            out!(
                "pinned      {}",
                if info.pinned {
                    "yes (enrolled by an operator)"
                } else {
                    "no (provisional)"
                }
            );
            out!("first seen  {}", info.first_seen);
            out!("last seen   {}", info.last_seen);
            out!("times seen  {}", info.times_seen);
            out!(
                "exemplars   {} of {} ({})",
                info.exemplars,
                config.exemplars,
                config.format
            );
            let vectors: Vec<Vec<f32>> = (0..info.exemplars)
                .map(|e| {
                    let mut v = vec![0.0; config.dim];
                    gallery.exemplar(id, e, &mut v).map(|()| v)
                })
                .collect::<Result<_, _>>()?;
            for (e, v) in vectors.iter().enumerate() {
                let others: Vec<f32> = vectors
                    .iter()
                    .enumerate()
                    .filter(|&(o, _)| o != e)
                    .map(|(_, w)| reidcam::embed::cosine(v, w))
                    .collect();
                match others.iter().copied().reduce(f32::max) {
                    Some(nearest) => {
                        out!("  exemplar {e}: nearest other exemplar {nearest:.4}")
                    }
                    None => out!("  exemplar {e}"),
                }
            }
        }
        Action::Enroll { label, images } => {
            let mut gallery = open()?;
            let paths: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
            let embedded = reidcam::eval::embed_paths(&mut embedder, &paths, |_, _| {})?;
            if let Some((i, e)) = embedded.unreadable.first() {
                bail!("{}: {e}", paths[*i].display());
            }
            let rows = embedded.embeddings;
            let first = rows.row(0);
            let first = first.as_slice().expect("standard layout");
            if let Decision::Match { best, .. } | Decision::Ambiguous { best, .. } =
                gallery.decide(first)?
            {
                log::warn!(
                    "the first image already matches identity {} (similarity {}): enrolling a new identity anyway",
                    best.id,
                    best.similarity
                );
            }
            let now = Timestamp::now();
            let new = NewIdentity {
                label: label.as_deref(),
                pinned: true,
                now,
            };
            let (id, evicted) = gallery.insert(first, new)?;
            for row in rows.rows().into_iter().skip(1) {
                gallery.offer_exemplar(id, row.as_slice().expect("standard layout"))?;
            }
            let bytes = file::save(&gallery, &tag.name, &args.gallery)?;
            let info = gallery.get(id).expect("just enrolled");
            out!(
                "enrolled {id}{} from {} image(s): {} exemplar(s) kept; {} ({bytes} bytes)",
                label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default(),
                images.len(),
                info.exemplars,
                args.gallery.display()
            );
            if let Some(e) = evicted {
                out!("evicted {e} (least recently seen, unpinned) to make room");
            }
        }
        Action::Remove { id } => {
            must_exist()?;
            let mut gallery = open()?;
            gallery
                .remove(PersonId(id))
                .with_context(|| args.gallery.display().to_string())?;
            // The backup must not keep the person either, nor the thumbnail directory.
            file::save_erasing(&gallery, &tag.name, &args.gallery)?;
            let thumbs = reidcam::thumbs::ThumbConfig::dir_for(&args.gallery);
            reidcam::thumbs::remove_file(&thumbs, PersonId(id))
                .with_context(|| format!("{}: cannot remove thumbnail {id}", thumbs.display()))?;
            out!("removed {id}; {} identities left", gallery.len());
        }
        Action::Export { output } => {
            must_exist()?;
            let gallery = open()?;
            let doc = json::export(&gallery, &tag.name);
            let text = serde_json::to_string_pretty(&doc)?;
            write_private(&output, text.as_bytes())?;
            out!(
                "exported {} identities to {}",
                doc.identities.len(),
                output.display()
            );
        }
        Action::Import { input } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("{}: cannot read", input.display()))?;
            let doc: GalleryJson = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a reidcam gallery export", input.display()))?;
            let mut gallery = open()?;
            let n = json::import(&mut gallery, &tag, &doc, &input)?;
            file::save(&gallery, &tag.name, &args.gallery)?;
            out!(
                "imported {n} identities into {} ({} in total)",
                args.gallery.display(),
                gallery.len()
            );
        }
    }
    Ok(())
}

fn print_summary(path: &Path, gallery: &Gallery) -> anyhow::Result<()> {
    let c = gallery.config();
    out!(
        "{}: {} of {} identities; {} storage, K = {}, {}-d; {} bytes per identity, {} bytes in memory (budget {})",
        path.display(),
        gallery.len(),
        gallery.capacity(),
        c.format,
        c.exemplars,
        c.dim,
        c.bytes_per_identity(),
        gallery.heap_bytes(),
        c.budget_bytes
    );
    Ok(())
}

/// Writes a file readable by its owner only (exports hold biometric data too).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        file::create_private(path).with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn labels_with_terminal_escapes_are_printed_escaped() {
        assert_eq!(printable("Ana"), "Ana");
        assert_eq!(printable("Zoë ✓"), "Zoë ✓");
        assert_eq!(
            printable("x\u{1b}]2;pwned\u{7}y"),
            "x\\u{1b}]2;pwned\\u{7}y"
        );
        assert_eq!(printable("a\nb"), "a\\u{a}b");
    }
}
