//! Access control from the command line: `larder token create|list|revoke`, and the
//! authenticator and write audit that `larder serve` builds from larder.yaml's `auth`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use larder_registry::{Scope, TokensFile};
use larder_server::auth::{Authenticator, TokenSources, generate_token};

use crate::context::RepoContext;

/// `larder token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token, record its hash in the tokens file and print the token (once).
    Create(CreateArgs),
    /// List the tokens (ids, scopes, limits; never secrets).
    List,
    /// Revoke a token: remove it from the tokens file (a running server stops accepting it
    /// within a second).
    Revoke {
        /// The token id.
        id: String,
    },
}

/// `larder token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Token id: lowercase letters, digits, '_' and '-' (shown in logs, metrics, audits).
    pub id: String,
    /// Scopes (comma-separated): read, write, forget, admin (admin implies the others).
    #[arg(long, value_delimiter = ',', required = true)]
    pub scope: Vec<Scope>,
    /// Limit to these feature views (comma-separated globs, e.g. 'user_*').
    #[arg(long, value_delimiter = ',')]
    pub views: Vec<String>,
    /// Limit to these feature services (comma-separated globs).
    #[arg(long, value_delimiter = ',')]
    pub feature_services: Vec<String>,
    /// Who holds it and what for.
    #[arg(long, default_value = "")]
    pub description: String,
}

impl RepoContext {
    /// The folder of the repo's state files (beside the registry).
    fn state_directory(&self) -> PathBuf {
        let history = self.run_history();
        history
            .path()
            .parent()
            .map_or_else(|| self.root.clone(), std::path::Path::to_path_buf)
    }

    /// The tokens file `larder token` writes: `auth.tokens_file`, or `data/tokens.yaml`
    /// beside the registry when larder.yaml has no `auth` yet.
    pub fn tokens_file_path(&self) -> PathBuf {
        match self
            .config
            .auth
            .as_ref()
            .and_then(|auth| auth.tokens_file.as_ref())
        {
            Some(path) => self.config.resolve_path(&self.root, path),
            None => self.state_directory().join("tokens.yaml"),
        }
    }

    /// The access control larder.yaml asks for (off without `auth`).
    pub fn authenticator(&self) -> Result<Authenticator> {
        let Some(auth) = &self.config.auth else {
            return Ok(Authenticator::disabled());
        };
        let sources = TokenSources {
            inline: auth.tokens.clone(),
            file: auth
                .tokens_file
                .as_ref()
                .map(|path| self.config.resolve_path(&self.root, path)),
        };
        Authenticator::with_tokens(sources).context("reading the API tokens")
    }

    /// The audit log of direct writes.
    pub fn write_audit_path(&self) -> PathBuf {
        self.state_directory().join("audit").join("writes.jsonl")
    }
}

/// Runs `larder token ...`.
pub fn run(context: &RepoContext, command: &TokenCommand) -> Result<()> {
    let path = context.tokens_file_path();
    let mut file = TokensFile::load(&path)?;
    match command {
        TokenCommand::Create(args) => {
            if file.tokens.iter().any(|token| token.id == args.id) {
                bail!(
                    "a token '{}' exists already in {} (revoke it first, or pick another id)",
                    args.id,
                    path.display()
                );
            }
            let mut scopes = args.scope.clone();
            scopes.sort_unstable();
            scopes.dedup();
            let (record, token) = generate_token(
                &args.id,
                scopes,
                args.views.clone(),
                args.feature_services.clone(),
                args.description.clone(),
            )?;
            let problems = record.problems();
            if !problems.is_empty() {
                bail!("{}", problems.join("; "));
            }
            file.tokens.push(record);
            file.save(&path)?;
            eprintln!(
                "Created token '{}' in {}. It is shown once; keep it secret:",
                args.id,
                path.display()
            );
            println!("{token}");
            if context.config.auth.is_none() {
                eprintln!(
                    "Access control is off: turn it on with this line in larder.yaml:\n  auth: {{tokens_file: {}}}",
                    path.strip_prefix(&context.root).unwrap_or(&path).display()
                );
            }
        }
        TokenCommand::List => {
            if file.tokens.is_empty() {
                println!("no tokens in {}", path.display());
            }
            for token in &file.tokens {
                let scopes: Vec<&str> = token.scopes.iter().map(|scope| scope.as_str()).collect();
                let mut limits = Vec::new();
                if !token.views.is_empty() {
                    limits.push(format!("views {}", token.views.join(",")));
                }
                if !token.feature_services.is_empty() {
                    limits.push(format!("services {}", token.feature_services.join(",")));
                }
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    token.id,
                    scopes.join(","),
                    if limits.is_empty() {
                        "all views".to_string()
                    } else {
                        limits.join("; ")
                    },
                    token.created_at.as_deref().unwrap_or("-"),
                    token.description
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let before = file.tokens.len();
            file.tokens.retain(|token| token.id != *id);
            if file.tokens.len() == before {
                bail!("no token '{id}' in {}", path.display());
            }
            file.save(&path)?;
            println!("Revoked token '{id}'.");
        }
    }
    Ok(())
}
