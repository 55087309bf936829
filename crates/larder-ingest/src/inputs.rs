//! Which source files each view version's offline rows were computed from, so that a full
//! run of a row-local view reads only the files added since (see
//! [`larder_offline::OfflineEngine::view_input_files`]).

use std::path::PathBuf;

use larder_core::FeatureView;
use larder_offline::InputFile;
use sha2::Digest;

/// The source files a view version's rows were last computed from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputManifest {
    /// A hash of the view's whole definition: any change to it makes the next run read
    /// every file again.
    pub definition: String,
    /// The files, sorted by URL.
    pub files: Vec<InputFile>,
    /// How many entities had been erased (`larder forget`) when the run started: an erasure
    /// since makes the next run read every file again, to find (and report) the erased
    /// entities that its sources still hold.
    #[serde(default)]
    pub erased_entities: u64,
}

/// What a run has to read, given the files listed now and the manifest of the last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputPlan {
    /// Every file: there is no manifest, the definition changed, or a file seen last time
    /// changed or is gone.
    All,
    /// Only these files, added since the last run (every file seen last time is unchanged).
    Added(Vec<InputFile>),
    /// Nothing: the files are exactly those of the last run.
    Unchanged,
}

impl InputManifest {
    /// A manifest of `files` for `view`, read when `erased_entities` entities had been
    /// erased.
    pub fn new(view: &FeatureView, files: Vec<InputFile>, erased_entities: u64) -> Self {
        Self {
            definition: definition_hash(view),
            files,
            erased_entities,
        }
    }

    /// What a run of `view` over `current` (sorted) has to read, given this manifest and
    /// the number of entities erased so far.
    pub fn plan(
        &self,
        view: &FeatureView,
        current: &[InputFile],
        erased_entities: u64,
    ) -> InputPlan {
        if self.definition != definition_hash(view) || self.erased_entities != erased_entities {
            return InputPlan::All;
        }
        let mut added = Vec::new();
        let mut seen = self.files.iter().peekable();
        for file in current {
            match seen.peek() {
                Some(previous) if previous.url == file.url => {
                    if *previous != file {
                        return InputPlan::All;
                    }
                    seen.next();
                }
                Some(previous) if previous.url < file.url => return InputPlan::All,
                _ => added.push(file.clone()),
            }
        }
        if seen.next().is_some() {
            return InputPlan::All;
        }
        if added.is_empty() {
            InputPlan::Unchanged
        } else {
            InputPlan::Added(added)
        }
    }
}

/// A hash of a view's definition (its serialized form).
fn definition_hash(view: &FeatureView) -> String {
    let text = serde_json::to_string(view).unwrap_or_else(|_| format!("{view:?}"));
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Why a manifest could not be read or saved.
#[derive(Debug, thiserror::Error)]
#[error("source file manifest {path}: {source}")]
pub struct InputManifestError {
    path: String,
    source: std::io::Error,
}

/// The manifests of every view version, one JSON file each in a folder.
#[derive(Debug, Clone)]
pub struct InputManifests {
    folder: PathBuf,
}

impl InputManifests {
    /// Manifests kept in `folder` (created on the first save).
    pub fn new(folder: impl Into<PathBuf>) -> Self {
        Self {
            folder: folder.into(),
        }
    }

    fn path_of(&self, view: &FeatureView) -> PathBuf {
        self.folder
            .join(format!("{}.v{}.json", view.name, view.version))
    }

    /// The manifest of `view`'s version; `None` when there is none or it cannot be parsed
    /// (then the run reads every file, which is always correct).
    pub fn load(&self, view: &FeatureView) -> Result<Option<InputManifest>, InputManifestError> {
        let path = self.path_of(view);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(InputManifestError {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Saves `manifest` for `view`'s version, atomically (a temporary file renamed over).
    pub fn save(
        &self,
        view: &FeatureView,
        manifest: &InputManifest,
    ) -> Result<(), InputManifestError> {
        let path = self.path_of(view);
        let failed = |source| InputManifestError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.folder).map_err(failed)?;
        let bytes = serde_json::to_vec(manifest).map_err(|error| failed(error.into()))?;
        let temporary = path.with_extension("json.partial");
        std::fs::write(&temporary, bytes).map_err(failed)?;
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(failed)?;
        std::fs::rename(&temporary, &path).map_err(failed)
    }

    /// Forgets `view`'s version's manifest: its next full run reads every file.
    pub fn remove(&self, view: &FeatureView) -> Result<(), InputManifestError> {
        let path = self.path_of(view);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(InputManifestError {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(url: &str, size: u64) -> InputFile {
        InputFile {
            url: url.to_string(),
            size,
            modified_micros: 1,
            e_tag: None,
        }
    }

    fn view() -> FeatureView {
        FeatureView {
            name: "users".into(),
            version: 1,
            source: "events".into(),
            ..FeatureView::default()
        }
    }

    #[test]
    fn only_added_files_are_read_while_the_others_are_unchanged() {
        let view = view();
        let manifest =
            InputManifest::new(&view, vec![file("file:///a", 1), file("file:///c", 1)], 0);
        let same = [file("file:///a", 1), file("file:///c", 1)];
        assert_eq!(manifest.plan(&view, &same, 0), InputPlan::Unchanged);
        let added = [
            file("file:///a", 1),
            file("file:///b", 1),
            file("file:///c", 1),
            file("file:///d", 1),
        ];
        assert_eq!(
            manifest.plan(&view, &added, 0),
            InputPlan::Added(vec![file("file:///b", 1), file("file:///d", 1)])
        );
        // A file rewritten, or gone: every file is read again.
        let rewritten = [
            file("file:///a", 2),
            file("file:///c", 1),
            file("file:///d", 1),
        ];
        assert_eq!(manifest.plan(&view, &rewritten, 0), InputPlan::All);
        let gone = [file("file:///a", 1), file("file:///d", 1)];
        assert_eq!(manifest.plan(&view, &gone, 0), InputPlan::All);
        let last_gone = [file("file:///a", 1)];
        assert_eq!(manifest.plan(&view, &last_gone, 0), InputPlan::All);
        // Another definition: everything again.
        let mut changed = view.clone();
        changed.description = "new words".to_string();
        assert_eq!(manifest.plan(&changed, &same, 0), InputPlan::All);
        // An erasure since: everything again.
        assert_eq!(manifest.plan(&view, &same, 2), InputPlan::All);
    }

    #[test]
    fn manifests_are_saved_per_view_version_and_removed() {
        let folder = tempfile::tempdir().unwrap();
        let manifests = InputManifests::new(folder.path().join("inputs"));
        let view = view();
        assert_eq!(manifests.load(&view).unwrap(), None);
        let manifest = InputManifest::new(&view, vec![file("file:///a", 1)], 0);
        manifests.save(&view, &manifest).unwrap();
        assert_eq!(manifests.load(&view).unwrap(), Some(manifest));
        let mut next_version = view.clone();
        next_version.version += 1;
        assert_eq!(manifests.load(&next_version).unwrap(), None);
        manifests.remove(&view).unwrap();
        assert_eq!(manifests.load(&view).unwrap(), None);
    }
}
