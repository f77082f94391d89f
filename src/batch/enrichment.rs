//! The enricher's step, between mapping and publishing: a draft goes to
//! the [`Enricher`], bounded by the deadline margin, and comes back to be
//! written into its message ([`mapping::message::to_message`](crate::mapping::message::to_message)), skipped or
//! dead-lettered (the draft carries its dead letter: [`Draft::origin`]).

use std::{task::Poll, time::Instant};

use super::Invocation;
use crate::enrich::{self, Enricher, Enrichment, Event};
use crate::mapping::Draft;
use crate::mapping::message::{self, Sending};
use crate::publisher::{Message, PublishError};

/// What an enricher made of an event.
pub(super) enum Enriched {
    Publish(Message),
    Skip(String),
    DeadLetter(Message, String),
    Failed(PublishError),
}

/// `future`'s output, or `None` if it is not done by `until`. A future that
/// is ready at once (the enricher that does nothing) costs no timer.
async fn by<F: std::future::Future>(until: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(output) => Some(output),
        Poll::Pending => tokio::time::timeout_at(until.into(), future).await.ok(),
    }
}

/// Passes a draft through `enricher` (its state for this invocation is
/// `state`), within the deadline margin, and writes the message this
/// invocation sends.
pub(super) async fn enrich<E: Enricher>(
    enricher: &E,
    state: &mut E::Batch,
    draft: Draft<'_>,
    invocation: Invocation<'_>,
) -> Enriched {
    let until = invocation.deadlines.publish_until;
    let decided = {
        let event = Event::new(&draft);
        by(until, enricher.enrich(&event, state)).await
    };
    let decided = match decided {
        None => {
            return Enriched::Failed(PublishError::Enrichment(
                "no answer before the deadline margin".into(),
            ));
        }
        Some(Err(e)) => return Enriched::Failed(PublishError::Enrichment(e.0)),
        Some(Ok(decided)) => decided,
    };
    let dead_letter = |draft: &Draft<'_>, reason| {
        let (message, reason) = draft.origin().dead_letter(reason);
        Enriched::DeadLetter(message, reason)
    };
    match decided {
        Enrichment::Skip(reason) => Enriched::Skip(crate::mapping::capped(reason)),
        Enrichment::DeadLetter(reason) => dead_letter(&draft, reason),
        Enrichment::Publish { payload, headers } => {
            match enrich::check(|| draft.payload(), payload, headers) {
                Ok(added) => {
                    let sending = Sending {
                        traceparent: invocation.traceparent,
                        to_queue: invocation.to_queue,
                    };
                    let origin = draft.origin();
                    let message = message::to_message(draft, added, sending);
                    // A header frame over frame_max closes the connection
                    // at every retry: the record's headers keep the budget
                    // or it is dead-lettered (CONTRACT §4).
                    match message::within_budget(&message) {
                        Ok(()) => Enriched::Publish(message),
                        Err(reason) => {
                            let (message, reason) = origin.dead_letter(reason);
                            Enriched::DeadLetter(message, reason)
                        }
                    }
                }
                Err(reason) => dead_letter(&draft, reason),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lambda_events::dynamodb::EventRecord;
    use chrono::Utc;

    use super::*;
    use crate::batch::fake::*;
    use crate::batch::{BatchReport, Deadlines, Invocation, forward};
    use crate::publisher::HeaderValue;

    /// Decides by the event's aggregate (`agg-<i>`); counts the events it
    /// saw in one invocation in its batch state.
    struct ScriptedEnricher(std::collections::HashMap<usize, &'static str>);

    impl Enricher for ScriptedEnricher {
        type Batch = usize;

        async fn enrich(
            &self,
            event: &enrich::Event<'_>,
            seen: &mut usize,
        ) -> Result<Enrichment, enrich::EnrichError> {
            *seen += 1;
            let i: usize = event.partition_key()["agg-".len()..].parse().unwrap();
            Ok(match self.0.get(&i).copied() {
                Some("skip") => Enrichment::Skip("a test event".into()),
                Some("dead") => Enrichment::DeadLetter("no such product".into()),
                Some("fail") => return Err(enrich::EnrichError::new("read model down")),
                Some("slow") => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Enrichment::keep()
                }
                _ => Enrichment::keep()
                    .with_field("seen", *seen as u64)
                    .with_header("region", "eu"),
            })
        }
    }

    async fn enriched(
        script: &[(usize, &'static str)],
        deadlines: Deadlines,
    ) -> (FakeBroker, Vec<EventRecord>, BatchReport) {
        let records = inserts(5);
        let mut broker = FakeBroker::new(vec![]);
        let enricher = ScriptedEnricher(script.iter().copied().collect());
        let report = forward(
            &mut broker,
            &converter(),
            &enricher,
            &raw(&records),
            Invocation::new(Utc::now(), deadlines),
            options(),
        )
        .await;
        (broker, records, report)
    }

    #[tokio::test]
    async fn an_enricher_adds_skips_and_dead_letters_and_the_batch_goes_on() {
        let (broker, records, report) = enriched(&[(1, "skip"), (3, "dead")], ample()).await;
        assert!(reported(&records, &report).is_empty());
        assert_eq!(
            (report.published, report.skipped, report.dead_lettered),
            (3, 1, 1)
        );
        assert_eq!(report.skip_reasons, [(1, "a test event".to_string())]);
        assert_eq!(
            broker.exchanges(),
            [
                "product.events",
                "product.events",
                "product.events.dead-letter",
                "product.events"
            ]
        );
        let body: serde_json::Value = serde_json::from_slice(&broker.published[1].body).unwrap();
        // The third event the enricher saw in this invocation.
        assert_eq!(body["payload"]["seen"], 3);
        assert_eq!(
            broker.published[1].properties.extra_headers,
            [("region".to_string(), HeaderValue::String("eu".into()))]
        );
        let dead = &broker.published[2].properties.headers;
        assert!(dead.contains(&("x-error", HeaderValue::String("no such product".into()))));
    }

    #[tokio::test]
    async fn an_enrichment_error_fails_that_record_by_the_checkpoint_rule() {
        let (broker, records, report) = enriched(&[(2, "fail")], ample()).await;
        assert_eq!(reported(&records, &report), ["3"]);
        let failure = report.failure.unwrap();
        assert_eq!(failure.error.kind(), "enrichment");
        assert_eq!(
            failure.error.to_string(),
            "enrichment failed: read model down"
        );
        assert_eq!(report.published, 2);
        assert_eq!(broker.published.len(), 2, "nothing after it was sent");
    }

    #[tokio::test]
    async fn an_enricher_is_bounded_by_the_deadline_margin() {
        let tight = Deadlines::new(
            Instant::now() + Duration::from_millis(1300),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        let (_, records, report) = enriched(&[(1, "slow")], tight).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.failure.unwrap().error.kind(), "enrichment");
    }
}
