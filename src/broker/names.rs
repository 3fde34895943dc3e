//! Server-generated names, in RabbitMQ's format.

use base64::Engine;

fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `amq.gen-` + 22 characters, as RabbitMQ names server-named queues.
pub fn queue_name() -> String {
    format!("amq.gen-{}", random_token())
}

/// `amq.ctag-` + 22 characters, for consumers without a tag.
pub fn consumer_tag() -> String {
    format!("amq.ctag-{}", random_token())
}

/// The opaque suffix of a direct reply-to address. On a cluster node it
/// also names the node (as RabbitMQ's encodes the consumer's process), so
/// that a reply published on another node finds its way back.
pub fn reply_to_token(node: Option<&str>) -> String {
    match node {
        Some(node) => format!(
            "{}.{}",
            random_token(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(node)
        ),
        None => random_token(),
    }
}

/// The node a direct reply-to suffix names, if it names one.
pub fn reply_to_node(token: &str) -> Option<String> {
    let (_, node) = token.split_once('.')?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(node)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// RabbitMQ strips CR and LF from queue and exchange names.
pub fn clean(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reply_to_token_names_its_node_on_a_cluster() {
        let token = super::reply_to_token(Some("broker@n1"));
        assert_eq!(super::reply_to_node(&token).as_deref(), Some("broker@n1"));
        assert_eq!(super::reply_to_node(&super::reply_to_token(None)), None);
        assert_eq!(super::reply_to_node("garbage.!!"), None);
    }

    #[test]
    fn generated_names_have_rabbitmq_shape() {
        let q = super::queue_name();
        assert_eq!(q.len(), 30);
        assert!(q.starts_with("amq.gen-"));
        assert!(q[8..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
