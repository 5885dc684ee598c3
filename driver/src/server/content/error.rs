//! Errors of the content-store writer.

use std::path::PathBuf;

/// Why a blob could not be written into containerd's content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("cannot connect to containerd at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("containerd {call}: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd ended the write stream of {digest} early")]
    StreamEnded { digest: String },
    #[error("containerd committed {digest} as {got}")]
    WrongDigest { digest: String, got: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nvtier has no record of {0} (its layers were attached from other images); its blobs are not written")]
    NoRecord(String),
    #[error("invalid gRPC metadata value {0:?}")]
    Metadata(String),
    #[error("{0}")]
    Source(#[from] crate::error::Error),
}

impl ContentError {
    pub(super) fn rpc(call: &'static str, status: tonic::Status) -> ContentError {
        ContentError::Rpc {
            call,
            status: Box::new(status),
        }
    }
}
