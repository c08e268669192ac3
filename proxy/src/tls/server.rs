//! The certificates offered to clients. Several certificates may be configured; the
//! one whose names cover the client's SNI name is chosen (wildcards included), the
//! first one otherwise. A reload loads them anew for its new generation: handshakes
//! after it get the new certificates, sessions already encrypted carry on.

use std::sync::Arc;

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use super::{TlsError, file_error, provider};
pub(crate) use crate::config::CertificateFiles;

/// A loaded certificate and the DER of its leaf, to match SNI names against.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    leaf: CertificateDer<'static>,
}

impl Loaded {
    fn read(files: &CertificateFiles) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|error| file_error(&files.cert, error))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| file_error(&files.cert, error))?;
        let Some(leaf) = chain.first().cloned() else {
            return Err(file_error(&files.cert, "no CERTIFICATE section"));
        };
        let private = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|error| file_error(&files.key, error))?;
        let signing = provider()
            .key_provider
            .load_private_key(private)
            .map_err(|error| file_error(&files.key, error))?;
        let key = CertifiedKey::new(chain, signing);
        if key.keys_match().is_err() {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            });
        }
        Ok(Self {
            key: Arc::new(key),
            leaf,
        })
    }

    fn covers(&self, name: &str) -> bool {
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// Chooses a certificate by SNI from the current set.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Loaded>,
}

impl SniResolver {
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = &self.certificates;
        let chosen = server_name
            .and_then(|name| set.iter().find(|loaded| loaded.covers(name)))
            .or_else(|| set.first())?;
        Some(chosen.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// The server side of TLS: certificates, SNI and the acceptor for handshakes.
#[derive(Clone)]
pub struct ServerTls {
    files: Vec<CertificateFiles>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads every certificate and key; TLS 1.2 is the oldest version offered.
    pub fn load(files: &[CertificateFiles]) -> Result<Self, TlsError> {
        let resolver = Arc::new(SniResolver {
            certificates: read_all(files)?,
        });
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        Ok(Self {
            files: files.to_vec(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs server handshakes.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn read_all(files: &[CertificateFiles]) -> Result<Vec<Loaded>, TlsError> {
    if files.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    files.iter().map(Loaded::read).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn write_certificate(dir: &Path, names: &[&str]) -> CertificateFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        let stem = names[0].replace('*', "star");
        let files = CertificateFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, certified.cert.pem()).unwrap();
        std::fs::write(&files.key, certified.signing_key.serialize_pem()).unwrap();
        files
    }

    fn leaf_of(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn sni_chooses_the_covering_certificate_and_falls_back_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_certificate(dir.path(), &["mail.example.org"]);
        let second = write_certificate(dir.path(), &["*.example.net", "smtp.example.com"]);
        let resolver = SniResolver {
            certificates: read_all(&[first.clone(), second.clone()]).unwrap(),
        };
        let pick = |name: Option<&str>| leaf_of(&resolver.choose(name).unwrap());
        let first_leaf = pick(Some("mail.example.org"));
        let second_leaf = pick(Some("smtp.example.com"));
        assert_ne!(first_leaf, second_leaf);
        assert_eq!(pick(Some("mx.example.net")), second_leaf);
        assert_eq!(pick(Some("unknown.example")), first_leaf);
        assert_eq!(pick(None), first_leaf);
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_certificate(dir.path(), &["mail.example.org"]);
        let other = write_certificate(dir.path(), &["other.example.org"]);
        let mismatched = CertificateFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let error = ServerTls::load(std::slice::from_ref(&mismatched)).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        let missing = CertificateFiles {
            cert: dir.path().join("missing.crt"),
            key: good.key.clone(),
        };
        let error = ServerTls::load(&[missing]).unwrap_err().to_string();
        assert!(error.contains("missing.crt"), "{error}");
    }
}
