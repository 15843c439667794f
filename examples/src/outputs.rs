//! Where commands write. A command checks everything it was given before it writes anything,
//! and never replaces an earlier run's outputs unless it is told to (`--force`): a command that
//! fails, or is run again by mistake, leaves what it found as it was.

use std::path::{Path, PathBuf};

/// Why a command may not write where it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory holds an earlier run's outputs.
    #[error(
        "{} holds the outputs of an earlier run ({found}); pass --force to replace them, or choose a fresh directory",
        path.display()
    )]
    DirTaken {
        /// The directory.
        path: PathBuf,
        /// Some of what it holds.
        found: String,
    },
    /// The file exists already.
    #[error(
        "{} exists already; pass --force to replace it, or choose another file",
        path.display()
    )]
    FileTaken {
        /// The file.
        path: PathBuf,
    },
    /// The path is a file where a directory is needed, or the other way round.
    #[error("{} is not a {expected}", path.display())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// `directory` or `file`.
        expected: &'static str,
    },
    /// The directory cannot be read or cleared.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks that a run may write into `dir`: it does not exist, is empty, or `force` is set.
/// Writes nothing.
///
/// # Errors
/// [`OutputError::DirTaken`] for a directory that holds anything, without `force`.
pub fn check_dir(dir: &Path, force: bool) -> Result<(), OutputError> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(OutputError::WrongKind {
            path: dir.to_path_buf(),
            expected: "directory",
        });
    }
    let io = |source| OutputError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    if names.is_empty() || force {
        return Ok(());
    }
    names.sort();
    let more = names.len().saturating_sub(3);
    names.truncate(3);
    let mut found = names.join(", ");
    if more > 0 {
        found.push_str(&format!(" and {more} more"));
    }
    Err(OutputError::DirTaken {
        path: dir.to_path_buf(),
        found,
    })
}

/// Checks that a command may write the file `path`: it does not exist, or `force` is set.
///
/// # Errors
/// [`OutputError::FileTaken`] without `force`; [`OutputError::WrongKind`] for a directory.
pub fn check_file(path: &Path, force: bool) -> Result<(), OutputError> {
    if path.is_dir() {
        return Err(OutputError::WrongKind {
            path: path.to_path_buf(),
            expected: "file",
        });
    }
    if path.exists() && !force {
        return Err(OutputError::FileTaken {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Removes the entries `names` of `dir` that exist: the earlier run's outputs that a forced run
/// replaces, so that none of them is left to mix with the new run's. Call it only once the new
/// run has passed its checks.
///
/// # Errors
/// [`OutputError::Io`] when an entry cannot be removed.
pub fn clear(dir: &Path, names: &[&str]) -> Result<(), OutputError> {
    for name in names {
        let path = dir.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            Ok(())
        };
        removed.map_err(|source| OutputError::Io { path, source })?;
    }
    Ok(())
}
