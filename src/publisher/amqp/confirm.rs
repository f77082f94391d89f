//! What the broker's answer to one publish means: lapin's confirm (an ack,
//! a nack, a returned message beside either) as a [`Confirmation`], and a
//! confirm that never came because the broker closed the channel, which is
//! the message's own fault when it was larger than the broker takes.

use lapin::{ErrorKind, message::BasicReturnMessage};

use crate::publisher::{Confirmation, PublishError, Returned};

/// One publish's confirm as the batch sees it. A returned message rides
/// along whatever the outcome: it may be another record's (PITFALLS,
/// `basic.return` carries no delivery tag), so the batch matches it by its
/// message id.
pub(super) fn confirmation(answer: Result<lapin::Confirmation, lapin::Error>) -> Confirmation {
    match answer {
        Ok(lapin::Confirmation::Ack(returned)) => Confirmation {
            outcome: Ok(()),
            returned: returned.map(|r| returned_message(&r)),
        },
        Ok(lapin::Confirmation::Nack(returned)) => Confirmation {
            outcome: Err(PublishError::Nacked),
            returned: returned.map(|r| returned_message(&r)),
        },
        Ok(lapin::Confirmation::NotRequested) => Confirmation::failed(PublishError::ChannelLost(
            "the channel is not in confirm mode".into(),
        )),
        Err(e) => Confirmation::failed(confirm_error(&e)),
    }
}

/// A returned message, named by its message id; its body is dropped here.
fn returned_message(message: &BasicReturnMessage) -> Returned {
    Returned {
        message_id: message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string),
        code: message.reply_code,
        text: message.reply_text.to_string(),
    }
}

/// The failure of a confirm that did not come: a channel the broker closed
/// over a message larger than its `max_message_size` is a refusal of that
/// message (`TooLarge`, naming its size); anything else lost the channel.
pub(super) fn confirm_error(e: &lapin::Error) -> PublishError {
    if let ErrorKind::ProtocolError(p) = e.kind()
        && p.get_id() == 406
        && let Some((size, limit)) = size_refusal(p.get_message().as_str())
    {
        return PublishError::TooLarge {
            size,
            limit,
            text: format!("406 {}", p.get_message()),
        };
    }
    PublishError::ChannelLost(e.to_string())
}

/// The sizes in RabbitMQ's refusal of a message over its limit:
/// `PRECONDITION_FAILED - message size 532123 is larger than configured max
/// size 524288`.
fn size_refusal(text: &str) -> Option<(usize, usize)> {
    let rest = text.split_once("message size ")?.1;
    let (size, rest) = rest.split_once(" is larger than configured max size ")?;
    let limit: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((size.trim().parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use lapin::{BasicProperties, message::Delivery};

    use super::super::closes::{self, BASIC_PUBLISH};
    use super::*;

    /// The broker's `channel.close` over a publish: the error every pending
    /// confirm of the channel resolves to.
    fn channel_close(code: u16, text: &str) -> lapin::Error {
        closes::channel_close(code, text, BASIC_PUBLISH)
    }

    fn returned(message_id: Option<&str>) -> BasicReturnMessage {
        let mut delivery = Delivery::mock(0, "orders".into(), "order.placed.v1".into(), false, {
            b"{\"secret\":\"payload\"}".to_vec()
        });
        if let Some(id) = message_id {
            delivery.properties = BasicProperties::default().with_message_id(id.into());
        }
        BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn a_size_refusal_names_the_size_and_the_limit() {
        assert_eq!(
            size_refusal(
                "PRECONDITION_FAILED - message size 532123 is larger than configured max size 524288"
            ),
            Some((532_123, 524_288))
        );
        assert_eq!(
            size_refusal("PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x'"),
            None
        );
        assert_eq!(
            size_refusal("message size many is larger than configured max size 1"),
            None
        );
    }

    #[test]
    fn rabbitmq_3_and_4_word_a_size_refusal_alike_and_both_are_read() {
        // 3.x (`check_msg_size/3`, the limit passed in) and 4.x
        // (`check_msg_size/2`, the limit from a persistent term) format the
        // same "message size ~B is larger than configured max size ~B".
        let rabbitmq_3 = "PRECONDITION_FAILED - message size 134217729 is larger than \
                          configured max size 134217728";
        let rabbitmq_4 = "PRECONDITION_FAILED - message size 600000 is larger than configured \
                          max size 524288";
        assert_eq!(size_refusal(rabbitmq_3), Some((134_217_729, 134_217_728)));
        assert_eq!(size_refusal(rabbitmq_4), Some((600_000, 524_288)));
    }

    #[test]
    fn a_channel_closed_over_a_large_message_is_that_messages_refusal() {
        let e = channel_close(
            406,
            "PRECONDITION_FAILED - message size 600000 is larger than configured max size 524288",
        );
        assert_eq!(
            confirm_error(&e),
            PublishError::TooLarge {
                size: 600_000,
                limit: 524_288,
                text: "406 PRECONDITION_FAILED - message size 600000 is larger than configured \
                       max size 524288"
                    .into(),
            }
        );
        assert_eq!(
            confirm_error(&e).to_string(),
            "the broker refused a message of 600000 bytes: 406 PRECONDITION_FAILED - message \
             size 600000 is larger than configured max size 524288"
        );
    }

    #[test]
    fn any_other_channel_close_loses_the_channel() {
        let other_406 = channel_close(406, "PRECONDITION_FAILED - unknown delivery tag 7");
        assert!(matches!(
            confirm_error(&other_406),
            PublishError::ChannelLost(reason) if reason.contains("unknown delivery tag 7")
        ));
        // The size wording under another code is not a size refusal.
        let not_found = channel_close(
            404,
            "NOT_FOUND - no exchange 'message size 1 is larger than configured max size 0'",
        );
        assert!(confirm_error(&not_found).is_channel_lost());
    }

    #[test]
    fn an_ack_confirms_and_a_nack_fails() {
        assert_eq!(
            confirmation(Ok(lapin::Confirmation::Ack(None))),
            Confirmation::ack()
        );
        assert_eq!(
            confirmation(Ok(lapin::Confirmation::Nack(None))),
            Confirmation::failed(PublishError::Nacked)
        );
    }

    #[test]
    fn a_returned_message_comes_with_its_message_id_and_without_its_body() {
        let got = confirmation(Ok(lapin::Confirmation::Ack(Some(returned(Some(
            "event-3",
        ))))));
        assert_eq!(got.outcome, Ok(()));
        assert_eq!(
            got.returned,
            Some(Returned {
                message_id: Some("event-3".into()),
                code: 312,
                text: "NO_ROUTE".into(),
            })
        );
        let nacked = confirmation(Ok(lapin::Confirmation::Nack(Some(returned(None)))));
        assert_eq!(nacked.outcome, Err(PublishError::Nacked));
        assert_eq!(
            nacked.returned.map(|r| r.message_id),
            Some(None),
            "a return without a message id names no record"
        );
    }

    #[test]
    fn a_confirm_that_never_comes_fails_the_message() {
        assert_eq!(
            confirmation(Ok(lapin::Confirmation::NotRequested)),
            Confirmation::failed(PublishError::ChannelLost(
                "the channel is not in confirm mode".into()
            ))
        );
        let closed = confirmation(Err(channel_close(
            406,
            "PRECONDITION_FAILED - message size 600000 is larger than configured max size 524288",
        )));
        assert_eq!(closed.outcome.map_err(|e| e.kind()), Err("too_large"));
        assert_eq!(closed.returned, None);
    }
}
