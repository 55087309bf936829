//! `auth:` in `larder.yaml`: API tokens with scopes, for `larder serve`.
//!
//! ```yaml
//! auth: {tokens_file: data/tokens.yaml}     # one line turns access control on
//! ```
//!
//! Tokens live in the tokens file (written by `larder token create`) or inline under
//! `auth.tokens`. Only a SHA-256 of each token's secret is stored: the secrets are 256 random
//! bits, so a fast hash is as safe as a password hash is for a human password, and checking
//! one costs nanoseconds on every request.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a token may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Online reads, training sets, the registry API, the UI, status and metrics.
    Read,
    /// Direct writes: `/push`, `/write-to-online-store`, gRPC `Push`.
    Write,
    /// Erasure: `/forget`, gRPC `Forget`.
    Forget,
    /// Batch runs on request and repairs (`/materialize*`, `/repair-future-event-times`).
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Forget, Scope::Admin];

    /// The name used in `larder.yaml` and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Forget => "forget",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("unknown scope '{text}' (known: read, write, forget, admin)"))
    }
}

/// One API token as stored: its public id, the hash of its secret and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public name of the token (`[a-z0-9_-]+`): shown in logs, metrics and audit records.
    pub id: String,
    /// Lowercase hex SHA-256 of the token's secret part.
    pub sha256: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// Feature views the token is limited to (globs: `*` any run, `?` one character); empty:
    /// every view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
    /// Feature services the token is limited to (globs); reading through such a service
    /// reaches its views even when `views` does not name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_services: Vec<String>,
    /// Free text: who holds it, what for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When it was created (RFC 3339), for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl TokenRecord {
    /// Whether `id` is a valid token id.
    pub fn valid_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
            })
    }

    /// What is wrong with this record, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !Self::valid_id(&self.id) {
            problems.push(format!(
                "invalid token id '{}' (use 1 to 64 lowercase letters, digits, '_' and '-')",
                self.id
            ));
        }
        let hex_digest = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !hex_digest {
            problems.push(format!(
                "token '{}': sha256 must be 64 lowercase hex digits",
                self.id
            ));
        }
        if self.scopes.is_empty() {
            problems.push(format!("token '{}' has no scopes", self.id));
        }
        problems
    }
}

/// The tokens file: `tokens:` and a list of [`TokenRecord`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// Access control of `larder serve`. Absent from `larder.yaml`: off (anyone who can reach
/// the port may read and write, fine on loopback; `serve` warns on any other address).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A YAML file of tokens ([`TokensFile`]), relative to the repo root; re-read when it
    /// changes, so `larder token create` and `larder token revoke` apply to a running server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// Tokens declared inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenRecord>,
}

impl AuthConfig {
    /// Problems of the inline tokens, and a config that declares no token source at all.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> =
            self.tokens.iter().flat_map(TokenRecord::problems).collect();
        if self.tokens_file.is_none() && self.tokens.is_empty() {
            problems.push(
                "auth needs a tokens_file or inline tokens (create one with `larder token create`)"
                    .to_string(),
            );
        }
        problems
    }
}

/// Why a tokens file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// Reading or writing failed.
    #[error("tokens file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid tokens file.
    #[error("tokens file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line, when the parser knows it).
        message: String,
    },
}

impl TokensFile {
    /// Reads and validates `path`; a missing file holds no tokens.
    pub fn load(path: &std::path::Path) -> Result<Self, TokensFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(TokensFileError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let invalid = |message: String| TokensFileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file = serde_saphyr::from_str::<Option<Self>>(&text)
            .map_err(|error| invalid(error.to_string()))?
            .unwrap_or_default();
        let problems: Vec<String> = file.tokens.iter().flat_map(TokenRecord::problems).collect();
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for token in &file.tokens {
            if !seen.insert(token.id.as_str()) {
                return Err(invalid(format!("token id '{}' appears twice", token.id)));
            }
        }
        Ok(file)
    }

    /// Writes the file atomically (a temporary file renamed over it), readable by its owner
    /// only on Unix.
    pub fn save(&self, path: &std::path::Path) -> Result<(), TokensFileError> {
        let io = |source| TokensFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_saphyr::to_string(self).map_err(|error| TokensFileError::Invalid {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let temporary = path.with_extension("yaml.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = (|| {
            use std::io::Write as _;
            let mut file = options.open(&temporary)?;
            file.write_all(
                b"# API tokens of larder serve: written by `larder token`; only hashes.\n",
            )?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        written.map_err(io)
    }
}
