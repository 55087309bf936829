//! A problem found while validating `larder.yaml`.

/// One problem found by [`RepoConfig::validation_problems`]: the key path and what is wrong.
pub(crate) struct ConfigProblem {
    pub(crate) keys: Vec<&'static str>,
    pub(crate) message: String,
}
