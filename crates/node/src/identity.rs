//! The node's identity: an Ed25519 secret key made on first start and kept in the data dir with
//! 0600 permissions. Its public half is the node id and the QUIC endpoint id.

use std::io::Write;
use std::path::{Path, PathBuf};

use iroh::SecretKey;

pub const KEY_FILE: &str = "node.key";

/// Why the identity cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a node key (expected 64 hex digits); move it away to make a new identity"
    )]
    Corrupt { path: PathBuf },
    #[error("{path} is readable by other users (mode {mode:o}); fix with: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
}

/// Loads the key from `data_dir`, or makes and stores a new one. Returns it and whether it is new.
pub fn load_or_create(data_dir: &Path) -> Result<(SecretKey, bool), IdentityError> {
    let (bytes, created) = load_or_create_key(data_dir, KEY_FILE)?;
    Ok((SecretKey::from_bytes(&bytes), created))
}

/// Loads a 32-byte secret kept as hex in `data_dir/file` (0600), if it exists.
pub fn load_key(data_dir: &Path, file: &str) -> Result<Option<[u8; 32]>, IdentityError> {
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            check_permissions(&path)?;
            parse_hex32(text.trim())
                .map(Some)
                .ok_or(IdentityError::Corrupt { path })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Stores a new 32-byte secret in `data_dir/file` with mode 0600, atomically; refuses to
/// overwrite one that exists.
pub fn store_key(data_dir: &Path, file: &str, bytes: &[u8; 32]) -> Result<(), IdentityError> {
    let path = data_dir.join(file);
    let io = |action, source| IdentityError::Io {
        action,
        path: path.clone(),
        source,
    };
    if path.exists() {
        return Err(io(
            "overwrite",
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a key is already there"),
        ));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io("create directory for", e))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = data_dir.join(format!(".{file}.tmp"));
    let mut file = private_file(&tmp).map_err(|e| io("create", e))?;
    file.write_all(hex.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("store", e))
}

fn load_or_create_key(data_dir: &Path, file: &str) -> Result<([u8; 32], bool), IdentityError> {
    if let Some(bytes) = load_key(data_dir, file)? {
        return Ok((bytes, false));
    }
    let key = SecretKey::generate().to_bytes();
    store_key(data_dir, file, &key)?;
    Ok((key, true))
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| IdentityError::Io {
            action: "inspect",
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (first, new) = load_or_create(dir.path()).unwrap();
        assert!(new);
        let (second, new) = load_or_create(dir.path()).unwrap();
        assert!(!new);
        assert_eq!(first.public(), second.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_or_exposed_keys_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(
                load_or_create(dir.path()),
                Err(IdentityError::Corrupt { .. })
            ));
            std::fs::write(&path, "ab".repeat(32)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}
