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

/// The opaque suffix of a direct reply-to address.
pub fn reply_to_token() -> String {
    random_token()
}

/// RabbitMQ strips CR and LF from queue and exchange names.
pub fn clean(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

#[cfg(test)]
mod tests {
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
