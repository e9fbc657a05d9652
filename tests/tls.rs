//! The AWS SDK clients' HTTPS path (`lookalike::sdk`: hyper 1 + rustls on ring), through a real
//! TLS handshake with a local moto server that serves HTTPS on loopback with a self-signed
//! certificate.
//!
//! Its own test binary: the certificate is trusted through `SSL_CERT_FILE` (read once per
//! process, the first time a client connects), and the store is configured from the process
//! environment, as the functions and the CLI configure theirs.

use bytes::Bytes;
use lookalike::store::{GetResult, ObjectStore, S3Store};
use testkit::moto::MotoServer;

fn point_env_at(server: &MotoServer) {
    for (name, value) in server.env_vars() {
        std::env::set_var(name, value);
    }
}

#[tokio::test]
async fn s3_store_speaks_https_and_checks_the_certificate() {
    let dir = testkit::tempdir();
    let Some((trusted, cert)) = MotoServer::start_tls_or_skip(&dir.path().join("trusted")) else {
        return;
    };
    let Some((untrusted, _)) = MotoServer::start_tls_or_skip(&dir.path().join("untrusted")) else {
        return;
    };
    assert!(trusted.endpoint().starts_with("https://localhost:"));

    // Only the first server's certificate is trusted (it replaces the system's roots).
    std::env::set_var("SSL_CERT_FILE", &cert);
    point_env_at(&trusted);
    trusted.create_bucket("tls").await;
    let store = S3Store::from_env("tls", "over/https").await.unwrap();
    let body = Bytes::from_static(b"sent through rustls on ring");
    store.put("a/one.txt", body.clone()).await.unwrap();
    match store.get("a/one.txt", None).await.unwrap() {
        GetResult::Found(o) => assert_eq!(o.bytes, body),
        GetResult::NotModified => panic!("unconditional get said NotModified"),
    }
    let listed: Vec<String> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, vec!["a/one.txt".to_string()]);
    let file = dir.path().join("one.txt");
    store.download_to("a/one.txt", &file).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), body.to_vec());
    // The object really is on the server, under the store's prefix: the harness's client sees it.
    let via_sdk = trusted
        .client()
        .get_object()
        .bucket("tls")
        .key("over/https/a/one.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(via_sdk.content_length(), Some(body.len() as i64));

    // A server whose certificate nobody trusts is refused with an error, not talked to.
    point_env_at(&untrusted);
    let refused = S3Store::from_env("tls", "over/https").await.unwrap();
    let err = refused
        .put("a/two.txt", Bytes::from_static(b"never sent"))
        .await
        .expect_err("a put to a server with an untrusted certificate must fail");
    let text = format!("{err}");
    println!("refused: {text}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "the error names the certificate: {text}"
    );
}
