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
/// The packing node's signature over the manifest (see `atmosphere_auth::Seal`).
pub const SEAL: &str = "seal.json";
pub const CONFIG: &str = "llamafarm.yaml";
/// Largest manifest accepted (a 64 GiB model has 16 384 chunk hashes: ~1.1 MiB of JSON).
pub const MAX_MANIFEST_BYTES: usize = 2 * 1024 * 1024;
/// Largest `llamafarm.yaml` travelling with a model.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

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
    #[error(
        "not enough disk space in {path}: the package needs {needed} more bytes, {free} are free; free some space and retry (what was received is kept for a resume)"
    )]
    DiskFull {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return PackageError::DiskFull {
                path: path.to_owned(),
                needed: 0,
                free: free_space(path).unwrap_or(0),
            };
        }
        PackageError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path` (or its nearest
/// existing ancestor).
pub fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = rustix::fs::statvfs(existing).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Fails with [`PackageError::DiskFull`] unless `needed` bytes fit under `dir`.
pub fn ensure_space(dir: &Path, needed: u64) -> Result<(), PackageError> {
    match free_space(dir) {
        Some(free) if free < needed => Err(PackageError::DiskFull {
            path: dir.to_owned(),
            needed,
            free,
        }),
        _ => Ok(()),
    }
}

/// Reads `path` in chunks of `chunk_size`, calling `each` with every chunk and its BLAKE3 (hex);
/// returns the chunk hashes, the whole hash and the size. Each byte is read and hashed once.
fn hash_stream(
    path: &Path,
    chunk_size: u64,
    mut each: impl FnMut(&[u8], &str) -> Result<(), PackageError>,
) -> Result<(Vec<String>, String, u64), PackageError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut buffer = vec![0u8; chunk_size as usize];
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
        let hash = blake3::hash(chunk).to_hex().to_string();
        each(chunk, &hash)?;
        chunks.push(hash);
        size += filled as u64;
        if filled < buffer.len() {
            break;
        }
    }
    Ok((chunks, whole.finalize().to_hex().to_string(), size))
}

/// Reads the manifest of `package` and checks its model file has the stated size.
fn sized(package: &Path) -> Result<Manifest, PackageError> {
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
    Ok(manifest)
}

/// Streams the model file of `package` once, checking every chunk against `manifest` before
/// handing it to `each`, then the whole hash and the config; returns the config's text.
fn stream_checked(
    package: &Path,
    manifest: &Manifest,
    mut each: impl FnMut(&[u8]) -> Result<(), PackageError>,
) -> Result<Option<Vec<u8>>, PackageError> {
    let model = package.join(&manifest.file);
    let mut index = 0usize;
    let (_, whole, _) = hash_stream(&model, manifest.chunk_size, |chunk, hash| {
        if manifest.chunks.get(index).map(String::as_str) != Some(hash) {
            let start = index as u64 * manifest.chunk_size;
            return Err(PackageError::Chunk {
                file: manifest.file.clone(),
                index,
                start,
                end: start + chunk.len() as u64,
            });
        }
        index += 1;
        each(chunk)
    })?;
    if whole != manifest.blake3 {
        return Err(PackageError::Whole(manifest.file.clone()));
    }
    match &manifest.config_blake3 {
        Some(expected) => {
            let text = read_capped(&package.join(CONFIG), MAX_CONFIG_BYTES)?;
            if blake3::hash(&text).to_hex().as_str() != expected {
                return Err(PackageError::Whole(CONFIG.into()));
            }
            Ok(Some(text))
        }
        None => Ok(None),
    }
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
    let (chunks, blake3, size) = hash_stream(model, CHUNK, |chunk, _| {
        copy.write_all(chunk).map_err(io(&target))
    })?;
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
    let bytes = read_capped(&path, MAX_MANIFEST_BYTES)?;
    Manifest::parse(&bytes).map_err(|reason| PackageError::NotAPackage(package.to_owned(), reason))
}

/// Reads a small file, refusing one larger than `cap`.
fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, PackageError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > cap as u64 {
        return Err(PackageError::NotAPackage(
            path.to_owned(),
            format!("{len} bytes; the limit is {cap}"),
        ));
    }
    std::fs::read(path).map_err(io(path))
}

impl Manifest {
    /// Decodes a manifest and checks that it is self-consistent: a plain file name, a chunk size
    /// that fits in memory, one well-formed hash per chunk of the stated size.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                bytes.len()
            ));
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let plain_name =
            |name: &str| !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.');
        if !plain_name(&manifest.file)
            || manifest.file == MANIFEST
            || manifest.file == SEAL
            || manifest.file == CONFIG
        {
            return Err(format!(
                "the model file name {:?} is not a plain file name",
                manifest.file
            ));
        }
        if !plain_name(&manifest.name) || manifest.name.len() > 128 {
            return Err(format!(
                "the model name {:?} is not a plain name",
                manifest.name
            ));
        }
        if manifest.chunk_size == 0 || manifest.chunk_size > 16 * 1024 * 1024 {
            return Err(format!(
                "chunk size {} is out of range",
                manifest.chunk_size
            ));
        }
        if manifest.chunks.len() as u64 != manifest.size.div_ceil(manifest.chunk_size).max(1) {
            return Err("the manifest's chunk list does not fit its size".into());
        }
        if !manifest.chunks.iter().all(|h| is_hash(h))
            || !is_hash(&manifest.blake3)
            || manifest
                .config_blake3
                .as_deref()
                .is_some_and(|h| !is_hash(h))
        {
            return Err("the manifest holds a malformed hash".into());
        }
        Ok(manifest)
    }

    /// Byte range of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> std::ops::Range<u64> {
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// Whether `bytes` are chunk `index`.
    pub fn chunk_matches(&self, index: usize, bytes: &[u8]) -> bool {
        let range = self.chunk_range(index);
        bytes.len() as u64 == range.end - range.start
            && self
                .chunks
                .get(index)
                .is_some_and(|h| blake3::hash(bytes).to_hex().as_str() == h)
    }
}

/// Reads chunk `index` of a package's model file (what a node sends a peer).
pub fn read_chunk(
    package: &Path,
    manifest: &Manifest,
    index: usize,
) -> Result<Vec<u8>, PackageError> {
    use std::os::unix::fs::FileExt;
    if index >= manifest.chunks.len() {
        return Err(PackageError::NotAPackage(
            package.to_owned(),
            format!(
                "no chunk {index}: the package has {}",
                manifest.chunks.len()
            ),
        ));
    }
    let path = package.join(&manifest.file);
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let range = manifest.chunk_range(index);
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut bytes, range.start)
        .map_err(io(&path))?;
    Ok(bytes)
}

/// A package being received chunk by chunk into a partial directory; survives interruption:
/// opening it again keeps every chunk already on disk that matches its hash.
#[derive(Debug)]
pub struct Receiving {
    dir: PathBuf,
    manifest: Manifest,
    file: std::fs::File,
    have: Vec<bool>,
}

impl Receiving {
    /// Opens (or resumes) the partial package `dir` for the manifest `manifest_bytes`, with the
    /// seal that travelled with it. A partial directory for another manifest is started afresh.
    pub fn open(dir: &Path, manifest_bytes: &[u8], seal: &[u8]) -> Result<Self, PackageError> {
        let manifest = Manifest::parse(manifest_bytes)
            .map_err(|reason| PackageError::NotAPackage(dir.to_owned(), reason))?;
        let manifest_path = dir.join(MANIFEST);
        let same = std::fs::read(&manifest_path).is_ok_and(|old| old == manifest_bytes);
        if !same {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(&manifest.file);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let existing = file.metadata().map_err(io(&path))?.len();
        let mut have = vec![false; manifest.chunks.len()];
        if same && existing > 0 {
            use std::os::unix::fs::FileExt;
            let mut buffer = vec![0u8; manifest.chunk_size as usize];
            for (index, slot) in have.iter_mut().enumerate() {
                let range = manifest.chunk_range(index);
                if range.end > existing {
                    break;
                }
                let bytes = &mut buffer[..(range.end - range.start) as usize];
                if file.read_exact_at(bytes, range.start).is_ok() {
                    *slot = manifest.chunk_matches(index, bytes);
                }
            }
        }
        let missing: u64 = (0..have.len())
            .filter(|i| !have[*i])
            .map(|i| {
                let range = manifest.chunk_range(i);
                range.end - range.start
            })
            .sum();
        ensure_space(dir, missing)?;
        if existing != manifest.size {
            file.set_len(manifest.size).map_err(io(&path))?;
        }
        if !same {
            std::fs::write(&manifest_path, manifest_bytes).map_err(io(&manifest_path))?;
        }
        let seal_path = dir.join(SEAL);
        std::fs::write(&seal_path, seal).map_err(io(&seal_path))?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            file,
            have,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Indices of the chunks still to fetch.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.have.len()).filter(|i| !self.have[*i]).collect()
    }

    /// Writes chunk `index` after checking it against its hash; refuses it otherwise.
    pub fn put(&mut self, index: usize, bytes: &[u8]) -> Result<(), PackageError> {
        use std::os::unix::fs::FileExt;
        if !self.manifest.chunk_matches(index, bytes) {
            let range = self.manifest.chunk_range(index);
            return Err(PackageError::Chunk {
                file: self.manifest.file.clone(),
                index,
                start: range.start,
                end: range.start + bytes.len() as u64,
            });
        }
        let path = self.dir.join(&self.manifest.file);
        self.file
            .write_all_at(bytes, self.manifest.chunk_range(index).start)
            .map_err(io(&path))?;
        self.have[index] = true;
        Ok(())
    }

    /// Writes the `llamafarm.yaml` that travels with the model, after checking its hash.
    pub fn put_config(&mut self, text: &[u8]) -> Result<(), PackageError> {
        let path = self.dir.join(CONFIG);
        match &self.manifest.config_blake3 {
            Some(hash) if blake3::hash(text).to_hex().as_str() == hash => {
                std::fs::write(&path, text).map_err(io(&path))
            }
            Some(_) => Err(PackageError::Whole(CONFIG.into())),
            None => Ok(()),
        }
    }

    /// Flushes to disk once every chunk is in; every chunk was checked as it arrived.
    pub fn finish(self) -> Result<Manifest, PackageError> {
        let missing = self.missing();
        if let Some(first) = missing.first() {
            return Err(PackageError::NotAPackage(
                self.dir.clone(),
                format!("{} chunks still missing (first: {first})", missing.len()),
            ));
        }
        if self.manifest.config_blake3.is_some() && !self.dir.join(CONFIG).is_file() {
            return Err(PackageError::NotAPackage(
                self.dir.clone(),
                format!("{CONFIG} is missing"),
            ));
        }
        let path = self.dir.join(&self.manifest.file);
        self.file.sync_all().map_err(io(&path))?;
        Ok(self.manifest)
    }
}

/// Copies the package `from` into the new directory `to`, checking every chunk against the
/// manifest as it goes (one read of the source), the config too; `progress` gets the bytes
/// copied so far. `to` appears only when the copy is complete and good.
pub fn copy_verified(
    from: &Path,
    to: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, PackageError> {
    let manifest = sized(from)?;
    ensure_space(to.parent().unwrap_or(to), manifest.size)?;
    let partial = to.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let result = (|| {
        let target = partial.join(&manifest.file);
        let mut out = std::fs::File::create(&target).map_err(io(&target))?;
        let mut copied = 0u64;
        let config = stream_checked(from, &manifest, |chunk| {
            out.write_all(chunk).map_err(io(&target))?;
            copied += chunk.len() as u64;
            progress(copied);
            Ok(())
        })?;
        out.sync_all().map_err(io(&target))?;
        if let Some(text) = config {
            let path = partial.join(CONFIG);
            std::fs::write(&path, &text).map_err(io(&path))?;
        }
        for name in [MANIFEST, SEAL] {
            let source = from.join(name);
            if source.is_file() {
                let text = read_capped(&source, MAX_MANIFEST_BYTES)?;
                let path = partial.join(name);
                std::fs::write(&path, text).map_err(io(&path))?;
            }
        }
        let _ = std::fs::remove_dir_all(to);
        std::fs::rename(&partial, to).map_err(io(to))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result.map(|()| manifest)
}

/// Checks every chunk, the whole file and the config against the manifest.
pub fn verify(package: &Path) -> Result<Manifest, PackageError> {
    let manifest = sized(package)?;
    stream_checked(package, &manifest, |_| Ok(()))?;
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

    #[test]
    fn receiving_checks_each_chunk_and_resumes_with_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let size = CHUNK as usize * 3 + 99;
        let source = model(dir.path(), size);
        let config = dir.path().join("llamafarm.yaml");
        std::fs::write(&config, "name: home\n").unwrap();
        let package = dir.path().join("pkg");
        let manifest = pack(&source, Some(&config), "tiny", &package).unwrap();
        let manifest_bytes = std::fs::read(package.join(MANIFEST)).unwrap();
        let incoming = dir.path().join("incoming");

        let mut receiving = Receiving::open(&incoming, &manifest_bytes, b"{}").unwrap();
        assert_eq!(receiving.missing(), vec![0, 1, 2, 3]);
        let mut chunk = read_chunk(&package, &manifest, 2).unwrap();
        receiving.put(2, &chunk).unwrap();
        chunk[5] ^= 1;
        assert!(matches!(
            receiving.put(1, &chunk),
            Err(PackageError::Chunk { index: 1, .. })
        ));
        receiving
            .put(0, &read_chunk(&package, &manifest, 0).unwrap())
            .unwrap();
        drop(receiving); // interrupted

        let mut resumed = Receiving::open(&incoming, &manifest_bytes, b"{}").unwrap();
        assert_eq!(resumed.missing(), vec![1, 3]);
        for index in resumed.missing() {
            resumed
                .put(index, &read_chunk(&package, &manifest, index).unwrap())
                .unwrap();
        }
        assert!(matches!(
            resumed.put_config(b"name: evil\n"),
            Err(PackageError::Whole(_))
        ));
        resumed.put_config(b"name: home\n").unwrap();
        resumed.finish().unwrap();
        assert_eq!(verify(&incoming).unwrap(), manifest);
        assert!(read_chunk(&package, &manifest, 4).is_err());

        // A manifest for another model starts afresh.
        let other = pack(&source, None, "other", &dir.path().join("other")).unwrap();
        let other_bytes = serde_json::to_vec(&other).unwrap();
        let fresh = Receiving::open(&incoming, &other_bytes, b"{}").unwrap();
        assert_eq!(fresh.missing().len(), 4);
        assert!(Receiving::open(&incoming, b"{\"name\": 1}", b"{}").is_err());
    }

    #[test]
    fn copy_verified_copies_good_packages_and_leaves_nothing_of_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let source = model(dir.path(), CHUNK as usize + 5);
        let package = dir.path().join("pkg");
        let manifest = pack(&source, None, "tiny", &package).unwrap();
        std::fs::write(package.join(SEAL), b"{}").unwrap();
        let usb = dir.path().join("usb");
        let mut seen = 0;
        assert_eq!(
            copy_verified(&package, &usb, |n| seen = n).unwrap(),
            manifest
        );
        assert_eq!(seen, manifest.size);
        assert!(usb.join(SEAL).is_file());
        verify(&usb).unwrap();

        let copy = package.join("tiny.gguf");
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[CHUNK as usize + 1] ^= 2;
        std::fs::write(&copy, &bytes).unwrap();
        let again = dir.path().join("again");
        assert!(matches!(
            copy_verified(&package, &again, |_| {}),
            Err(PackageError::Chunk { index: 1, .. })
        ));
        assert!(!again.exists() && !dir.path().join("again.partial").exists());
    }

    #[test]
    fn manifests_that_lie_or_escape_are_refused() {
        let good = Manifest {
            name: "tiny".into(),
            format: "gguf".into(),
            file: "tiny.gguf".into(),
            size: 10,
            chunk_size: CHUNK,
            chunks: vec!["a".repeat(64)],
            blake3: "b".repeat(64),
            config_blake3: None,
        };
        let parse = |m: &Manifest| Manifest::parse(&serde_json::to_vec(m).unwrap());
        assert!(parse(&good).is_ok());
        for bad in [
            Manifest {
                file: "../etc/passwd".into(),
                ..good.clone()
            },
            Manifest {
                file: MANIFEST.into(),
                ..good.clone()
            },
            Manifest {
                name: "a/b".into(),
                ..good.clone()
            },
            Manifest {
                size: CHUNK * 5,
                ..good.clone()
            },
            Manifest {
                chunk_size: 0,
                ..good.clone()
            },
            Manifest {
                chunks: vec!["zz".into()],
                ..good.clone()
            },
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
