//! The fleet's certificates: the control plane's CA, the certificates it issues, and
//! the rustls configurations every role serves and dials with.
//!
//! Two kinds of certificate exist. A *node* certificate lets an agent's data plane prove
//! which machine it is (server authentication only). A *fleet* certificate is held by
//! the control plane and gateways: they serve with it and present it to agents, whose
//! data planes answer only a client with a fleet certificate. So a node cannot call
//! another node's data plane, and nobody outside the fleet can call any.
#![warn(missing_docs)]

mod serve;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

pub use serve::{serve, Limits, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_FLEET_CONNECTIONS};

/// The CA certificate's file in a TLS directory.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// How long an issued certificate is good for. Long, because an edge node may be cut
/// off from the control plane for months and must keep answering its gateway; a node
/// renews at every start it can reach the control plane.
pub const CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// Most names one certificate may carry.
const MAX_NAMES: usize = 32;

/// A certificate or key that could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM text held no certificate or key, or a broken one.
    #[error("{what}: {detail}; expected PEM text")]
    Pem {
        /// What was being read.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A certificate signing request was refused.
    #[error("certificate request refused: {0}")]
    Request(String),
    /// Making or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An agent's data plane: serves, never dials.
    Node,
    /// The control plane or a gateway: serves, and dials agents.
    Fleet,
}

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, then (for an operator's own) its intermediates.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads `NAME.pem` and `NAME.key` from `dir`; `None` if either is missing.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Self>, TlsError> {
        let read = |path: PathBuf| match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Io { path, source }),
        };
        let cert = read(dir.join(format!("{name}.pem")))?;
        let key = read(dir.join(format!("{name}.key")))?;
        Ok(cert
            .zip(key)
            .map(|(cert_pem, key_pem)| Self { cert_pem, key_pem }))
    }

    /// Writes `NAME.pem` and `NAME.key` (owner-only) into `dir`, each replaced whole.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        write_private(&dir.join(format!("{name}.key")), &self.key_pem)?;
        write_private(&dir.join(format!("{name}.pem")), &self.cert_pem)
    }
}

/// A new key pair and a request to certify it for `names` (IP addresses or DNS names).
pub fn request(subject: &str, names: &[String]) -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, subject);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// The identity made of `key` and the certificate issued for it.
pub fn identity(key: &KeyPair, cert_pem: String) -> Identity {
    Identity {
        cert_pem,
        key_pem: key.serialize_pem(),
    }
}

/// The control plane's certificate authority.
pub struct Ca {
    cert_pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// The CA in `dir` (`ca.pem` and `ca.key`), made on first use. An operator who
    /// wants the fleet under their own CA puts its certificate and key there first.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if !key_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            // Named apart from every other fleet's CA, so a certificate from another one
            // reads as what it is: from an unknown issuer.
            let id = serial()?;
            params.distinguished_name.push(
                DnType::CommonName,
                format!("mycel fleet CA {}", &hex(&id.to_bytes())[..12]),
            );
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.serial_number = Some(serial()?);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(20 * 365);
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            tracing::info!(ca = %cert_path.display(), "made the fleet's certificate authority");
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            what: key_path.display().to_string(),
            detail: e.to_string(),
        })?;
        let der = first_cert(&cert_pem, &cert_path.display().to_string())?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Self {
            cert_pem,
            der,
            issuer,
        })
    }

    /// The CA certificate, PEM: what every member of the fleet trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The SHA-256 of the CA certificate, hex: what a join token carries so a joining
    /// node knows the CA it is handed is the right one.
    pub fn fingerprint(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref())
    }

    /// A certificate for `public_key`, named `subject`, valid for `names`.
    pub fn issue(
        &self,
        kind: Kind,
        subject: &str,
        names: &[String],
        public_key: &impl PublicKeyData,
    ) -> Result<String, TlsError> {
        if names.len() > MAX_NAMES {
            return Err(TlsError::Request(format!(
                "{} names; expected at most {MAX_NAMES}",
                names.len()
            )));
        }
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| TlsError::Request(format!("names {names:?}: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, subject);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            Kind::Node => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Kind::Fleet => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that disagree.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CERT_LIFETIME;
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }

    /// Signs a request (PEM) from someone else's key. Only the key and the names are
    /// taken from it; the subject and the usage are the CA's to say.
    pub fn sign_request(
        &self,
        kind: Kind,
        subject: &str,
        csr_pem: &str,
    ) -> Result<String, TlsError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Request(format!("not a valid signing request: {e}")))?;
        let names = request
            .params
            .subject_alt_names
            .iter()
            .map(|name| match name {
                SanType::IpAddress(ip) => Ok(ip.to_string()),
                SanType::DnsName(dns) => Ok(dns.as_str().to_owned()),
                other => Err(TlsError::Request(format!(
                    "name {other:?}; expected IP addresses and DNS names only"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.issue(kind, subject, &names, &request.public_key)
    }

    /// A fresh key and certificate for this process's own use.
    pub fn own_identity(
        &self,
        kind: Kind,
        subject: &str,
        names: &[String],
    ) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let cert_pem = self.issue(kind, subject, names, &key)?;
        Ok(identity(&key, cert_pem))
    }
}

/// The SHA-256 of the first certificate in `pem`, hex.
pub fn fingerprint(pem: &str) -> Result<String, TlsError> {
    let der = first_cert(pem, "the CA certificate")?;
    Ok(hex(
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
    ))
}

/// The names a certificate for a listener on `host` should carry: `host` itself and,
/// for a wildcard or loopback bind, this machine's loopback names and host name.
pub fn names_for(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    };
    for host in hosts {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {}
            _ => add(host.to_owned()),
        }
    }
    for local in ["localhost", "127.0.0.1", "::1"] {
        add(local.to_owned());
    }
    if let Some(name) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| rcgen::string::Ia5String::try_from(n.as_str()).is_ok())
    {
        add(name);
    }
    names
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "the CA certificate".into(),
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "the CA certificate".into(),
            detail: "no certificate in it".into(),
        });
    }
    Ok(roots)
}

fn chain_and_key(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "the certificate".into(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "the certificate".into(),
            detail: "no certificate in it".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the private key".into(),
            detail: e.to_string(),
        })?;
    Ok((chain, key))
}

/// What a listener serves with: `identity`, and when `client_ca` is given, only to
/// clients presenting a certificate from it that may authenticate clients.
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = chain_and_key(identity)?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a client dials with: trusting `ca_pem` only, presenting `identity` if given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some(identity) => {
            let (chain, key) = chain_and_key(identity)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Pem {
            what: what.to_owned(),
            detail: "no certificate in it".into(),
        })?
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            detail: e.to_string(),
        })
}

fn serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TlsError::Io {
        path: PathBuf::from("(random source)"),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to `path`, readable by its owner only, replacing any file there whole.
pub fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    // tempfile makes its files 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;
