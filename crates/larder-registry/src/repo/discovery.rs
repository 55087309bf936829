//! Finding and parsing the definition files of a repo (see the parent module for which files
//! are read).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::{OfflineStoreConfig, OnlineStoreConfig, RepoConfig};
use crate::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::repo::definitions::DefinitionFile;

/// Directory names that are never searched for definitions.
const SKIPPED_DIRECTORY_NAMES: [&str; 2] = ["data", "target"];

pub(super) fn find_definition_files(
    root: &Path,
    config: &RepoConfig,
) -> Result<Vec<PathBuf>, Diagnostics> {
    let canonical_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut excluded_directories = BTreeSet::new();
    let mut storage_directories = vec![
        config
            .resolve_path(root, &config.registry)
            .parent()
            .map(Path::to_path_buf),
    ];
    if let OnlineStoreConfig::Embedded { path, .. } = &config.online_store {
        storage_directories.push(
            config
                .resolve_path(root, path)
                .parent()
                .map(Path::to_path_buf),
        );
    }
    let OfflineStoreConfig::Parquet { path } = &config.offline_store;
    storage_directories.push(Some(config.resolve_path(root, path)));
    for directory in storage_directories.into_iter().flatten() {
        if let Ok(canonical) = std::fs::canonicalize(&directory)
            && canonical != canonical_root
        {
            excluded_directories.insert(canonical);
        }
    }

    let mut files = Vec::new();
    let mut diagnostics = Diagnostics::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative_directory) = pending.pop() {
        let directory = root.join(&relative_directory);
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) => {
                diagnostics.push(Diagnostic::new(format!(
                    "cannot list directory {}: {error}",
                    directory.display()
                )));
                continue;
            }
        };
        let mut children: Vec<(String, PathBuf, std::fs::FileType)> = Vec::new();
        for entry in entries {
            match entry.and_then(|entry| Ok((entry.file_name(), entry.path(), entry.file_type()?)))
            {
                Ok((name, path, file_type)) => {
                    children.push((name.to_string_lossy().into_owned(), path, file_type))
                }
                Err(error) => diagnostics.push(Diagnostic::new(format!(
                    "cannot list directory {}: {error}",
                    directory.display()
                ))),
            }
        }
        children.sort_by(|left, right| left.0.cmp(&right.0));
        let mut subdirectories = Vec::new();
        for (name, path, file_type) in children {
            if name.starts_with('.') {
                continue;
            }
            let relative_path = relative_directory.join(&name);
            if file_type.is_dir() {
                let excluded = SKIPPED_DIRECTORY_NAMES.contains(&name.as_str())
                    || std::fs::canonicalize(&path)
                        .is_ok_and(|canonical| excluded_directories.contains(&canonical));
                if !excluded {
                    subdirectories.push(relative_path);
                }
                continue;
            }
            let is_file = file_type.is_file() || (file_type.is_symlink() && path.is_file());
            let is_yaml = Path::new(&name)
                .extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml");
            let is_config =
                relative_directory.as_os_str().is_empty() && name == RepoConfig::FILE_NAME;
            if is_file && is_yaml && !is_config {
                files.push(relative_path);
            }
        }
        // Popped last-first: push in reverse so that directories are visited in name order.
        pending.extend(subdirectories.into_iter().rev());
    }
    files.sort();
    diagnostics.into_result(files)
}

/// A parsed definition file.
pub(super) struct ParsedFile {
    /// Path relative to the repo root.
    pub(super) path: PathBuf,
    /// What it declares.
    pub(super) definitions: DefinitionFile,
}

pub(super) fn parse_definition_file(
    root: &Path,
    relative_path: &Path,
) -> Result<DefinitionFile, Diagnostic> {
    let text = std::fs::read_to_string(root.join(relative_path)).map_err(|error| {
        Diagnostic::new(format!("cannot read the file: {error}"))
            .with_location(Location::file_only(relative_path))
    })?;
    match serde_saphyr::from_str::<Option<DefinitionFile>>(&text) {
        Ok(definitions) => Ok(definitions.unwrap_or_default()),
        Err(error) => Err(Diagnostic::from_yaml_error(relative_path, &text, &error)),
    }
}
