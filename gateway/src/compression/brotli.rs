//! Owns the brotli encoder. Pingora 0.9's brotli compressor only flushes at the end of
//! the body and never writes the stream's final meta-block, so decoders reject what it
//! produces; this one uses the same `brotli` crate and finishes the stream.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::compression::Encode;

/// Matches Pingora's settings: 4 KiB buffer, 512 KiB window (lgwin 19).
pub struct BrotliEncoder {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
}

impl BrotliEncoder {
    pub fn new(level: u32) -> Self {
        Self {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        use pingora::OrErr;
        let Some(w) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        w.write_all(input).or_err(
            pingora::protocols::http::compression::COMPRESSION_ERROR,
            "while compressing brotli",
        )?;
        let out = if end {
            // Ends the stream (the last meta-block) and hands back what is left.
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(w.get_mut())
        };
        self.total_out += out.len();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("brotli", self.total_in, self.total_out, Duration::ZERO)
    }
}
