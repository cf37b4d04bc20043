//! Optional mutual TLS under the handshake: both sides present a certificate
//! signed by the cluster's CA and verify the other's. TLS does not know node
//! names (a node dials addresses): the handshake checks, once the peer told
//! its name, that the peer's certificate names it ([`PeerCert::check_name`]).
//! Only TLS 1.3 with the ring provider; no session resumption (connections
//! are long-lived, and every handshake verifies the certificates afresh).

use std::fs;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::net::BoxStream;

/// The first byte of a TLS record that carries a handshake (a ClientHello).
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// A node's TLS settings, loaded and checked.
pub(crate) struct Tls {
    client: tokio_rustls::TlsConnector,
    server: tokio_rustls::TlsAcceptor,
    /// The DNS names of this node's own certificate.
    pub names: Vec<String>,
    /// This node's own certificate.
    own: CertificateDer<'static>,
    /// Why this node's certificate does not verify against its own CA now
    /// (expired, another CA), if it does not: peers will refuse it.
    pub own_problem: Option<String>,
}

/// The certificate a peer presented, verified against the cluster's CA.
pub(crate) struct PeerCert(CertificateDer<'static>);

impl PeerCert {
    /// Checks that the certificate names `name` (one of its DNS names, or an
    /// IP address for a name that is one).
    pub fn check_name(&self, name: &str) -> std::result::Result<(), String> {
        check_name(&self.0, name)
    }
}

fn check_name(cert: &CertificateDer<'_>, name: &str) -> std::result::Result<(), String> {
    let listed = || {
        let names = dns_names(cert);
        if names.is_empty() {
            "it holds no DNS name".to_string()
        } else {
            format!("it names {}", names.join(", "))
        }
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return Err(format!(
            "node name {name:?} is not a DNS name, so no certificate can name it"
        ));
    };
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| format!("bad certificate: {e}"))?;
    rustls::client::verify_server_name(&parsed, &server_name)
        .map_err(|_| format!("its certificate is not for node {name:?} ({})", listed()))
}

/// The DNS names (subject alternative names) of `cert`.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| {
        Error::invalid(format!(
            "cannot read the TLS {what} file {}: {e}",
            path.display()
        ))
    })
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(format!(
                "the TLS {what} file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "the TLS {what} file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::invalid(format!(
                    "the TLS key file {} is accessible by group or others (mode {:03o}); \
                     a private key must be readable by its owner only: chmod 600 {}",
                    path.display(),
                    mode & 0o777,
                    path.display()
                )));
            }
        }
    }
    let pem = read_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::invalid(format!(
            "the TLS key file {} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        ))
    })
}

impl Tls {
    /// Reads and checks the files of `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Tls> {
        let chain = read_certs("certificate", &cfg.cert)?;
        let key = read_key(&cfg.key)?;
        let cas = read_certs("CA", &cfg.ca)?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|e| {
                Error::invalid(format!(
                    "the TLS CA file {} holds a certificate that cannot be a trust anchor: {e}",
                    cfg.ca.display()
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let own = chain[0].clone();
        let cert_error = |e: rustls::Error| {
            Error::invalid(format!(
                "the TLS certificate {} and key {} cannot be used: {e}",
                cfg.cert.display(),
                cfg.key.display()
            ))
        };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| Error::invalid(format!("the TLS CA {}: {e}", cfg.ca.display())))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cert_error)?;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let verifier = Arc::new(ClusterCa::new(roots.clone(), provider.clone(), &cfg.ca)?);
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(chain.clone(), key)
            .map_err(cert_error)?;
        client.enable_sni = false;
        client.resumption = rustls::client::Resumption::disabled();
        let own_problem = verifier
            .verify_chain(&chain[0], &chain[1..], UnixTime::now())
            .err()
            .map(|e| describe(&e));
        Ok(Tls {
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            names: dns_names(&own),
            own,
            own_problem,
        })
    }

    /// Why this node's own certificate does not name `name`, if it does not.
    pub fn own_name_problem(&self, name: &str) -> Option<String> {
        check_name(&self.own, name).err()
    }

    /// The client side of the TLS handshake over `stream`.
    pub async fn connect(&self, stream: BoxStream) -> io::Result<(BoxStream, PeerCert)> {
        // The name is not checked by TLS (see `ClusterCa`) and not sent (no SNI).
        let name = ServerName::try_from("lbmkv.invalid").map_err(io::Error::other)?;
        let tls = self.client.connect(name, stream).await?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| io::Error::other("the peer presented no certificate"))?;
        Ok((Box::new(tls), PeerCert(cert)))
    }

    /// The server side of the TLS handshake over `stream`, whose first byte
    /// (already read) was `first`.
    pub async fn accept(&self, first: u8, stream: BoxStream) -> io::Result<(BoxStream, PeerCert)> {
        let stream = Prefixed {
            first: Some(first),
            inner: stream,
        };
        let tls = self.server.accept(stream).await?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| io::Error::other("the peer presented no certificate"))?;
        Ok((Box::new(tls), PeerCert(cert)))
    }
}

/// A TLS error in words an operator can act on.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("{e}: its certificate is not signed by this cluster's CA")
        }
        // A CA with the same name but another key signed it.
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            format!("{e}: its certificate is not signed by this cluster's CA (another CA of the same name?)")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("{e}: its certificate has expired"),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!("{e}: its certificate is not valid yet"),
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError,
        ) => format!("{e}: the peer refused this node's certificate"),
        _ => e.to_string(),
    }
}

/// The TLS error inside an I/O error from a TLS stream, in words.
pub(crate) fn describe_io(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(describe)
}

/// Verifies a peer's certificate chain against the cluster's CA, but not its
/// name: nodes dial addresses, and the handshake checks the node name against
/// the certificate once the peer told it.
#[derive(Debug)]
struct ClusterCa {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    signatures: Arc<WebPkiServerVerifier>,
}

impl ClusterCa {
    fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>, ca: &Path) -> Result<Self> {
        let signatures =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| Error::invalid(format!("the TLS CA {}: {e}", ca.display())))?;
        Ok(ClusterCa {
            roots,
            provider,
            signatures,
        })
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<(), rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.verify_chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A stream whose first byte was read already (to tell TLS from plain text)
/// and is handed out again first.
struct Prefixed {
    first: Option<u8>,
    inner: BoxStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
