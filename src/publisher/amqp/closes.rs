//! For the unit tests: the errors lapin makes of the broker's
//! `connection.close` and `channel.close` (`on_connection_close_received`,
//! `on_channel_close_received`), which the adapter's pure parts read.

use lapin::ErrorKind;
use lapin::protocol::{AMQPError, channel, connection};

/// `queue.declare` (class 50, method 10): what a declaration is refused in.
pub(super) const QUEUE_DECLARE: (u16, u16) = (50, 10);
/// `basic.publish` (class 60, method 40): what a publish is refused in.
pub(super) const BASIC_PUBLISH: (u16, u16) = (60, 40);

/// The broker's `connection.close` during the handshake.
pub(super) fn connection_close(code: u16, text: &str) -> lapin::Error {
    let close = connection::Close {
        reply_code: code,
        reply_text: text.into(),
        class_id: 10,
        method_id: 40,
    };
    ErrorKind::ProtocolError(AMQPError::try_from(close).expect("a known reply code")).into()
}

/// The broker's `channel.close` in answer to `method` (class and method
/// ids).
pub(super) fn channel_close(
    code: u16,
    text: &str,
    (class_id, method_id): (u16, u16),
) -> lapin::Error {
    let close = channel::Close {
        reply_code: code,
        reply_text: text.into(),
        class_id,
        method_id,
    };
    ErrorKind::ProtocolError(AMQPError::try_from(close).expect("a known reply code")).into()
}
