//! Snapshotter errors and their gRPC status codes.

use crate::error::Error;

/// Errors of the snapshotter, mapped to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<SnapError> for tonic::Status {
    fn from(e: SnapError) -> Self {
        let msg = e.to_string();
        match e {
            SnapError::NotFound(_) => tonic::Status::not_found(msg),
            SnapError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            SnapError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            SnapError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            // A damaged image: the client can do something about it.
            SnapError::Store(Error::Damaged { .. }) => tonic::Status::failed_precondition(msg),
            SnapError::Store(_) => tonic::Status::internal(msg),
        }
    }
}

pub(super) type SResult<T> = std::result::Result<T, SnapError>;
