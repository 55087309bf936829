//! Where remote source files are read from: S3 and S3-compatible object storage.

use serde::{Deserialize, Serialize};

/// How `s3://bucket/key` paths are read: AWS S3 or any S3-compatible server (MinIO, Ceph,
/// R2, moto). Every field is optional; an unset field falls back to the standard AWS
/// environment variables (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then to AWS's defaults.
///
/// ```yaml
/// s3: {endpoint: "http://127.0.0.1:9000", region: us-east-1}
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The region. Default: `AWS_REGION`, else `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An S3-compatible server's URL. Default: `AWS_ENDPOINT_URL`, else AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Access key id; with `secret_access_key`, instead of the environment's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key. Never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials. Never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Address buckets as `bucket.host` (AWS's style) instead of `host/bucket` (the style of
    /// most S3-compatible servers). Default: virtual-hosted for AWS, path-style for an
    /// `endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_hosted_style: Option<bool>,
}

impl S3Config {
    /// The problems of this section, as `(key, message)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(("endpoint", format!("'{endpoint}' is not an http(s) URL")));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            problems.push((
                "access_key_id",
                "set both access_key_id and secret_access_key, or neither".to_string(),
            ));
        }
        if self
            .region
            .as_deref()
            .is_some_and(|region| region.trim().is_empty())
        {
            problems.push(("region", "the region is empty".to_string()));
        }
        problems
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = crate::secret::redacted;
        formatter
            .debug_struct("S3Config")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// Whether a source path names object storage (`s3://…`) rather than a local path.
pub fn is_object_store_path(path: &str) -> bool {
    path.starts_with("s3://") || path.starts_with("s3a://")
}
