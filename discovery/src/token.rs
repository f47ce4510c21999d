//! Owns bearer tokens kept in files (a mounted Kubernetes Secret): the file is read
//! again on each use, so a rotated Secret takes effect without restarting the control
//! plane or the gateways. When the file cannot be read (or is empty, as during some
//! Secret updates) the last good value stays in use, and the problem is logged.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    last: Mutex<Option<String>>,
}

impl TokenFile {
    /// `initial`: what was read at start (so a file that disappears later still has a
    /// value to fall back to).
    pub fn new(path: PathBuf, initial: Option<String>) -> Self {
        Self {
            path,
            last: Mutex::new(initial),
        }
    }

    /// The token as the file says now, else the last good one.
    pub async fn current(&self) -> Option<String> {
        let read = tokio::fs::read_to_string(&self.path).await;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(text) if !text.trim().is_empty() => {
                let token = text.trim();
                if last.as_deref() != Some(token) {
                    if last.is_some() {
                        tracing::info!(path = %self.path.display(), "bearer token file changed; using the new token");
                    }
                    *last = Some(token.to_owned());
                }
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "bearer token file is empty; keeping the last token")
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot read the bearer token file; keeping the last token")
            }
        }
        last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_the_file_and_keeps_the_last_good_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = TokenFile::new(path.clone(), Some("first".into()));
        assert_eq!(token.current().await.as_deref(), Some("first"));
        std::fs::write(&path, "second").unwrap();
        assert_eq!(token.current().await.as_deref(), Some("second"));
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(token.current().await.as_deref(), Some("second"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token.current().await.as_deref(), Some("second"));
    }
}
