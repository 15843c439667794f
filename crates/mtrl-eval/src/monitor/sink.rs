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

/// Reads a metrics file written by [`JsonlSink`].
///
/// # Errors
/// [`Error::Io`] when it cannot be read, and a JSON Lines error naming the bad line.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<StepMetrics>, Error> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(mtrl_core::read_jsonl(BufReader::new(file))?)
}
