//! Object storage for sources: one S3 client per bucket, built from the repo's `s3` section
//! and the standard AWS environment variables.

use std::sync::Arc;

use larder_core::S3Config;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

use crate::OfflineError;

/// A parsed `s3://bucket/key` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Location {
    /// The bucket.
    pub(crate) bucket: String,
    /// The location as a URL with the `s3` scheme (`s3a://` is read as `s3://`).
    pub(crate) url: Url,
}

impl S3Location {
    /// Parses `s3://bucket/key`; `context` names the source for the error.
    pub(crate) fn parse(path: &str, context: &str) -> Result<Self, OfflineError> {
        let normalized = match path.strip_prefix("s3a://") {
            Some(rest) => format!("s3://{rest}"),
            None => path.to_string(),
        };
        let invalid = |reason: String| {
            OfflineError::InvalidRequest(format!("{context}: '{path}' is not an S3 URL: {reason}"))
        };
        let url = Url::parse(&normalized).map_err(|error| invalid(error.to_string()))?;
        let bucket = url
            .host_str()
            .filter(|bucket| !bucket.is_empty())
            .ok_or_else(|| invalid("no bucket".to_string()))?
            .to_string();
        Ok(Self { bucket, url })
    }

    /// The URL of the bucket alone (`s3://bucket`), under which its store is registered.
    pub(crate) fn bucket_url(&self) -> Result<Url, OfflineError> {
        Url::parse(&format!("s3://{}", self.bucket)).map_err(|error| {
            OfflineError::InvalidRequest(format!("bucket '{}': {error}", self.bucket))
        })
    }
}

/// Builds the S3 client of one bucket: the `s3` config's values over the environment's.
pub(crate) fn s3_store(
    config: &S3Config,
    bucket: &str,
) -> Result<Arc<dyn ObjectStore>, OfflineError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    let endpoint = config
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = &endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let (Some(key_id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        builder = builder
            .with_access_key_id(key_id)
            .with_secret_access_key(secret);
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
    }
    let virtual_hosted = config.virtual_hosted_style.unwrap_or(endpoint.is_none());
    builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    let store = builder
        .build()
        .map_err(|error| OfflineError::InvalidRequest(format!("S3 bucket '{bucket}': {error}")))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_buckets_and_rejects_urls_without_one() {
        let location = S3Location::parse("s3a://lake/events/", "source 'e'").unwrap();
        assert_eq!(location.bucket, "lake");
        assert_eq!(location.url.as_str(), "s3://lake/events/");
        assert_eq!(location.bucket_url().unwrap().as_str(), "s3://lake");
        let error = S3Location::parse("s3:///events", "source 'e'").unwrap_err();
        assert!(error.to_string().contains("no bucket"), "{error}");
    }
}
