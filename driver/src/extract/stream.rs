//! The layer blob stream: decompression (gzip, zstd or plain) and the
//! digests of the compressed and uncompressed bytes.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io;
use std::io::{BufReader, Read};

/// A reader that counts its bytes and, if asked to, hashes them.
pub(super) struct HashRead<R> {
    inner: R,
    hasher: Option<Sha256>,
    n: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..k]);
        }
        self.n += k as u64;
        Ok(k)
    }
}

impl<R> HashRead<R> {
    /// Count only, unless `hash`.
    pub(super) fn hashing(inner: R, hash: bool) -> Self {
        HashRead {
            inner,
            hasher: hash.then(Sha256::new),
            n: 0,
        }
    }
    /// The reader, the `sha256:` digest (if hashed) and the byte count.
    pub(super) fn finish(self) -> (R, Option<String>, u64) {
        (
            self.inner,
            self.hasher
                .map(|h| format!("sha256:{}", hex::encode(h.finalize()))),
            self.n,
        )
    }
}

pub(super) type Raw<R> = BufReader<HashRead<R>>;

pub(super) enum Decoder<R: Read> {
    Gzip(Box<flate2::bufread::MultiGzDecoder<Raw<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Raw<R>>),
    Plain(Raw<R>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    pub(super) fn into_raw(self) -> Raw<R> {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(d) => d,
        }
    }
}

pub(super) fn check_sha256(what: &str, expected: Option<&str>, actual: Option<&str>) -> Result<()> {
    if let Some(exp) = expected {
        let actual = actual.unwrap_or("(not computed)");
        if !exp.starts_with("sha256:") {
            return Err(Error::Digest {
                what: what.into(),
                expected: exp.into(),
                actual: "(only sha256 digests are supported)".into(),
            });
        }
        if exp != actual {
            return Err(Error::Digest {
                what: what.into(),
                expected: exp.into(),
                actual: actual.into(),
            });
        }
    }
    Ok(())
}

pub(super) fn corrupt(e: io::Error) -> Error {
    Error::Corrupt(e.to_string())
}
