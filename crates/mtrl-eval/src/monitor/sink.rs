//! Where step metrics go: [`MetricsSink`], and the JSON Lines file sink.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::step::StepMetrics;
use crate::Error;

/// Receives one [`StepMetrics`] per training step.
pub trait MetricsSink: Send {
    /// Records a step.
    ///
    /// # Errors
    /// When the record cannot be written.
    fn write(&mut self, metrics: &StepMetrics) -> Result<(), Error>;
}

/// Keeps the records in memory (for tests and reports).
impl MetricsSink for Vec<StepMetrics> {
    fn write(&mut self, metrics: &StepMetrics) -> Result<(), Error> {
        self.push(metrics.clone());
        Ok(())
    }
}

/// Writes each step as one JSON line, flushed at once, so a crashed run keeps every step it
/// finished.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl JsonlSink {
    /// Creates (or truncates) the file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be created.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            writer: BufWriter::new(file),
        })
    }

    /// Opens the file at `path` to append to it (to resume a run).
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be opened.
    pub fn append(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            writer: BufWriter::new(file),
        })
    }

    /// Reopens the metrics file of a run resumed from a checkpoint at step `step`, to append
    /// to it: the records of later steps (written after the checkpoint, by the run that was
    /// killed) are removed first, with a last line cut short by the kill, so that the resumed
    /// run's records follow on without a step appearing twice. The kept lines stay byte for
    /// byte; the file is replaced atomically. Returns the sink and how many records it removed.
    ///
    /// # Errors
    /// [`Error::Metrics`] naming the line when a complete line is not a record, and
    /// [`Error::Io`] when the file cannot be read or replaced.
    pub fn resume(path: impl AsRef<Path>, step: u64) -> Result<(Self, usize), Error> {
        let path = path.as_ref().to_path_buf();
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut kept = Vec::with_capacity(text.len());
        let mut removed = 0usize;
        let complete = text.len() - text.iter().rev().take_while(|b| **b != b'\n').count();
        if complete < text.len() {
            removed += 1;
        }
        for (i, line) in text[..complete]
            .split_inclusive(|b| *b == b'\n')
            .enumerate()
        {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: StepMetrics = serde_json::from_slice(body).map_err(|e| Error::Metrics {
                path: path.clone(),
                reason: format!("line {}: {e}", i + 1),
            })?;
            if record.step <= step {
                kept.extend_from_slice(line);
            } else {
                removed += 1;
            }
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.resume-{}", std::process::id()));
        let replaced = File::create(&tmp)
            .and_then(|mut f| f.write_all(&kept).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = replaced {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        Ok((Self::append(&path)?, removed))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricsSink for JsonlSink {
    fn write(&mut self, metrics: &StepMetrics) -> Result<(), Error> {
        let line = serde_json::to_string(metrics).map_err(mtrl_core::Error::from)?;
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .and_then(|()| self.writer.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads a metrics file written by [`JsonlSink`]: its records, checked to make one run (see
/// [`read_metrics_log`]).
///
/// # Errors
/// As [`read_metrics_log`].
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<StepMetrics>, Error> {
    read_metrics_log(path).map(|log| log.steps)
}

/// A metrics file read whole: the run's records and the resumptions it shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsLog {
    /// The records, in file order: a step may have several (its rollout and update metrics,
    /// then its validation), each with its own metrics. Where a run was resumed, the records
    /// it replaced are gone.
    pub steps: Vec<StepMetrics>,
    /// Where the file's steps go back: a run resumed from a checkpoint (with
    /// [`JsonlSink::append`]) records again the steps after its checkpoint.
    pub resumptions: Vec<Resumption>,
}

/// A run resumed from a checkpoint, as its metrics file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    /// The file line (1-based) where the resumed run's records begin.
    pub line: usize,
    /// The first step the resumed run recorded.
    pub step: u64,
    /// How many records of the earlier attempt (of step `step` and later) it replaced.
    pub replaced: usize,
}

impl std::fmt::Display for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resumed at step {} (line {}): the resumed run's records replace {} earlier record(s)",
            self.step, self.line, self.replaced
        )
    }
}

/// The metric names a record reports (the turns histogram included).
fn reported(m: &StepMetrics) -> impl Iterator<Item = &str> {
    let hist = (!m.turns.is_empty()).then_some("rollout/turns/hist");
    m.values.keys().map(String::as_str).chain(hist)
}

/// Reads a metrics file, checking that its records make one run. Steps never go back, and a
/// step's several records report different metrics. A record that breaks this starts a
/// resumed run, whose records replace the earlier attempt's from its step on
/// ([`MetricsLog::resumptions`] says where) — unless it repeats an earlier record exactly,
/// which a rerun step never does (it has its own timings): that is a copied line, an error.
/// An empty file is an empty log.
///
/// # Errors
/// [`Error::Metrics`] naming the file and the line: a file that cannot be read, a line that is
/// not UTF-8 or not a step record, or a copied record.
pub fn read_metrics_log(path: impl AsRef<Path>) -> Result<MetricsLog, Error> {
    let path = path.as_ref();
    let bad = |reason: String| Error::Metrics {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let records: Vec<(usize, StepMetrics)> =
        mtrl_core::read_jsonl_lines(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let mut log = MetricsLog::default();
    let mut lines: Vec<usize> = Vec::new();
    for (line, record) in records {
        let goes_back = match log.steps.last() {
            None => false,
            Some(last) if record.step > last.step => false,
            Some(last) if record.step < last.step => true,
            // The same step again: another part of it, unless it reports a metric again.
            Some(_) => {
                let same_step = log.steps.iter().rev().take_while(|m| m.step == record.step);
                let names: std::collections::BTreeSet<&str> =
                    same_step.flat_map(reported).collect();
                reported(&record).any(|n| names.contains(n))
            }
        };
        if goes_back {
            if let Some(i) = log.steps.iter().position(|m| *m == record) {
                return Err(bad(format!(
                    "line {line} repeats line {} (step {}) exactly: a copied record, not a \
                     resumed run",
                    lines[i], record.step
                )));
            }
            let cut = log.steps.partition_point(|m| m.step < record.step);
            log.resumptions.push(Resumption {
                line,
                step: record.step,
                replaced: log.steps.len() - cut,
            });
            log.steps.truncate(cut);
            lines.truncate(cut);
        }
        log.steps.push(record);
        lines.push(line);
    }
    Ok(log)
}
