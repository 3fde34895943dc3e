//! AMQP errors in the form RabbitMQ sends them: a reply code, a text that
//! starts with the code's name, and the class/method that caused it.

use std::fmt;

/// Whether an error closes the channel or the whole connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorScope {
    Channel,
    Connection,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    pub scope: ErrorScope,
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub mod code {
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

fn code_name(code: u16) -> &'static str {
    match code {
        code::CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        code::NO_ROUTE => "NO_ROUTE",
        code::NO_CONSUMERS => "NO_CONSUMERS",
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::INVALID_PATH => "INVALID_PATH",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::RESOURCE_ERROR => "RESOURCE_ERROR",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

impl AmqpError {
    /// `detail` is the part after "CODE_NAME - ".
    pub fn new(scope: ErrorScope, code: u16, detail: impl fmt::Display) -> Self {
        AmqpError {
            scope,
            code,
            text: format!("{} - {}", code_name(code), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn channel(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(ErrorScope::Channel, code, detail)
    }

    /// An error another cluster node gave, as it gave it (`text` already
    /// starts with the code's name).
    pub fn from_node(connection: bool, code: u16, text: String) -> Self {
        AmqpError {
            scope: if connection {
                ErrorScope::Connection
            } else {
                ErrorScope::Channel
            },
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn connection(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(ErrorScope::Connection, code, detail)
    }

    pub fn not_found(detail: impl fmt::Display) -> Self {
        Self::channel(code::NOT_FOUND, detail)
    }

    pub fn access_refused(detail: impl fmt::Display) -> Self {
        Self::channel(code::ACCESS_REFUSED, detail)
    }

    pub fn precondition_failed(detail: impl fmt::Display) -> Self {
        Self::channel(code::PRECONDITION_FAILED, detail)
    }

    pub fn resource_locked(detail: impl fmt::Display) -> Self {
        Self::channel(code::RESOURCE_LOCKED, detail)
    }

    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::connection(code::NOT_IMPLEMENTED, detail)
    }

    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::connection(code::COMMAND_INVALID, detail)
    }

    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::connection(code::FRAME_ERROR, detail)
    }

    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::connection(code::UNEXPECTED_FRAME, detail)
    }

    pub fn channel_error(detail: impl fmt::Display) -> Self {
        Self::connection(code::CHANNEL_ERROR, detail)
    }

    pub fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::connection(code::NOT_ALLOWED, detail)
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::connection(code::INTERNAL_ERROR, detail)
    }

    /// Records which method caused the error (sent back in the close).
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Sets the method only if none is set yet.
    pub fn on_if_unset(self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.on(class_id, method_id)
        } else {
            self
        }
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for AmqpError {}

/// Formats bytes as Erlang binary syntax, as RabbitMQ's FRAME_ERROR texts do.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(32)];
    if !shown.is_empty() && shown.iter().all(|b| (0x20..0x7f).contains(b) && *b != b'"') {
        format!("<<\"{}\">>", String::from_utf8_lossy(shown))
    } else {
        let parts: Vec<String> = shown.iter().map(|b| b.to_string()).collect();
        format!("<<{}>>", parts.join(","))
    }
}
