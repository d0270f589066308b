//! TLS for the OTLP receivers from `[tls]`: one reading of the certificate,
//! key and optional client CA gives both receivers' configurations (they
//! differ in the protocol they offer: HTTP/2 for gRPC, HTTP/1.1 for
//! OTLP/HTTP). Handshakes run in the listener, under its header deadline.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use crate::{config::TlsConfig, server::ServerError};

fn bad(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what} {}: {e}", path.display()))
}

/// The `[tls]` files, read once, as the two receivers want them: for
/// OTLP/HTTP and for OTLP/gRPC.
pub fn configs(
    tls: &TlsConfig,
) -> Result<(rustls::ServerConfig, rustls::ServerConfig), ServerError> {
    let read = crate::config::read;
    let (cert_pem, key_pem) = (read(&tls.cert)?, read(&tls.key)?);
    let ca_pem = tls.client_ca.as_deref().map(read).transpose()?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &tls.cert, e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("key", &tls.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match (&tls.client_ca, &ca_pem) {
        (Some(ca), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(|e| bad("client CA", ca, e))?)
                    .map_err(|e| bad("client CA", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("client CA", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut http = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &tls.cert, e))?;
    let mut grpc = http.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok((http, grpc))
}
