//! Held-out episodes on disk, as the quickstart and `mtrl train`/`mtrl eval` keep them.

use std::path::Path;

use mtrl_core::Trajectory;
use mtrl_eval::EvalRecord;

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

/// 1 for each record whose strict evaluation succeeded, else 0.
pub fn successes(records: &[EvalRecord]) -> Vec<f64> {
    records
        .iter()
        .map(|r| f64::from(u8::from(r.evaluation.success)))
        .collect()
}
