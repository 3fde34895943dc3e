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
use std::sync::Arc;

pub struct PendingPublish(Box<State>);

/// The header's fields sit directly in the block (no `Option<Header>` to
/// build and move): `body_size` is `None` until the header arrived.
struct State {
    publish: Publish,
    body_size: Option<u64>,
    properties: Arc<BasicProperties>,
    raw_properties: Bytes,
    /// The body when it came in one frame (the usual case): no Vec then.
    first: Option<Bytes>,
    /// Further body frames, for bodies larger than one frame.
    rest: Vec<Bytes>,
    received: u64,
}

/// A message whose frames have all arrived.
pub struct Assembled {
    pub publish: Publish,
    pub properties: Arc<BasicProperties>,
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
            body_size: None,
            properties: crate::protocol::no_properties(),
            raw_properties: Bytes::new(),
            first: None,
            rest: Vec::new(),
            received: 0,
        }))
    }

    pub fn expects_header(&self) -> bool {
        self.0.body_size.is_none()
    }

    pub fn header(
        mut self,
        class_id: u16,
        body_size: u64,
        properties: Arc<BasicProperties>,
        raw_properties: Bytes,
    ) -> Result<Progress, AmqpError> {
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {class_id} instead"
            ))
            .on(60, 40));
        }
        let state = &mut *self.0;
        state.body_size = Some(body_size);
        state.properties = properties;
        state.raw_properties = raw_properties;
        self.progress()
    }

    pub fn body(mut self, payload: Bytes) -> Result<Progress, AmqpError> {
        let state = &mut *self.0;
        let body_size = state.body_size.unwrap_or(0);
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
        self.progress()
    }

    /// Completes the message once the header and the whole body are in.
    /// Fields are taken out of the heap block one by one, straight into the
    /// result, rather than moving the whole state onto the stack first.
    fn progress(mut self) -> Result<Progress, AmqpError> {
        let state = &mut *self.0;
        match state.body_size {
            Some(body_size) if state.received >= body_size => {}
            _ => return Ok(Progress::Incomplete(self)),
        }
        let body = match (state.first.take(), state.rest.is_empty()) {
            (None, _) => Bytes::new(),
            (Some(body), true) => body,
            (Some(first), false) => {
                let mut joined = BytesMut::with_capacity(state.received as usize);
                joined.extend_from_slice(&first);
                for chunk in &state.rest {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Ok(Progress::Complete(Assembled {
            publish: std::mem::take(&mut state.publish),
            properties: std::mem::take(&mut state.properties),
            raw_properties: std::mem::take(&mut state.raw_properties),
            body,
        }))
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
        let message = complete(publish().header(60, 0, Arc::new(props.clone()), Bytes::new()));
        assert!(message.body.is_empty());
        assert_eq!(*message.properties, props);
        assert_eq!(message.publish.routing_key.as_str(), "k");
    }

    #[test]
    fn bodies_in_one_or_several_frames() {
        let pending = incomplete(publish().header(60, 3, Arc::default(), Bytes::new()));
        assert!(!pending.expects_header());
        let message = complete(pending.body(Bytes::from_static(b"abc")));
        assert_eq!(&message.body[..], b"abc");

        let pending = incomplete(publish().header(60, 6, Arc::default(), Bytes::new()));
        let pending = incomplete(pending.body(Bytes::from_static(b"ab")));
        let pending = incomplete(pending.body(Bytes::new()));
        let pending = incomplete(pending.body(Bytes::from_static(b"cd")));
        let message = complete(pending.body(Bytes::from_static(b"ef")));
        assert_eq!(&message.body[..], b"abcdef");
    }

    #[test]
    fn errors_keep_their_texts() {
        let Err(e) = publish().header(50, 0, Arc::default(), Bytes::new()) else {
            panic!("accepted class 50")
        };
        assert!(e.text.ends_with("got one for class 50 instead"), "{e}");
        let pending = incomplete(publish().header(60, 2, Arc::default(), Bytes::new()));
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
