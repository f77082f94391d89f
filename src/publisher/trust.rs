//! Trust roots for `amqps://` on top of the webpki roots lapin bundles: the
//! operating system's trust store, read once at cold start, and
//! `AMQP_CA_FILE`. lapin takes extra roots as one PEM text, so both are
//! handed over as PEM. The Secrets Manager client trusts the same system
//! roots (as DER) besides the webpki ones.

use std::{fmt, sync::Arc, time::Instant};

use base64::{Engine, engine::general_purpose::STANDARD};
use rustls::pki_types::CertificateDer;

use crate::config::TrustedCa;

/// The CA certificates of the operating system's trust store, found as
/// OpenSSL finds them: the files `SSL_CERT_FILE` and `SSL_CERT_DIR` name
/// when either is set, else the distribution's bundle and certificate
/// directory (`/etc/pki/tls/certs/ca-bundle.crt` on Amazon Linux 2023,
/// `/etc/ssl/certs` on Debian).
#[derive(Clone, Default)]
pub struct SystemRoots {
    /// The usable roots as PEM (for lapin) and as DER (for the Secrets
    /// Manager client); shared, as the settings are cloned.
    pem: Arc<str>,
    certificates: Arc<[CertificateDer<'static>]>,
    skipped: usize,
}

impl SystemRoots {
    /// Reads the store and logs once how many roots it gave. No store, or
    /// one that cannot be read, is not an error: the bundled roots and
    /// `AMQP_CA_FILE` still apply (an unreadable one is logged at WARN).
    pub fn load() -> Self {
        let started = Instant::now();
        let found = rustls_native_certs::load_native_certs();
        let roots = Self::from_certificates(&found.certs);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match found.errors.first() {
            // The errors name files and I/O or PEM syntax, never a
            // certificate's contents.
            Some(error) => tracing::warn!(
                roots = roots.roots(),
                skipped = roots.skipped,
                errors = found.errors.len(),
                error = %error,
                duration_ms,
                "system trust store read with errors; the roots it gave and the bundled ones are trusted"
            ),
            None => tracing::info!(
                roots = roots.roots(),
                skipped = roots.skipped,
                duration_ms,
                "system trust store read"
            ),
        }
        roots
    }

    /// Keeps the certificates rustls can use as trust anchors. The others
    /// (stores hold some ancient or malformed ones) are counted, not fatal:
    /// the rest of the store is still worth trusting.
    pub fn from_certificates(certificates: &[CertificateDer<'_>]) -> Self {
        // Only to check each certificate the way rustls will at connect time.
        let mut anchors = rustls::RootCertStore::empty();
        let mut pem = String::new();
        let mut usable = Vec::new();
        for certificate in certificates {
            if anchors
                .add(CertificateDer::from(certificate.as_ref()))
                .is_ok()
            {
                push_pem(&mut pem, certificate);
                usable.push(CertificateDer::from(certificate.as_ref().to_vec()));
            }
        }
        Self {
            skipped: certificates.len() - usable.len(),
            pem: pem.into(),
            certificates: usable.into(),
        }
    }

    /// The usable roots as PEM text (empty when there are none).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The usable roots as DER certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    /// How many certificates of the store are trusted.
    pub fn roots(&self) -> usize {
        self.certificates.len()
    }

    /// How many certificates of the store rustls cannot use as anchors.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// Counts only: a dump of the certificates would help no one.
impl fmt::Debug for SystemRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemRoots")
            .field("roots", &self.roots())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// The roots to add to the bundled ones, as the one PEM text lapin's TLS
/// configuration takes; `None` when there are none.
pub fn extra_roots_pem(system: Option<&SystemRoots>, ca: Option<&TrustedCa>) -> Option<String> {
    let system = system.map_or("", SystemRoots::pem);
    let ca = ca.map_or("", TrustedCa::pem);
    if system.is_empty() && ca.is_empty() {
        return None;
    }
    // The system roots end with a line break, so the CA file's first line
    // stays a line of its own whatever the file looks like.
    let mut pem = String::with_capacity(system.len() + ca.len());
    pem.push_str(system);
    pem.push_str(ca);
    Some(pem)
}

/// Appends `der` as a PEM `CERTIFICATE` block, in the 64-column lines of
/// RFC 7468: 48 bytes make exactly 64 base64 characters, so only the last
/// line is padded.
fn push_pem(out: &mut String, der: &[u8]) {
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in der.chunks(48) {
        STANDARD.encode_string(chunk, out);
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    /// A self-signed CA certificate (P-256), only parsed here.
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBiTCCAS+gAwIBAgIUaFxQu8Odl2041uLOIvg1C/LB1HAwCgYIKoZIzj0EAwIw\nGTEXMBUGA1UEAwwOY29uZmlnIHRlc3QgQ0EwIBcNMjYxMTIzMTYwNjQyWhgPMjEy\nNjEwMzAxNjA2NDJaMBkxFzAVBgNVBAMMDmNvbmZpZyB0ZXN0IENBMFkwEwYHKoZI\nzj0CAQYIKoZIzj0DAQcDQgAEaKbnciTfPE9mv+TUGcmV88a+fYmkZLx6FCNy4KNa\nqisVW1z/nxSV0qT6rm9dglJ15enZZTVggNn0fg3xEKR97aNTMFEwHQYDVR0OBBYE\nFBh1R9fcjJe99m7spaH0jQfWyUokMB8GA1UdIwQYMBaAFBh1R9fcjJe99m7spaH0\njQfWyUokMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAO3FeDrx\nU6XLAmxZT134TEI4VUBsntXawGvtN0V0wv/EAiAP+AGROZkj+mvxEjhAsO7+Rv9N\nlOwzDzXuWzX8K3aNLg==\n-----END CERTIFICATE-----\n";

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn ca_file(pem: &str) -> TrustedCa {
        let dir =
            std::env::temp_dir().join(format!("ef-trust-{}-{}", std::process::id(), pem.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        let ca = TrustedCa::read(&path.to_string_lossy()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        ca
    }

    #[test]
    fn pem_encoding_gives_back_the_same_certificate_in_64_column_lines() {
        let original = der(CA);
        let roots = SystemRoots::from_certificates(&original);
        assert_eq!(roots.roots(), 1);
        assert_eq!(der(roots.pem()), original);
        // The same text as openssl writes.
        assert_eq!(roots.pem(), CA);
        assert_eq!(roots.certificates(), original.as_slice());
    }

    #[test]
    fn pem_encoding_round_trips_every_length_of_the_last_line() {
        // Not certificates: only the encoding is under test here.
        for len in [0, 1, 2, 3, 47, 48, 49, 95, 96, 97, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut pem = String::new();
            push_pem(&mut pem, &bytes);
            assert!(pem.lines().all(|l| l.len() <= 64), "{len}: {pem}");
            let back = der(&pem);
            assert_eq!(back.len(), 1, "{len}");
            assert_eq!(back[0].as_ref(), bytes.as_slice(), "{len}");
        }
    }

    #[test]
    fn certificates_rustls_cannot_use_as_anchors_are_skipped_and_counted() {
        let mut certificates = der(CA);
        certificates.insert(0, CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        certificates.push(CertificateDer::from(b"not DER at all".to_vec()));
        let roots = SystemRoots::from_certificates(&certificates);
        assert_eq!((roots.roots(), roots.skipped()), (1, 2));
        assert_eq!(roots.pem(), CA);
    }

    #[test]
    fn no_system_roots_and_no_ca_file_add_nothing() {
        assert_eq!(extra_roots_pem(None, None), None);
        let empty = SystemRoots::from_certificates(&[]);
        assert_eq!(extra_roots_pem(Some(&empty), None), None);
        assert_eq!(format!("{empty:?}"), "SystemRoots { roots: 0, skipped: 0 }");
    }

    #[test]
    fn system_roots_and_the_ca_file_are_both_in_the_pem() {
        let system = SystemRoots::from_certificates(&der(CA));
        // A CA file without a final line break, placed after the system
        // roots: each certificate still parses.
        let ca = ca_file(CA.trim_end());
        let pem = extra_roots_pem(Some(&system), Some(&ca)).unwrap();
        assert_eq!(der(&pem).len(), 2);
        assert_eq!(extra_roots_pem(None, Some(&ca)).unwrap(), CA.trim_end());
        assert_eq!(extra_roots_pem(Some(&system), None).unwrap(), CA);
    }
}
