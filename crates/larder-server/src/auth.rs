//! Access control: API tokens with scopes, checked the same way on HTTP and gRPC.
//!
//! A token is `larder.<id>.<secret>`: the id is public (logs, metrics, audit records), the
//! secret 32 random bytes in hex of which only a SHA-256 is stored ([`TokenRecord`]). A
//! request presents it as `Authorization: Bearer <token>` (HTTP header or gRPC metadata),
//! or, for the UI only, in the `larder_token` cookie set by `/ui/login`.
//!
//! [`Authenticator::authenticate`] answers 401 (`UNAUTHENTICATED`) for a missing or unknown
//! token and 403 (`PERMISSION_DENIED`) for a token without the scope a route needs;
//! [`Principal::check_views`] answers 403 for views outside the token's limits. Messages name
//! the scope or the views needed, never the token.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use larder_registry::{Registry, Scope, TokenRecord, TokensFile, TokensFileError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, ServingError};

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "larder.";

/// The cookie that carries the token of a UI session.
pub const UI_COOKIE: &str = "larder_token";

/// Who is asking: anyone (access control off) or the holder of a token.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Access control is off.
    Open,
    /// A valid token.
    Token(Arc<TokenRecord>),
}

impl Principal {
    /// The token id for logs, metrics and audit records (`anonymous` when access control is
    /// off).
    pub fn id(&self) -> &str {
        match self {
            Self::Open => "anonymous",
            Self::Token(token) => &token.id,
        }
    }

    /// Who asked, for audit records: `<transport>` or `<transport>:token:<id>`.
    pub fn requested_by(&self, transport: &str) -> String {
        match self {
            Self::Open => transport.to_string(),
            Self::Token(token) => format!("{transport}:token:{}", token.id),
        }
    }

    /// Whether the principal may touch `view` directly.
    pub fn allows_view(&self, view: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Token(token) => {
                (token.views.is_empty() && token.feature_services.is_empty())
                    || token.views.iter().any(|glob| glob_matches(glob, view))
            }
        }
    }

    /// Whether the principal may read through the feature service `service`.
    pub fn allows_service(&self, service: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Token(token) => {
                (token.views.is_empty() && token.feature_services.is_empty())
                    || token
                        .feature_services
                        .iter()
                        .any(|glob| glob_matches(glob, service))
            }
        }
    }

    /// 403 unless every one of `views` is within the token's limits.
    pub fn check_views<'a>(
        &self,
        views: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ServingError> {
        if matches!(self, Self::Open) {
            return Ok(());
        }
        // A request names a view once per feature: check each view once.
        let mut views: Vec<&str> = views.into_iter().collect();
        views.sort_unstable();
        views.dedup();
        views.retain(|view| !self.allows_view(view));
        let denied = views;
        if denied.is_empty() {
            return Ok(());
        }
        Err(ServingError::new(
            ErrorKind::PermissionDenied,
            format!(
                "token '{}' is not allowed feature view(s) {}",
                self.id(),
                denied.join(", ")
            ),
        ))
    }

    /// 403 unless the principal may read through feature service `service`, or every view
    /// of it directly.
    pub fn check_service(&self, registry: &Registry, service: &str) -> Result<(), ServingError> {
        if self.allows_service(service) {
            return Ok(());
        }
        match registry.feature_services.get(service) {
            Some(definition) => self
                .check_views(definition.items.iter().map(|item| item.view.as_str()))
                .map_err(|_| {
                    ServingError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "token '{}' is not allowed feature service '{service}'",
                            self.id()
                        ),
                    )
                }),
            // Unknown services are the resolver's 400 to give.
            None => Ok(()),
        }
    }

    /// 403 unless the principal may read `selection`.
    pub fn check_selection(
        &self,
        registry: &Registry,
        selection: &crate::FeatureSelection,
    ) -> Result<(), ServingError> {
        match selection {
            crate::FeatureSelection::Service(service) => self.check_service(registry, service),
            crate::FeatureSelection::Features(references) => self.check_views(
                references
                    .iter()
                    .map(|reference| reference.split_once(':').map_or("", |(view, _)| view)),
            ),
        }
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let pattern: Vec<char> = glob.chars().collect();
    let text: Vec<char> = name.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&expected) if expected == '?' || expected == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&character| character == '*')
}

/// A new token: the record to store and the token to hand out (shown once).
pub fn generate_token(
    id: &str,
    scopes: Vec<Scope>,
    views: Vec<String>,
    feature_services: Vec<String>,
    description: String,
) -> Result<(TokenRecord, String), std::io::Error> {
    let mut secret_bytes = [0u8; 32];
    getrandom::fill(&mut secret_bytes).map_err(std::io::Error::other)?;
    let secret = hex::encode(secret_bytes);
    let record = TokenRecord {
        id: id.to_string(),
        sha256: hash_secret(&secret),
        scopes,
        views,
        feature_services,
        description,
        created_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    Ok((record, format!("{TOKEN_PREFIX}{id}.{secret}")))
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The tokens in force and where they come from.
#[derive(Debug)]
struct TokenTable {
    tokens: Vec<Arc<TokenRecord>>,
}

/// Where the tokens come from.
#[derive(Debug, Clone, Default)]
pub struct TokenSources {
    /// Inline tokens of `larder.yaml`.
    pub inline: Vec<TokenRecord>,
    /// The tokens file, re-read when it changes.
    pub file: Option<PathBuf>,
}

/// Checks the credentials of requests against the configured tokens.
#[derive(Debug)]
pub struct Authenticator {
    enabled: bool,
    sources: TokenSources,
    table: RwLock<Arc<TokenTable>>,
    file_modified: RwLock<Option<SystemTime>>,
}

impl Authenticator {
    /// Access control off: every request is [`Principal::Open`].
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            sources: TokenSources::default(),
            table: RwLock::new(Arc::new(TokenTable { tokens: Vec::new() })),
            file_modified: RwLock::new(None),
        }
    }

    /// Access control on, with the tokens of `sources` (the file read now).
    pub fn with_tokens(sources: TokenSources) -> Result<Self, TokensFileError> {
        let authenticator = Self {
            enabled: true,
            sources,
            table: RwLock::new(Arc::new(TokenTable { tokens: Vec::new() })),
            file_modified: RwLock::new(None),
        };
        authenticator.reload()?;
        Ok(authenticator)
    }

    /// Whether access control is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How many tokens are in force.
    pub fn token_count(&self) -> usize {
        self.current().tokens.len()
    }

    fn current(&self) -> Arc<TokenTable> {
        match self.table.read() {
            Ok(table) => Arc::clone(&table),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn file_modified_time(&self) -> Option<SystemTime> {
        let path = self.sources.file.as_ref()?;
        std::fs::metadata(path)
            .and_then(|metadata| metadata.modified())
            .ok()
    }

    /// Re-reads the tokens file. On error the tokens in force stay.
    pub fn reload(&self) -> Result<(), TokensFileError> {
        let modified = self.file_modified_time();
        let mut tokens: Vec<Arc<TokenRecord>> =
            self.sources.inline.iter().cloned().map(Arc::new).collect();
        if let Some(path) = &self.sources.file {
            tokens.extend(TokensFile::load(path)?.tokens.into_iter().map(Arc::new));
        }
        if let Ok(mut table) = self.table.write() {
            *table = Arc::new(TokenTable { tokens });
        }
        if let Ok(mut recorded) = self.file_modified.write() {
            *recorded = modified;
        }
        Ok(())
    }

    /// Re-reads the tokens file whenever its modification time changes, every `interval`,
    /// until the process ends. A file that became invalid is logged and the tokens in force
    /// stay.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.sources.file.as_ref()?;
        let authenticator = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let modified = authenticator.file_modified_time();
                let known = authenticator
                    .file_modified
                    .read()
                    .map(|recorded| *recorded)
                    .unwrap_or(None);
                if modified != known
                    && let Err(error) = authenticator.reload()
                {
                    tracing::error!(%error, "the tokens file is invalid; the tokens in force stay");
                    if let Ok(mut recorded) = authenticator.file_modified.write() {
                        *recorded = modified;
                    }
                }
            }
        }))
    }

    /// The principal behind `credential` (a bearer token), if it may use `needed`.
    pub fn authenticate(
        &self,
        credential: Option<&str>,
        needed: Scope,
    ) -> Result<Principal, ServingError> {
        if !self.enabled {
            return Ok(Principal::Open);
        }
        let unauthenticated = |message: &str| {
            metrics::counter!("larder_auth_rejected_total", "reason" => "unauthenticated")
                .increment(1);
            ServingError::new(ErrorKind::Unauthenticated, message.to_string())
        };
        let Some(credential) = credential else {
            return Err(unauthenticated(
                "this server requires an API token: send 'Authorization: Bearer larder.<id>.<secret>'",
            ));
        };
        let parsed = credential
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('.'));
        let Some((id, secret)) = parsed else {
            return Err(unauthenticated(
                "the API token is malformed (expected larder.<id>.<secret>)",
            ));
        };
        let table = self.current();
        let presented = hash_secret(secret);
        let token = table.tokens.iter().find(|token| {
            token.id == id && bool::from(token.sha256.as_bytes().ct_eq(presented.as_bytes()))
        });
        let Some(token) = token else {
            return Err(unauthenticated("the API token is unknown or revoked"));
        };
        let allowed = token
            .scopes
            .iter()
            .any(|scope| *scope == needed || *scope == Scope::Admin);
        if !allowed {
            metrics::counter!("larder_auth_rejected_total", "reason" => "scope").increment(1);
            return Err(ServingError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "token '{}' lacks the '{needed}' scope this request needs",
                    token.id
                ),
            ));
        }
        metrics::counter!("larder_authorized_requests_total", "token" => token.id.clone(), "scope" => needed.as_str()).increment(1);
        Ok(Principal::Token(Arc::clone(token)))
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The UI session token of a `Cookie` header value.
pub fn cookie_token(header_value: &str) -> Option<&str> {
    header_value.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == UI_COOKIE).then_some(value)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn authenticator(records: Vec<TokenRecord>) -> Authenticator {
        Authenticator::with_tokens(TokenSources {
            inline: records,
            file: None,
        })
        .unwrap()
    }

    #[test]
    fn globs_match_like_shell_globs() {
        for (glob, name, expected) in [
            ("user_*", "user_profile", true),
            ("user_*", "users", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*_7d", "clicks_7d", true),
            ("*a*b", "xaxxab", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(glob, name), expected, "{glob} ~ {name}");
        }
    }

    #[test]
    fn tokens_authenticate_by_scope_and_never_echo_the_secret() {
        let (reader, reader_token) =
            generate_token("reader", vec![Scope::Read], vec![], vec![], String::new()).unwrap();
        let (admin, admin_token) =
            generate_token("ops", vec![Scope::Admin], vec![], vec![], String::new()).unwrap();
        let auth = authenticator(vec![reader, admin]);
        assert_eq!(
            auth.authenticate(Some(&reader_token), Scope::Read)
                .unwrap()
                .id(),
            "reader"
        );
        let denied = auth
            .authenticate(Some(&reader_token), Scope::Write)
            .unwrap_err();
        assert_eq!(denied.kind, ErrorKind::PermissionDenied);
        assert!(denied.message.contains("'write'"), "{}", denied.message);
        assert!(!denied.message.contains(&reader_token[20..]));
        assert_eq!(
            auth.authenticate(Some(&admin_token), Scope::Forget)
                .unwrap()
                .id(),
            "ops"
        );
        for bad in [None, Some("nonsense"), Some("larder.reader.00")] {
            let error = auth.authenticate(bad, Scope::Read).unwrap_err();
            assert_eq!(error.kind, ErrorKind::Unauthenticated, "{bad:?}");
        }
        // The right secret under another id is not that id's token.
        let swapped = reader_token.replace("larder.reader.", "larder.ops.");
        assert_eq!(
            auth.authenticate(Some(&swapped), Scope::Read)
                .unwrap_err()
                .kind,
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn view_limits_and_service_limits() {
        let (limited, token) = generate_token(
            "ranker",
            vec![Scope::Read],
            vec!["user_*".into()],
            vec!["ranking_*".into()],
            String::new(),
        )
        .unwrap();
        let principal = authenticator(vec![limited])
            .authenticate(Some(&token), Scope::Read)
            .unwrap();
        assert!(
            principal
                .check_views(["user_profile", "user_activity"])
                .is_ok()
        );
        let error = principal
            .check_views(["user_profile", "item_stats"])
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::PermissionDenied);
        assert!(error.message.contains("item_stats"), "{}", error.message);
        assert!(principal.allows_service("ranking_v2"));
        assert!(!principal.allows_service("fraud"));
        assert!(Principal::Open.check_views(["anything"]).is_ok());
    }

    #[test]
    fn the_tokens_file_is_reread_when_it_changes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tokens.yaml");
        let auth = Authenticator::with_tokens(TokenSources {
            inline: vec![],
            file: Some(path.clone()),
        })
        .unwrap();
        assert_eq!(auth.token_count(), 0);
        let (record, token) =
            generate_token("late", vec![Scope::Read], vec![], vec![], String::new()).unwrap();
        TokensFile {
            tokens: vec![record],
        }
        .save(&path)
        .unwrap();
        auth.reload().unwrap();
        assert!(auth.authenticate(Some(&token), Scope::Read).is_ok());
        TokensFile::default().save(&path).unwrap();
        auth.reload().unwrap();
        assert_eq!(
            auth.authenticate(Some(&token), Scope::Read)
                .unwrap_err()
                .kind,
            ErrorKind::Unauthenticated
        );
    }
}
