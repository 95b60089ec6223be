//! Stand-in for the TLS adapter in builds without the `tls` feature: the same names, but no
//! value of [`TlsConfig`] or [`TlsSession`] can exist, so the reactor keeps one code path and
//! the compiler removes the TLS branches.

use std::io::{self, Write};
use std::path::Path;

use crate::out::{OutEntry, OutQueue};

/// TLS settings; uninhabited without the `tls` feature.
#[derive(Debug, Clone)]
pub enum TlsConfig {}

pub use crate::tls_error::TlsError;

impl TlsConfig {
    /// Always fails: this build has no TLS.
    ///
    /// # Errors
    /// Always.
    pub fn from_pem_files(_cert: &Path, _key: &Path) -> Result<TlsConfig, TlsError> {
        Err(TlsError(
            "this wsloop was built without the `tls` feature".to_owned(),
        ))
    }

    pub(crate) fn accept(&self) -> Result<Box<TlsSession>, TlsError> {
        match *self {}
    }
}

/// One connection's TLS state; uninhabited without the `tls` feature.
#[derive(Debug)]
pub(crate) enum TlsSession {}

/// What one decrypt step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decrypted {
    /// Plaintext bytes written to the front of the buffer.
    pub(crate) len: usize,
    /// The peer sent `close_notify`.
    pub(crate) closed: bool,
}

#[allow(missing_docs, clippy::missing_errors_doc)]
impl TlsSession {
    pub(crate) fn decrypt(
        &mut self,
        _cipher: &mut &[u8],
        _plain: &mut [u8],
    ) -> io::Result<Decrypted> {
        match *self {}
    }
    pub(crate) fn wants_write(&self) -> bool {
        match *self {}
    }
    pub(crate) fn is_handshaking(&self) -> bool {
        match *self {}
    }
    pub(crate) fn memory(&self) -> usize {
        match *self {}
    }
    pub(crate) fn send_pending(&mut self, _socket: &mut impl Write) -> io::Result<()> {
        match *self {}
    }
    pub(crate) fn write_with(
        &mut self,
        _socket: &mut impl Write,
        _out: &mut OutQueue,
        _outbox_bytes: &[u8],
        _entries: &[OutEntry],
    ) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn close_notify(&mut self) {
        match *self {}
    }
}
