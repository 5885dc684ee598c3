//! The decoding half of an extraction, on a thread of its own: it reads the
//! blob, inflates it and hashes both streams, and hands the uncompressed
//! bytes to the writing thread in chunks through a bounded channel (at most
//! `DEPTH` chunks of `CHUNK` bytes in flight: memory stays bounded, and a
//! slow writer holds the reading back).
//!
//! The decoder reads its input to the end even when the writer has stopped
//! reading (the tar stream ended): the digests cover every byte. When the
//! writer failed, [`Decoding::stop`] makes it give up at the next chunk.

use super::stream::{corrupt, Decoder, HashRead};
use crate::error::{Error, Result};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

const CHUNK: usize = 256 * 1024;
const DEPTH: usize = 8;

/// What the decoding thread found.
pub(super) struct Decoded {
    pub(super) blob_digest: String,
    pub(super) compressed_bytes: u64,
    pub(super) diff_id: String,
    pub(super) uncompressed_bytes: u64,
}

/// The running decoding thread.
pub(super) struct Decoding<'scope> {
    handle: ScopedJoinHandle<'scope, Result<Decoded>>,
    stop: Arc<AtomicBool>,
}

impl Decoding<'_> {
    /// Ask the thread to give up (the writer failed).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(super) fn join(self) -> Result<Decoded> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the layer decoding thread panicked".into())))
    }
}

/// Start decoding `blob` on a thread of `scope`; the returned reader yields
/// the uncompressed stream.
pub(super) fn spawn<'scope, 'env, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    blob: R,
) -> (ChunkReader, Decoding<'scope>) {
    let (tx, rx) = sync_channel(DEPTH);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let handle = scope.spawn(move || decode(blob, tx, &s2));
    (
        ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
        Decoding { handle, stop },
    )
}

fn decode<R: Read>(
    blob: R,
    tx: SyncSender<io::Result<Vec<u8>>>,
    stop: &AtomicBool,
) -> Result<Decoded> {
    let mut raw = BufReader::with_capacity(1 << 20, HashRead::new(blob));
    let magic = raw.fill_buf().map_err(corrupt)?.to_vec();
    if magic.is_empty() {
        return Err(Error::Corrupt("empty layer blob".into()));
    }
    let decoder = if magic.starts_with(&[0x1f, 0x8b]) {
        Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(raw)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(raw).map_err(corrupt)?)
    } else {
        Decoder::Plain(raw)
    };
    let mut plain = HashRead::new(decoder);
    let mut connected = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Other("layer decoding stopped".into()));
        }
        let mut buf = vec![0u8; CHUNK];
        let n = match read_full(&mut plain, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                if connected {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                return Err(corrupt(e));
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        // A writer that stopped reading (end of the tar stream) leaves the
        // rest to be hashed only.
        if connected && tx.send(Ok(buf)).is_err() {
            connected = false;
        }
    }
    drop(tx);
    let (decoder, diff_id, uncompressed_bytes) = plain.finish();
    let mut raw = decoder.into_raw();
    io::copy(&mut raw, &mut io::sink()).map_err(corrupt)?;
    let (_, blob_digest, compressed_bytes) = raw.into_inner().finish();
    Ok(Decoded {
        blob_digest,
        compressed_bytes,
        diff_id,
        uncompressed_bytes,
    })
}

/// Fill `buf` as far as the stream goes (fewer bytes only at its end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The uncompressed stream, as the decoding thread sends it. Its end is the
/// channel's: the decoder's own verdict comes from [`Decoding::join`].
pub(super) struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let k = buf.len().min(self.chunk.len() - self.pos);
        buf[..k].copy_from_slice(&self.chunk[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_every_byte_and_hashes_the_rest() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            let (mut r, d) = spawn(s, &data[..]);
            // Read only part of it, as a tar reader that met the end marker.
            let mut first = vec![0u8; CHUNK + 5];
            r.read_exact(&mut first).expect("read");
            assert_eq!(first[..], data[..CHUNK + 5]);
            drop(r);
            let d = d.join().expect("decoded");
            assert_eq!(d.uncompressed_bytes, data.len() as u64);
            assert_eq!(d.compressed_bytes, data.len() as u64);
            assert_eq!(d.diff_id, d.blob_digest, "plain stream: same bytes");
        });
    }

    #[test]
    fn a_corrupt_stream_reaches_both_sides() {
        // gzip magic, then garbage.
        let mut data = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        data.extend(std::iter::repeat_n(0xffu8, 1000));
        std::thread::scope(|s| {
            let (mut r, d) = spawn(s, &data[..]);
            let mut out = Vec::new();
            assert!(r.read_to_end(&mut out).is_err());
            assert!(matches!(d.join(), Err(Error::Corrupt(_))));
        });
    }

    #[test]
    fn stop_ends_a_decoder_whose_reader_left() {
        let data = vec![0u8; 64 * CHUNK];
        std::thread::scope(|s| {
            let (r, d) = spawn(s, &data[..]);
            d.stop();
            drop(r);
            assert!(d.join().is_err(), "a stopped decoder reports no digests");
        });
    }
}
