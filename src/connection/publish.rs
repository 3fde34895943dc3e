//! Content assembly: basic.publish + content header + body frames become one
//! message. Body frames are kept as slices of the read buffer; only a body
//! split over several frames is joined.

use crate::protocol::{AmqpError, BasicProperties};
use amq_protocol::protocol::basic::Publish;
use bytes::{Bytes, BytesMut};

pub struct PendingPublish {
    pub publish: Publish,
    header: Option<Header>,
    chunks: Vec<Bytes>,
    received: u64,
}

struct Header {
    body_size: u64,
    properties: BasicProperties,
    raw_properties: Bytes,
}

/// A message whose frames have all arrived.
pub struct Assembled {
    pub publish: Publish,
    pub properties: BasicProperties,
    pub raw_properties: Bytes,
    pub body: Bytes,
}

pub enum Progress {
    Incomplete(PendingPublish),
    Complete(Assembled),
}

impl PendingPublish {
    pub fn new(publish: Publish) -> Self {
        PendingPublish {
            publish,
            header: None,
            chunks: Vec::new(),
            received: 0,
        }
    }

    pub fn expects_header(&self) -> bool {
        self.header.is_none()
    }

    pub fn header(
        mut self,
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
        raw_properties: Bytes,
    ) -> Result<Progress, AmqpError> {
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {class_id} instead"
            ))
            .on(60, 40));
        }
        self.header = Some(Header {
            body_size,
            properties,
            raw_properties,
        });
        Ok(self.progress())
    }

    pub fn body(mut self, payload: Bytes) -> Result<Progress, AmqpError> {
        let body_size = self.header.as_ref().map_or(0, |h| h.body_size);
        self.received += payload.len() as u64;
        if self.received > body_size {
            return Err(AmqpError::unexpected_frame(format!(
                "content body is larger than the {body_size} bytes its header declared"
            ))
            .on(60, 40));
        }
        if !payload.is_empty() {
            self.chunks.push(payload);
        }
        Ok(self.progress())
    }

    fn progress(self) -> Progress {
        let Some(header) = &self.header else {
            return Progress::Incomplete(self);
        };
        if self.received < header.body_size {
            return Progress::Incomplete(self);
        }
        let Some(header) = self.header else {
            return Progress::Incomplete(self);
        };
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.received as usize);
                for chunk in &self.chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Progress::Complete(Assembled {
            publish: self.publish,
            properties: header.properties,
            raw_properties: header.raw_properties,
            body,
        })
    }
}
