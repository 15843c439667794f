//! JSON Lines: one value per line, for trajectories and any other record.
//!
//! Writing then reading gives back equal values, and writing those again gives the same bytes:
//! tool-call arguments keep their raw text, maps keep sorted keys, timings are integers and
//! floats round-trip exactly.

use std::io::{BufRead, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Writes each item as one line of JSON.
///
/// # Errors
/// [`Error::Json`] when an item cannot be encoded, [`Error::Io`] when writing fails.
pub fn write_jsonl<'a, T, W>(mut writer: W, items: impl IntoIterator<Item = &'a T>) -> Result<()>
where
    T: Serialize + 'a,
    W: Write,
{
    for item in items {
        serde_json::to_writer(&mut writer, item)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads one item per line; blank lines are skipped.
///
/// # Errors
/// [`Error::Jsonl`] or [`Error::JsonlText`] with the 1-based number of the first bad line,
/// [`Error::Io`] when reading fails.
pub fn read_jsonl<T, R>(reader: R) -> Result<Vec<T>>
where
    T: DeserializeOwned,
    R: BufRead,
{
    Ok(read_jsonl_lines(reader)?
        .into_iter()
        .map(|(_, item)| item)
        .collect())
}

/// As [`read_jsonl`], each item with the 1-based number of its line.
///
/// # Errors
/// As [`read_jsonl`].
pub fn read_jsonl_lines<T, R>(reader: R) -> Result<Vec<(usize, T)>>
where
    T: DeserializeOwned,
    R: BufRead,
{
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8(line).map_err(|_| Error::JsonlText { line: i + 1 })?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).map_err(|source| Error::Jsonl {
            line: i + 1,
            source,
        })?;
        out.push((i + 1, item));
    }
    Ok(out)
}

/// Encodes items as a JSON Lines string.
///
/// # Errors
/// [`Error::Json`] when an item cannot be encoded.
pub fn to_jsonl_string<'a, T>(items: impl IntoIterator<Item = &'a T>) -> Result<String>
where
    T: Serialize + 'a,
{
    let mut buf = Vec::new();
    write_jsonl(&mut buf, items)?;
    String::from_utf8(buf).map_err(Error::other)
}

/// Decodes a JSON Lines string.
///
/// # Errors
/// As [`read_jsonl`].
pub fn from_jsonl_str<T: DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    read_jsonl(text.as_bytes())
}
