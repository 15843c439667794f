//! Where SOP-Bench files come from: a local directory in upstream's layout, or the hub dataset.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The hub dataset mtrl reads by default.
pub const HUB_DATASET: &str = "amazon/sop-bench";

/// The environment variable that points at a local copy (`<dir>/<domain>/sop.txt`, …).
pub const DIR_ENV: &str = "MTRL_SOP_BENCH_DIR";

/// Where to read SOP-Bench from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory with one folder per domain, as upstream lays them out.
    Dir(PathBuf),
    /// A hub dataset whose files are under `data/<domain>/`.
    Hub(HubSource),
}

/// A hub dataset, with the usual cache and offline mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSource {
    /// The dataset id.
    pub repo: String,
    /// The revision (branch, tag or commit); `main` when unset.
    pub revision: Option<String>,
    /// The cache directory; hf-hub's default (`$HF_HOME/hub`) when unset.
    pub cache_dir: Option<PathBuf>,
    /// Read only from the cache, never from the network.
    pub offline: bool,
}

impl Default for HubSource {
    /// The default dataset, offline when `HF_HUB_OFFLINE` is `1` or `true`.
    fn default() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True" | "yes"))
            .unwrap_or(false);
        Self {
            repo: HUB_DATASET.to_string(),
            revision: None,
            cache_dir: None,
            offline,
        }
    }
}

impl Source {
    /// `MTRL_SOP_BENCH_DIR` when set, else the default hub dataset.
    pub fn from_env() -> Self {
        match std::env::var_os(DIR_ENV) {
            Some(dir) if !dir.is_empty() => Source::Dir(PathBuf::from(dir)),
            _ => Source::Hub(HubSource::default()),
        }
    }

    /// A local file for `domain/file`: `Ok(None)` when the source does not have it.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Source`] when the source cannot be read (a hub that cannot be
    /// reached, a cache without the file in offline mode is `Ok(None)`).
    pub fn file(&self, domain: &str, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Source::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Source(format!(
                        "the SOP-Bench directory {} does not exist",
                        dir.display()
                    )));
                }
                let folder = dir.join(domain);
                if !folder.is_dir() {
                    return Err(Error::Source(format!(
                        "{} has no folder for the domain `{domain}`",
                        dir.display()
                    )));
                }
                let path = folder.join(file);
                Ok(path.is_file().then_some(path))
            }
            Source::Hub(hub) => hub.file(&format!("data/{domain}/{file}")),
        }
    }

    /// The domain folders this source has (for a directory; the hub lists the known domains).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be listed.
    pub fn domains(&self) -> Result<Vec<String>> {
        match self {
            Source::Dir(dir) => {
                let mut out = Vec::new();
                let entries = std::fs::read_dir(dir).map_err(|e| {
                    Error::Source(format!(
                        "the SOP-Bench directory {} cannot be listed: {e}",
                        dir.display()
                    ))
                })?;
                for entry in entries {
                    let path = entry?.path();
                    if is_domain_dir(&path) {
                        out.push(
                            path.file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned(),
                        );
                    }
                }
                out.sort();
                Ok(out)
            }
            Source::Hub(_) => Ok(super::DOMAINS.iter().map(|d| d.to_string()).collect()),
        }
    }

    /// Reads `domain/file` as text, `Ok(None)` when absent.
    ///
    /// # Errors
    /// As [`Source::file`], and [`Error::Io`] when reading fails.
    pub fn read(&self, domain: &str, file: &str) -> Result<Option<String>> {
        match self.file(domain, file)? {
            Some(path) => Ok(Some(std::fs::read_to_string(&path)?)),
            None => Ok(None),
        }
    }
}

impl HubSource {
    fn repo(&self) -> Repo {
        match &self.revision {
            Some(rev) => Repo::with_revision(self.repo.clone(), RepoType::Dataset, rev.clone()),
            None => Repo::new(self.repo.clone(), RepoType::Dataset),
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }

    fn file(&self, path: &str) -> Result<Option<PathBuf>> {
        if let Some(cached) = self.cache().repo(self.repo()).get(path) {
            return Ok(Some(cached));
        }
        if self.offline {
            return Ok(None);
        }
        let api = ApiBuilder::from_cache(self.cache())
            .with_progress(false)
            .build()
            .map_err(|e| Error::Source(format!("hub client: {e}")))?;
        match api.repo(self.repo()).get(path) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::Source(format!(
                "could not fetch {path} from the hub dataset {}: {e} (set {DIR_ENV} to a local copy, \
                 or HF_HUB_OFFLINE=1 to use the cache only)",
                self.repo
            ))),
        }
    }
}

fn is_not_found(e: &impl std::fmt::Display) -> bool {
    let text = e.to_string();
    text.contains("404") || text.contains("Not Found")
}

/// Whether a path looks like a domain folder in upstream's layout.
pub(crate) fn is_domain_dir(path: &Path) -> bool {
    path.join("metadata.json").is_file()
}
