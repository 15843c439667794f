//! Checkpoints: written atomically with a manifest of their files, verified before a resume,
//! and found again after a kill.
//!
//! A checkpoint is a directory. It is written whole into a hidden temporary directory beside
//! its destination, every file and the directory synced, then renamed into place, so that a
//! kill during a save leaves the previous checkpoint as it was. Its last file,
//! `manifest.json`, lists every other file with its size and SHA-256: a checkpoint without it
//! is incomplete, and one whose files disagree with it is damaged; either is refused with the
//! file named.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use mtrl_core::{Agent, EnvironmentFactory};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{TrainConfig, TrainState, Trainer};
use crate::Error;

/// The manifest's file name, in every checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

const FORMAT: &str = "mtrl-checkpoint/1";

/// What a checkpoint holds: every file but the manifest itself, with its size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format, `mtrl-checkpoint/1`.
    pub format: String,
    /// The files, by path relative to the checkpoint (`/`-separated), in path order.
    pub files: Vec<ManifestEntry>,
}

/// One file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The path relative to the checkpoint directory.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, in lower-case hex.
    pub sha256: String,
}

/// A checkpoint found by [`latest_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct FoundCheckpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// The run state it holds.
    pub state: TrainState,
}

/// What [`latest_checkpoint`] found among the candidates.
#[derive(Debug, Default)]
pub struct CheckpointScan {
    /// The complete checkpoint furthest into the run, if any.
    pub latest: Option<FoundCheckpoint>,
    /// The candidates refused, each with why (incomplete or damaged, the file named).
    pub refused: Vec<Error>,
}

/// The checkpoint directories `Trainer::run` writes under `root` (`step-NNNNNN`), in step order;
/// empty when `root` does not exist. Temporary directories of interrupted saves are not among
/// them.
///
/// # Errors
/// [`Error::Io`] when `root` exists but cannot be read.
pub fn checkpoint_dirs(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        let is_step = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_step && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The complete, undamaged checkpoint furthest into the run among `candidates` (by the step
/// of the state it holds; the later candidate on a tie), and the candidates refused with why.
pub fn latest_checkpoint(candidates: &[PathBuf]) -> CheckpointScan {
    let mut scan = CheckpointScan::default();
    for dir in candidates {
        match verify_checkpoint(dir).and_then(|_| read_state(dir)) {
            Ok((state, _)) => {
                let further = scan
                    .latest
                    .as_ref()
                    .is_none_or(|found| state.step >= found.state.step);
                if further {
                    scan.latest = Some(FoundCheckpoint {
                        dir: dir.clone(),
                        state,
                    });
                }
            }
            Err(e) => scan.refused.push(e),
        }
    }
    scan
}

/// Checks a checkpoint against its manifest: every listed file present, of its size and hash.
///
/// # Errors
/// [`Error::Checkpoint`] naming the manifest when it is missing (the save did not finish) or
/// unreadable, or the first file that is missing, cut short or changed.
pub fn verify_checkpoint(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::checkpoint(
                &path,
                "missing: the checkpoint is incomplete (its save was interrupted) or was not \
                 written by mtrl",
            ));
        }
        Err(e) => return Err(Error::checkpoint(&path, e)),
    };
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, e))?;
    if manifest.format != FORMAT {
        return Err(Error::checkpoint(
            &path,
            format!("format {:?}, expected {FORMAT:?}", manifest.format),
        ));
    }
    for entry in &manifest.files {
        let relative = Path::new(&entry.path);
        let inside = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || entry.path.is_empty() {
            return Err(Error::checkpoint(
                &path,
                format!("lists {:?}, a path outside the checkpoint", entry.path),
            ));
        }
        let file = dir.join(relative);
        let bytes = match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(Error::checkpoint(&file, "not a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::checkpoint(
                    &file,
                    "the file is missing (listed in the manifest)",
                ));
            }
            Err(e) => return Err(Error::checkpoint(&file, e)),
        };
        if bytes != entry.bytes {
            return Err(Error::checkpoint(
                &file,
                format!(
                    "{bytes} bytes, the manifest says {} (cut short or changed)",
                    entry.bytes
                ),
            ));
        }
        if sha256(&file)? != entry.sha256 {
            return Err(Error::checkpoint(
                &file,
                "its SHA-256 differs from the manifest's: the file is damaged",
            ));
        }
    }
    Ok(manifest)
}

/// The run state and config a checkpoint holds, from its `state.json`, with the optimiser's
/// step count.
fn read_state(dir: &Path) -> Result<(TrainState, (TrainConfig, u64)), Error> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::checkpoint(&path, e))?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, e))?;
    let config: TrainConfig = serde_json::from_value(saved["config"].clone())
        .map_err(|e| Error::checkpoint(&path, format!("config: {e}")))?;
    let state: TrainState = serde_json::from_value(saved["state"].clone())
        .map_err(|e| Error::checkpoint(&path, format!("state: {e}")))?;
    let steps = saved["optimizer_steps"]
        .as_u64()
        .ok_or_else(|| Error::checkpoint(&path, "no optimizer_steps"))?;
    Ok((state, (config, steps)))
}

fn sha256(path: &Path) -> Result<String, Error> {
    let file = File::open(path).map_err(|e| Error::checkpoint(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::checkpoint(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Every file under `dir`, as `/`-separated paths relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let here = dir.join(&relative);
        for entry in std::fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            let entry = entry.map_err(|e| Error::io(&here, e))?;
            let kind = entry.file_type().map_err(|e| Error::io(&entry.path(), e))?;
            let name = relative.join(entry.file_name());
            if kind.is_dir() {
                stack.push(name);
            } else if kind.is_file() {
                let parts: Vec<String> = name
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Flushes a file or directory to the disk. Directories cannot be opened to sync everywhere;
/// where they cannot, only the files are synced.
fn sync(path: &Path) -> Result<(), Error> {
    match File::open(path) {
        Ok(f) => match f.sync_all() {
            Ok(()) => Ok(()),
            Err(_) if path.is_dir() => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        },
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes the checkpoint directory `dir` atomically: `write` fills a temporary directory
/// beside it, the manifest is added, everything is synced, and the directory is renamed into
/// place (replacing an earlier `dir`). A failure or a kill before the rename leaves `dir` as it
/// was; the temporary directory of a killed save is removed by the next save of `dir`.
pub(super) fn write_atomically(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::checkpoint(dir, "a checkpoint directory needs a UTF-8 name"))?
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    // Leftovers of earlier interrupted saves of this checkpoint.
    let stale = [format!(".{name}.tmp-"), format!(".{name}.old-")];
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let n = entry.file_name();
            if n.to_str()
                .is_some_and(|n| stale.iter().any(|s| n.starts_with(s.as_str())))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = write(&tmp).and_then(|()| seal(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{unique}"));
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    }
    sync(&parent)
}

/// Adds the manifest to a written checkpoint directory and syncs all of it.
fn seal(dir: &Path) -> Result<(), Error> {
    let mut files = Vec::new();
    for path in files_under(dir)? {
        let file = dir.join(&path);
        sync(&file)?;
        let bytes = std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len();
        files.push(ManifestEntry {
            sha256: sha256(&file)?,
            path,
            bytes,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        files,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::checkpoint(&path, e))?;
    let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    let mut dirs = vec![dir.to_path_buf()];
    for entry in &manifest.files {
        let mut d = dir.join(&entry.path);
        while d.pop() && d != dir {
            dirs.push(d.clone());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs.iter().rev() {
        sync(d)?;
    }
    Ok(())
}

impl<A: Agent, F: EnvironmentFactory> Trainer<A, F> {
    /// Saves the trainable weights (`trainable.safetensors`; plus `adapter/` in PEFT's layout
    /// when the model has LoRA), the optimiser (`optimizer.safetensors`), the run state with
    /// its config (`state.json`) and the [`Manifest`] (`manifest.json`) into `dir`, atomically:
    /// a kill or an error during the save leaves an earlier checkpoint at `dir` as it was.
    /// Refuses to save non-finite weights.
    ///
    /// # Errors
    /// [`Error::Weights`] for non-finite weights, [`Error::Io`], or a candle error.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), Error> {
        let mut weights = std::collections::HashMap::new();
        for (name, var) in &self.vars {
            let t = var.as_tensor();
            let sum = t
                .to_dtype(candle_core::DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?;
            if !sum.is_finite() {
                return Err(Error::Weights(format!(
                    "{name} is not finite; the checkpoint is not written"
                )));
            }
            weights.insert(name.clone(), t.clone());
        }
        let (moments, steps) = self.optimizer.state()?;
        let state = serde_json::json!({
            "state": self.state,
            "optimizer_steps": steps,
            "config": self.config,
        });
        write_atomically(dir, |tmp| {
            let trainable = tmp.join("trainable.safetensors");
            candle_core::safetensors::save(&weights, &trainable)
                .map_err(|e| Error::checkpoint(&trainable, crate::without_backtrace(e)))?;
            if let Some(lora) = self.model.lora() {
                lora.save_peft(&tmp.join("adapter"), "mtrl")?;
            }
            let optimizer = tmp.join("optimizer.safetensors");
            candle_core::safetensors::save(&moments, &optimizer)
                .map_err(|e| Error::checkpoint(&optimizer, crate::without_backtrace(e)))?;
            let path = tmp.join("state.json");
            let text =
                serde_json::to_string_pretty(&state).map_err(|e| Error::checkpoint(&path, e))?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
        })
    }

    /// Restores weights, optimiser and run state from a checkpoint of a run with the same
    /// model and config: the run then continues exactly as if uninterrupted. The checkpoint
    /// is first checked against its manifest ([`verify_checkpoint`]).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file for a checkpoint that is incomplete, a file that
    /// is missing, cut short, changed or not a checkpoint's, and for a checkpoint whose config
    /// differs from this trainer's; [`Error::Weights`] for missing or misshapen tensors.
    pub fn resume(&mut self, dir: &Path) -> Result<(), Error> {
        verify_checkpoint(dir)?;
        let (state, (config, steps)) = read_state(dir)?;
        if config != self.config {
            return Err(Error::checkpoint(
                &dir.join("state.json"),
                "the checkpoint was written with a different train config",
            ));
        }
        let device = self.model.device().clone();
        let tensors = |file: &str| {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(Error::checkpoint(&path, "the file is missing"));
            }
            candle_core::safetensors::load(&path, &device).map_err(|e| {
                Error::checkpoint(
                    &path,
                    format!(
                        "not a whole safetensors file (cut short?): {}",
                        crate::without_backtrace(e)
                    ),
                )
            })
        };
        let mut weights = tensors("trainable.safetensors")?;
        let moments = tensors("optimizer.safetensors")?;
        for (name, var) in &self.vars {
            let t = weights
                .remove(name)
                .ok_or_else(|| Error::Weights(format!("the checkpoint has no {name}")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(Error::Weights(format!(
                    "{name} has shape {:?} in the checkpoint, {:?} in the model",
                    t.dims(),
                    var.as_tensor().dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        self.optimizer.restore(moments, steps)?;
        self.model.weights_changed();
        self.state = state;
        Ok(())
    }
}
