//! The bearer token of one API: given once (`api.token`), or read from a
//! file (`api.token_file`) and read again when the file changes, so a
//! rotated token (a Kubernetes Secret updated in place, through a symlink
//! swap) is used from the next request without a restart.
//!
//! The file's identity (inode, size, modification time, after following
//! symlinks) is looked at before every request: one `stat`, no read, while
//! it stays the same. A file that changed is read again; a new content
//! that is not a usable token (empty, unreadable, several lines) is
//! refused with a warning and the token in use stays. Neither the token
//! nor a piece of it is ever logged.

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use super::ApiConfig;
use crate::field::ConfigError;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        inode,
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// A token, fixed or followed in its file.
pub struct Token {
    current: RwLock<SecretString>,
    /// The file it comes from, and the version last read.
    file: Option<(PathBuf, Mutex<Option<Stamp>>)>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("file", &self.file.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl Token {
    /// A token that never changes.
    pub fn fixed(token: SecretString) -> Self {
        Self {
            current: RwLock::new(token),
            file: None,
        }
    }

    /// The section's token: read now (an error names the field), and
    /// followed in its file when it comes from one.
    pub fn from_config(api: &ApiConfig) -> Result<Self, ConfigError> {
        let token = api.resolved_token()?;
        Ok(match &api.token_file {
            None => Self::fixed(token),
            Some(path) => Self {
                current: RwLock::new(token),
                file: Some((path.clone(), Mutex::new(stamp(path)))),
            },
        })
    }

    /// The token to send now: read again first if its file changed.
    pub fn current(&self) -> SecretString {
        if let Some((path, seen)) = &self.file {
            let now = stamp(path);
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_some() && now != *seen {
                *seen = now;
                drop(seen);
                self.read_file();
            }
        }
        read(&self.current).clone()
    }

    /// Reads the file again whatever its stamp (after the API refused the
    /// token); whether the token changed.
    pub fn reload(&self) -> bool {
        let Some((path, seen)) = &self.file else {
            return false;
        };
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
        self.read_file()
    }

    /// Takes the file's token if it is usable and new; whether it was.
    fn read_file(&self) -> bool {
        let Some((path, _)) = &self.file else {
            return false;
        };
        let api = ApiConfig {
            token_file: Some(path.clone()),
            ..ApiConfig::default()
        };
        match api.resolved_token() {
            Ok(t) => {
                if t.expose_secret() == read(&self.current).expose_secret() {
                    return false;
                }
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = t;
                tracing::info!(file = %path.display(), "the token file changed: the new token is used from the next request");
                true
            }
            Err(e) => {
                tracing::warn!(error = %crate::field::chain(&e), "the token file changed but holds no usable token; the token in use stays");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_token(dir: &tempfile::TempDir, text: &str) -> (PathBuf, Token) {
        let f = dir.path().join("token");
        std::fs::write(&f, text).unwrap();
        let api = ApiConfig {
            token_file: Some(f.clone()),
            ..ApiConfig::default()
        };
        (f, Token::from_config(&api).unwrap())
    }

    #[test]
    fn a_rewritten_file_is_used_from_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let (f, t) = file_token(&dir, "first\n");
        assert_eq!(t.current().expose_secret(), "first");
        std::fs::write(&f, "second-and-longer").unwrap();
        assert_eq!(t.current().expose_secret(), "second-and-longer");
        // Unusable content keeps the token in use.
        std::fs::write(&f, "").unwrap();
        assert_eq!(t.current().expose_secret(), "second-and-longer");
        std::fs::write(&f, "two\nlines").unwrap();
        assert_eq!(t.current().expose_secret(), "second-and-longer");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(t.current().expose_secret(), "second-and-longer");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_swap_as_kubernetes_does_it_is_followed() {
        // A Secret volume: `token -> ..data/token`, `..data -> ..<stamp>`;
        // an update writes a new stamped directory and renames `..data`.
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..2026_1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("token"), "old-token").unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&v1, &data).unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(data.join("token"), &link).unwrap();
        let api = ApiConfig {
            token_file: Some(link),
            ..ApiConfig::default()
        };
        let t = Token::from_config(&api).unwrap();
        assert_eq!(t.current().expose_secret(), "old-token");
        let v2 = dir.path().join("..2026_2");
        std::fs::create_dir(&v2).unwrap();
        // Same length: the inode tells the versions apart.
        std::fs::write(v2.join("token"), "new-token").unwrap();
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert_eq!(t.current().expose_secret(), "new-token");
    }

    #[test]
    fn reload_says_whether_the_token_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (f, t) = file_token(&dir, "a");
        assert!(!t.reload());
        std::fs::write(&f, "b").unwrap();
        assert!(t.reload());
        assert_eq!(t.current().expose_secret(), "b");
        assert!(!Token::fixed("x".to_string().into()).reload());
    }
}
