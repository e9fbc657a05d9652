//! The AWS SDK's configuration, shared by every S3 and SQS client the crate makes.
//!
//! The SDK crates are built without their default HTTPS client (rustls on aws-lc); every client
//! gets [`http_client`] instead: hyper 1 and rustls 0.23 with the `ring` crypto provider, the
//! system's root certificates, and the SDK's own connection pool and timeouts. A client built
//! without it cannot send a request ("no HTTP client was available").

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The HTTPS client for every AWS SDK client (it speaks plain HTTP too, for a local endpoint).
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The standard AWS configuration chain (environment, profile, SSO, web identity, container and
/// instance credentials; `AWS_ENDPOINT_URL` for a local server), with [`http_client`].
pub async fn load() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}
