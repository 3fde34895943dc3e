//! The read side of a connection: a growing buffer, filled by large reads,
//! from which whole frames are decoded.

use crate::protocol::{AmqpError, Frame, FrameDecoder};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

pub enum ReadError {
    Closed,
    Timeout,
    Protocol(AmqpError),
}

pub struct Reader {
    stream: Box<dyn AsyncRead + Unpin + Send>,
    pub buf: BytesMut,
    pub decoder: FrameDecoder,
    /// Reading nothing for this long ends the connection (missed heartbeats,
    /// or the handshake timeout before that).
    pub idle_timeout: Option<Duration>,
    /// When bytes last arrived: the idle deadline counts from here, not
    /// from the start of a read that something else interrupted.
    last_read: tokio::time::Instant,
}

const READ_CHUNK: usize = 64 * 1024;

impl Reader {
    pub fn new(stream: Box<dyn AsyncRead + Unpin + Send>, frame_max: u32) -> Self {
        Reader {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(frame_max),
            idle_timeout: None,
            last_read: tokio::time::Instant::now(),
        }
    }

    /// Reads at least one more byte into the buffer.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let n = match self.idle_timeout {
            Some(limit) => tokio::time::timeout_at(self.last_read + limit, read)
                .await
                .map_err(|_| ReadError::Timeout)?,
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => Err(ReadError::Closed),
            Ok(_) => {
                self.last_read = tokio::time::Instant::now();
                Ok(())
            }
        }
    }

    /// A frame already buffered, if any.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(ReadError::Protocol)
    }

    /// The next frame, reading as needed.
    pub async fn frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Reads exactly 8 bytes of protocol header.
    pub async fn protocol_header(&mut self) -> Result<[u8; 8], ReadError> {
        while self.buf.len() < 8 {
            self.fill().await?;
        }
        let head = self.buf.split_to(8);
        let mut out = [0u8; 8];
        out.copy_from_slice(&head);
        Ok(out)
    }
}
