//! TLS for the OTLP/HTTP receiver (the gRPC receiver uses tonic's): the
//! same certificate, key and optional client CA as `[tls]`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{config::TlsConfig, server::ServerError};

/// How long a client may take over its handshake before it is dropped.
const HANDSHAKE: Duration = Duration::from_secs(5);

fn bad(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{what} {}: {e}", path.display()))
}

/// A rustls server configuration from the `[tls]` files.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServerError> {
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| bad("certificate", &tls.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &tls.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| bad("key", &tls.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("client CA", ca, e))? {
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
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &tls.cert, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TCP listener whose connections are TLS. Handshakes run concurrently,
/// each limited to [`HANDSHAKE`]; a failed or slow one is logged and
/// dropped, never served, and never holds up the others.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        log::warn!("OTLP/HTTP accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, handed) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => log::debug!("OTLP/HTTP TLS handshake from {addr}: {e}"),
                        Err(_) => log::debug!("OTLP/HTTP TLS handshake from {addr}: timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
