//! Content assembly: basic.publish + content header + body frames become one
//! message. Body frames are kept as slices of the read buffer; only a body
//! split over several frames is joined.
//!
//! The state lives in one heap block, so that handing a pending publish
//! from frame to frame moves a pointer, not a few hundred bytes of
//! `Publish` and `BasicProperties`.

use crate::protocol::{AmqpError, BasicProperties};
use amq_protocol::protocol::basic::Publish;
use bytes::{Bytes, BytesMut};

pub struct PendingPublish(Box<State>);

struct State {
    publish: Publish,
    header: Option<Header>,
    /// The body when it came in one frame (the usual case): no Vec then.
    first: Option<Bytes>,
    /// Further body frames, for bodies larger than one frame.
    rest: Vec<Bytes>,
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

// A completed message is handed on by value exactly once (the channel takes
// its fields apart); boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Progress {
    Incomplete(PendingPublish),
    Complete(Assembled),
}

impl PendingPublish {
    pub fn new(publish: Publish) -> Self {
        PendingPublish(Box::new(State {
            publish,
            header: None,
            first: None,
            rest: Vec::new(),
            received: 0,
        }))
    }

    pub fn expects_header(&self) -> bool {
        self.0.header.is_none()
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
        self.0.header = Some(Header {
            body_size,
            properties,
            raw_properties,
        });
        Ok(self.progress())
    }

    pub fn body(mut self, payload: Bytes) -> Result<Progress, AmqpError> {
        let state = &mut *self.0;
        let body_size = state.header.as_ref().map_or(0, |h| h.body_size);
        state.received += payload.len() as u64;
        if state.received > body_size {
            return Err(AmqpError::unexpected_frame(format!(
                "content body is larger than the {body_size} bytes its header declared"
            ))
            .on(60, 40));
        }
        if !payload.is_empty() {
            if state.first.is_none() {
                state.first = Some(payload);
            } else {
                state.rest.push(payload);
            }
        }
        Ok(self.progress())
    }

    fn progress(self) -> Progress {
        match &self.0.header {
            Some(header) if self.0.received >= header.body_size => {}
            _ => return Progress::Incomplete(self),
        }
        let State {
            publish,
            header,
            first,
            rest,
            received,
        } = *self.0;
        let Some(header) = header else {
            unreachable!("checked above")
        };
        let body = match (first, rest.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(body), true) => body,
            (Some(first), false) => {
                let mut joined = BytesMut::with_capacity(received as usize);
                joined.extend_from_slice(&first);
                for chunk in &rest {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Progress::Complete(Assembled {
            publish,
            properties: header.properties,
            raw_properties: header.raw_properties,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(progress: Result<Progress, AmqpError>) -> Assembled {
        match progress {
            Ok(Progress::Complete(message)) => message,
            Ok(Progress::Incomplete(_)) => panic!("incomplete"),
            Err(e) => panic!("{e}"),
        }
    }

    fn incomplete(progress: Result<Progress, AmqpError>) -> PendingPublish {
        match progress {
            Ok(Progress::Incomplete(pending)) => pending,
            Ok(Progress::Complete(_)) => panic!("complete too early"),
            Err(e) => panic!("{e}"),
        }
    }

    fn publish() -> PendingPublish {
        PendingPublish::new(Publish {
            exchange: "x".into(),
            routing_key: "k".into(),
            mandatory: true,
            immediate: false,
        })
    }

    #[test]
    fn an_empty_body_completes_with_the_header() {
        let props = BasicProperties::default().with_priority(1);
        let message = complete(publish().header(60, 0, props.clone(), Bytes::new()));
        assert!(message.body.is_empty());
        assert_eq!(message.properties, props);
        assert_eq!(message.publish.routing_key.as_str(), "k");
    }

    #[test]
    fn bodies_in_one_or_several_frames() {
        let pending = incomplete(publish().header(60, 3, BasicProperties::default(), Bytes::new()));
        assert!(!pending.expects_header());
        let message = complete(pending.body(Bytes::from_static(b"abc")));
        assert_eq!(&message.body[..], b"abc");

        let pending = incomplete(publish().header(60, 6, BasicProperties::default(), Bytes::new()));
        let pending = incomplete(pending.body(Bytes::from_static(b"ab")));
        let pending = incomplete(pending.body(Bytes::new()));
        let pending = incomplete(pending.body(Bytes::from_static(b"cd")));
        let message = complete(pending.body(Bytes::from_static(b"ef")));
        assert_eq!(&message.body[..], b"abcdef");
    }

    #[test]
    fn errors_keep_their_texts() {
        let Err(e) = publish().header(50, 0, BasicProperties::default(), Bytes::new()) else {
            panic!("accepted class 50")
        };
        assert!(e.text.ends_with("got one for class 50 instead"), "{e}");
        let pending = incomplete(publish().header(60, 2, BasicProperties::default(), Bytes::new()));
        let Err(e) = pending.body(Bytes::from_static(b"abc")) else {
            panic!("accepted too much")
        };
        assert!(
            e.text
                .ends_with("larger than the 2 bytes its header declared"),
            "{e}"
        );
    }
}
