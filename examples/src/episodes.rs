//! Held-out episodes on disk, as the quickstart and `mtrl train`/`mtrl eval` keep them, and
//! the checkpoint a resumed run continues from.

use std::path::Path;

use mtrl_core::Trajectory;
use mtrl_eval::EvalRecord;
use mtrl_train::rl::{FoundCheckpoint, checkpoint_dirs, latest_checkpoint};

/// Writes `dir/<name>.trajectories.jsonl` (the episodes) and `dir/<name>.jsonl` (their
/// evaluation records), creating `dir`.
///
/// # Errors
/// An I/O or serialisation error.
pub fn write(
    dir: &Path,
    name: &str,
    trajectories: &[Trajectory],
    records: &[EvalRecord],
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::create(dir.join(format!("{name}.trajectories.jsonl")))?;
    mtrl_core::write_jsonl(std::io::BufWriter::new(file), trajectories)?;
    let file = std::fs::File::create(dir.join(format!("{name}.jsonl")))?;
    mtrl_core::write_jsonl(std::io::BufWriter::new(file), records)?;
    Ok(())
}

/// Reads back the evaluation records [`write()`] kept as `dir/<name>.jsonl` (a resumed run's
/// earlier evaluations).
///
/// # Errors
/// The file named, when it cannot be opened or a line is not a record.
pub fn read(dir: &Path, name: &str) -> Result<Vec<EvalRecord>, Box<dyn std::error::Error>> {
    let path = dir.join(format!("{name}.jsonl"));
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("{}: {e} (kept by the run being resumed)", path.display()))?;
    Ok(mtrl_core::read_jsonl(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?)
}

/// The furthest complete checkpoint of the run whose outputs are in `out`: among
/// `out/checkpoints/step-*` and the final `out/checkpoint`. Each one refused (incomplete or
/// damaged, the file named) is told to `say`.
///
/// # Errors
/// When none is complete, or `out/checkpoints` cannot be read.
pub fn resumable(
    out: &Path,
    say: impl Fn(&str),
) -> Result<FoundCheckpoint, Box<dyn std::error::Error>> {
    let mut candidates = checkpoint_dirs(&out.join("checkpoints"))?;
    let last = out.join("checkpoint");
    if last.is_dir() {
        candidates.push(last);
    }
    let scan = latest_checkpoint(&candidates);
    for refused in &scan.refused {
        say(&format!("skipping a checkpoint: {refused}"));
    }
    scan.latest.ok_or_else(|| {
        format!(
            "no complete checkpoint under {} to resume from ({} refused); start the run again \
             with --force",
            out.display(),
            scan.refused.len()
        )
        .into()
    })
}

/// 1 for each record whose strict evaluation succeeded, else 0.
pub fn successes(records: &[EvalRecord]) -> Vec<f64> {
    records
        .iter()
        .map(|r| f64::from(u8::from(r.evaluation.success)))
        .collect()
}
