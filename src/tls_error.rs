//! The TLS setup error, one type whether or not the `tls` feature is compiled in (without it,
//! every TLS setting fails with it).

use std::fmt;

/// Why a certificate or key could not be used (or, built without the `tls` feature, why TLS
/// cannot be set up at all): a message for the operator, naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub(crate) String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}
