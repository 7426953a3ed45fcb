//! Model packages: a directory holding the model file, its `llamafarm.yaml` when it has one, and
//! a `manifest.json` — name, format, size, and the BLAKE3 of every fixed-size chunk and of the
//! whole. Packing streams (the model is never held in memory); verifying re-reads every chunk and
//! refuses a flipped byte, a truncated file or a manifest that lies about sizes, naming what is
//! wrong. A package directory is what travels — over the mesh, or on a USB stick.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes per hashed chunk.
pub const CHUNK: u64 = 4 * 1024 * 1024;
pub const MANIFEST: &str = "manifest.json";
const CONFIG: &str = "llamafarm.yaml";

/// What a package holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name (e.g. from its GGUF header).
    pub name: String,
    /// `gguf`, …
    pub format: String,
    /// The model file's name inside the package.
    pub file: String,
    pub size: u64,
    pub chunk_size: u64,
    /// BLAKE3 of each chunk, hex.
    pub chunks: Vec<String>,
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
    /// Whether a `llamafarm.yaml` travels with it, and its BLAKE3.
    #[serde(default)]
    pub config_blake3: Option<String>,
}

/// Why packing or verifying failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a package: {1}")]
    NotAPackage(PathBuf, String),
    #[error("{file} is {actual} bytes, the manifest says {expected}")]
    Size {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: chunk {index} (bytes {start}..{end}) does not match its hash")]
    Chunk {
        file: String,
        index: usize,
        start: u64,
        end: u64,
    },
    #[error("{0} does not match its hash")]
    Whole(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads `path` in chunks, calling `each` with every chunk; returns the chunk hashes, the whole
/// hash and the size.
fn hash_stream(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), PackageError>,
) -> Result<(Vec<String>, String, u64), PackageError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut buffer = vec![0u8; CHUNK as usize];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let n = file.read(&mut buffer[filled..]).map_err(io(path))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let chunk = &buffer[..filled];
        whole.update(chunk);
        chunks.push(blake3::hash(chunk).to_hex().to_string());
        each(chunk)?;
        size += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    Ok((chunks, whole.finalize().to_hex().to_string(), size))
}

/// Packs `model` (and `config`, when given) into the new directory `out`.
pub fn pack(
    model: &Path,
    config: Option<&Path>,
    name: &str,
    out: &Path,
) -> Result<Manifest, PackageError> {
    let file_name = model
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PackageError::NotAPackage(model.to_owned(), "no file name".into()))?
        .to_owned();
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let target = partial.join(&file_name);
    let mut copy = std::fs::File::create(&target).map_err(io(&target))?;
    let (chunks, blake3, size) =
        hash_stream(model, |chunk| copy.write_all(chunk).map_err(io(&target)))?;
    copy.sync_all().map_err(io(&target))?;
    let config_blake3 = match config {
        Some(config) => {
            let text = std::fs::read(config).map_err(io(config))?;
            let to = partial.join(CONFIG);
            std::fs::write(&to, &text).map_err(io(&to))?;
            Some(blake3::hash(&text).to_hex().to_string())
        }
        None => None,
    };
    let manifest = Manifest {
        name: name.to_owned(),
        format: model
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("bin")
            .to_ascii_lowercase(),
        file: file_name,
        size,
        chunk_size: CHUNK,
        chunks,
        blake3,
        config_blake3,
    };
    let manifest_path = partial.join(MANIFEST);
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| PackageError::NotAPackage(out.to_owned(), e.to_string()))?;
    std::fs::write(&manifest_path, bytes).map_err(io(&manifest_path))?;
    // Only a complete package ever carries the final name.
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(manifest)
}

/// Reads a package's manifest.
pub fn read_manifest(package: &Path) -> Result<Manifest, PackageError> {
    let path = package.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| PackageError::NotAPackage(package.to_owned(), e.to_string()))?;
    let plausible = manifest.chunk_size > 0
        && !manifest.file.contains('/')
        && !manifest.file.contains("..")
        && manifest.chunks.len() as u64 == manifest.size.div_ceil(manifest.chunk_size).max(1);
    if !plausible {
        return Err(PackageError::NotAPackage(
            package.to_owned(),
            "the manifest's chunk list does not fit its size".into(),
        ));
    }
    Ok(manifest)
}

/// Checks every chunk, the whole file and the config against the manifest.
pub fn verify(package: &Path) -> Result<Manifest, PackageError> {
    let manifest = read_manifest(package)?;
    let model = package.join(&manifest.file);
    let actual = std::fs::metadata(&model).map_err(io(&model))?.len();
    if actual != manifest.size {
        return Err(PackageError::Size {
            file: manifest.file.clone(),
            expected: manifest.size,
            actual,
        });
    }
    let mut index = 0usize;
    let (_, whole, _) = hash_stream(&model, |chunk| {
        let expected = manifest.chunks.get(index).map(String::as_str);
        if expected != Some(blake3::hash(chunk).to_hex().as_str()) {
            let start = index as u64 * manifest.chunk_size;
            return Err(PackageError::Chunk {
                file: manifest.file.clone(),
                index,
                start,
                end: start + chunk.len() as u64,
            });
        }
        index += 1;
        Ok(())
    })?;
    if whole != manifest.blake3 {
        return Err(PackageError::Whole(manifest.file.clone()));
    }
    if let Some(expected) = &manifest.config_blake3 {
        let path = package.join(CONFIG);
        let text = std::fs::read(&path).map_err(io(&path))?;
        if blake3::hash(&text).to_hex().as_str() != expected {
            return Err(PackageError::Whole(CONFIG.into()));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, size: usize) -> PathBuf {
        let path = dir.join("tiny.gguf");
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_packed_model_verifies_and_every_kind_of_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let size = CHUNK as usize * 2 + 1234;
        let source = model(dir.path(), size);
        let config = dir.path().join("llamafarm.yaml");
        std::fs::write(&config, "name: home\n").unwrap();
        let package = dir.path().join("pkg");
        let manifest = pack(&source, Some(&config), "tiny", &package).unwrap();
        assert_eq!((manifest.size, manifest.chunks.len()), (size as u64, 3));
        assert_eq!(verify(&package).unwrap(), manifest);
        assert!(!dir.path().join("pkg.partial").exists());

        // A flipped byte in the second chunk.
        let copy = package.join("tiny.gguf");
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[CHUNK as usize + 7] ^= 0x40;
        std::fs::write(&copy, &bytes).unwrap();
        let err = verify(&package).unwrap_err();
        assert!(matches!(err, PackageError::Chunk { index: 1, .. }), "{err}");
        // Truncated.
        std::fs::write(&copy, &bytes[..size - 10]).unwrap();
        assert!(matches!(
            verify(&package).unwrap_err(),
            PackageError::Size { .. }
        ));
        // A manifest that lies about the size.
        pack(&source, None, "tiny", &package).unwrap();
        let mut lying = read_manifest(&package).unwrap();
        lying.size += 1;
        std::fs::write(package.join(MANIFEST), serde_json::to_vec(&lying).unwrap()).unwrap();
        assert!(verify(&package).is_err());
        // An edited config.
        pack(&source, Some(&config), "tiny", &package).unwrap();
        std::fs::write(package.join("llamafarm.yaml"), "name: evil\n").unwrap();
        assert!(matches!(
            verify(&package).unwrap_err(),
            PackageError::Whole(_)
        ));
        // Not a package at all.
        assert!(verify(dir.path()).is_err());
    }
}
