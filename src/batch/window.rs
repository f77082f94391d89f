//! The confirm window: records in flight wait for their confirms here, so
//! publishing is not one round trip per record. A confirm settles the
//! oldest record; a return is charged to the record it names, which may be
//! one already counted as confirmed; the first failure clears what is in
//! flight and decides where the batch stops.
//!
//! A [`Window`] lives for one pass over the batch on one channel; what it
//! confirmed is handed back with [`Window::into_confirmed`]. The publishing
//! that fills it is in `run`.

use std::{
    collections::VecDeque,
    task::Poll,
    time::{Duration, Instant},
};

use super::{Failure, Outcome, Refusal};
use crate::publisher::{Broker, Confirm, Confirmation, PublishError, Returned};

/// A confirm that has not come after this long, while nothing else came
/// from the broker either, is more likely a dead socket than a slow broker
/// (quorum queues confirm in tens of milliseconds): when the deadline cuts
/// such a wait the connection is dropped. A new one costs a handshake; a
/// dead one kept would cost the next batch `CONNECT_TIMEOUT_MS`.
const SILENT_AFTER: Duration = Duration::from_secs(1);

/// A published record: its outcome counts only once its confirm came.
struct InFlight {
    index: usize,
    outcome: Outcome,
    message_id: String,
    /// Body bytes: a channel the broker closed over a message too large
    /// names it by its size.
    size: usize,
    sent_at: Instant,
    confirm: Settle,
}

/// A confirm still awaited, or one already seen while looking for returns.
enum Settle {
    Waiting(Confirm),
    Done(Confirmation),
}

/// A record whose confirm came, with the outcome it now has.
pub(super) struct Confirmed {
    pub(super) index: usize,
    pub(super) outcome: Outcome,
    message_id: String,
}

/// The records in flight on one channel, and what their confirms said.
pub(super) struct Window {
    in_flight: VecDeque<InFlight>,
    /// Records confirmed on this channel, in order: a return that arrives
    /// later may still name one of them.
    confirmed: Vec<Confirmed>,
    /// The earliest record a returned message named so far, and why.
    returned: Option<(usize, PublishError)>,
    /// When the broker last confirmed something on this channel.
    last_heard: Instant,
    confirm_timeout: Duration,
    /// The invocation's answer is due then: no confirm is awaited past it.
    answer_by: Instant,
}

impl Window {
    /// An empty window whose confirms are awaited up to `confirm_timeout`
    /// each, and never past `answer_by`.
    pub(super) fn new(confirm_timeout: Duration, answer_by: Instant) -> Self {
        Self {
            in_flight: VecDeque::new(),
            confirmed: Vec::new(),
            returned: None,
            last_heard: Instant::now(),
            confirm_timeout,
            answer_by,
        }
    }

    /// Records in flight.
    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Holds record `index`, just published, until its confirm comes:
    /// then it has `outcome`. `size` is its body's length.
    pub(super) fn push(
        &mut self,
        index: usize,
        outcome: Outcome,
        message_id: String,
        size: usize,
        confirm: Confirm,
    ) {
        self.in_flight.push_back(InFlight {
            index,
            outcome,
            message_id,
            size,
            sent_at: Instant::now(),
            confirm: Settle::Waiting(confirm),
        });
    }

    /// A record in flight was returned: nothing more should be sent, and
    /// the confirms before it decide where the batch stops.
    pub(super) fn saw_return(&self) -> bool {
        self.returned.is_some()
    }

    /// The failure a return names once everything in flight is settled.
    pub(super) fn take_return(&mut self) -> Option<Failure> {
        self.returned
            .take()
            .map(|(index, error)| Failure::new(index, error))
    }

    /// A write that began at `writing` has waited a second, and so has the
    /// broker's last confirm: the socket may be dead.
    pub(super) fn silent_since(&self, writing: Instant) -> bool {
        writing.elapsed() >= SILENT_AFTER && self.last_heard.elapsed() >= SILENT_AFTER
    }

    /// What this window confirmed, in order.
    pub(super) fn into_confirmed(self) -> Vec<Confirmed> {
        self.confirmed
    }

    /// A failure at `index`, unless an earlier record in flight failed first.
    pub(super) async fn fail_at<B: Broker>(
        &mut self,
        broker: &B,
        index: usize,
        error: PublishError,
    ) -> Failure {
        match self.drain(broker).await {
            Err(earlier) => earlier,
            Ok(()) => self.fail(index, error),
        }
    }

    /// Waits for every confirm in flight, oldest first.
    pub(super) async fn drain<B: Broker>(&mut self, broker: &B) -> Result<(), Failure> {
        while !self.in_flight.is_empty() {
            self.settle_oldest(broker).await?;
        }
        Ok(())
    }

    /// Records the confirms that have already arrived, without waiting.
    pub(super) async fn settle_arrived(&mut self) -> Result<(), Failure> {
        while let Some(front) = self.in_flight.front_mut() {
            let confirmation = match &mut front.confirm {
                Settle::Done(c) => c.clone(),
                Settle::Waiting(confirm) => {
                    match std::future::poll_fn(|cx| Poll::Ready(confirm.as_mut().poll(cx))).await {
                        Poll::Pending => break,
                        Poll::Ready(c) => c,
                    }
                }
            };
            self.record_front(confirmation)?;
        }
        Ok(())
    }

    /// Waits for the oldest confirm, up to the confirm timeout or the
    /// deadline, whichever comes first, or until the broker blocks
    /// publishers.
    pub(super) async fn settle_oldest<B: Broker>(&mut self, broker: &B) -> Result<(), Failure> {
        broker.flush();
        let blocked = broker.blocked();
        let Some(front) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let mut silent = false;
        let confirmation = match &mut front.confirm {
            Settle::Done(c) => c.clone(),
            Settle::Waiting(confirm) => {
                let answer_by = self.answer_by;
                let until = (front.sent_at + self.confirm_timeout).min(answer_by);
                let heard = self.last_heard.max(front.sent_at);
                tokio::select! {
                    biased;
                    c = tokio::time::timeout_at(until.into(), confirm.as_mut()) => {
                        c.unwrap_or_else(|_| {
                            Confirmation::failed(if until >= answer_by {
                                silent = heard.elapsed() >= SILENT_AFTER;
                                PublishError::Deadline
                            } else {
                                PublishError::ConfirmTimeout
                            })
                        })
                    }
                    () = blocked => Confirmation::failed(PublishError::Blocked),
                }
            }
        };
        self.record_front(confirmation).map_err(|mut f| {
            f.silent = silent;
            f
        })
    }
    /// Settles the oldest record in flight with its confirm. A return that
    /// came with it is charged to the record it names, which may be the
    /// record itself, one confirmed before it or one still in flight; the
    /// batch then stops at the earliest record so named.
    fn record_front(&mut self, confirmation: Confirmation) -> Result<(), Failure> {
        let Some(front) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Confirmation { outcome, returned } = confirmation;
        if let Some(returned) = returned {
            self.note_return(&returned, &front);
        }
        if self.returned.is_some() {
            self.look_for_returns(&front);
        }
        if let Err(error) = outcome {
            // The broker closed the channel over a message larger than it
            // takes: every confirm pending on it fails, the culprit is the
            // earliest of them with that size.
            let culprit = match &error {
                PublishError::TooLarge { size, limit, text } => std::iter::once(&front)
                    .chain(self.in_flight.iter())
                    .find(|f| f.size == *size)
                    .map(|f| Refusal {
                        index: f.index,
                        reason: format!("the broker refused the message: {text}"),
                        limit: *limit,
                    }),
                _ => None,
            };
            let mut failure = self.fail(front.index, error);
            if failure.index == front.index {
                failure.refusal = culprit;
            }
            return Err(failure);
        }
        self.last_heard = Instant::now();
        if let Some((index, error)) = self.returned.take_if(|(i, _)| *i <= front.index) {
            return Err(self.fail(index, error));
        }
        self.confirmed.push(Confirmed {
            index: front.index,
            outcome: front.outcome,
            message_id: front.message_id,
        });
        Ok(())
    }

    /// Charges a return to the earliest record of this batch with its
    /// message id; one that names none is charged to `carrier`, the earliest
    /// record not yet confirmed.
    fn note_return(&mut self, returned: &Returned, carrier: &InFlight) {
        self.note_return_for(returned, carrier.index, &carrier.message_id);
    }

    fn note_return_for(&mut self, returned: &Returned, carrier: usize, carrier_id: &str) {
        let named = |id: &str| returned.message_id.as_deref() == Some(id);
        let owner = self
            .confirmed
            .iter()
            .map(|c| (c.index, c.message_id.as_str()))
            .chain(std::iter::once((carrier, carrier_id)))
            .chain(
                self.in_flight
                    .iter()
                    .map(|f| (f.index, f.message_id.as_str())),
            )
            .find(|(_, id)| named(id))
            .map_or(carrier, |(i, _)| i);
        if self.returned.as_ref().is_none_or(|(i, _)| owner < *i) {
            self.returned = Some((owner, returned.error()));
        }
    }

    /// The client completes the confirms of one multiple-ack in any order
    /// and may attach a return to any of them: once a return is seen, the
    /// confirms that have already arrived are looked at for more, so none
    /// naming an earlier record is missed.
    fn look_for_returns(&mut self, carrier: &InFlight) {
        for r in self.arrived_returns() {
            self.note_return(&r, carrier);
        }
    }

    /// [`Window::look_for_returns`] when the batch fails at `index`: a return
    /// naming no record is charged to it.
    fn look_for_returns_at(&mut self, index: usize) {
        for r in self.arrived_returns() {
            self.note_return_for(&r, index, "");
        }
    }

    /// The returns that came with the confirms in flight that have already
    /// arrived, taken from them.
    fn arrived_returns(&mut self) -> Vec<Returned> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut found = Vec::new();
        for entry in &mut self.in_flight {
            if let Settle::Waiting(confirm) = &mut entry.confirm
                && let Poll::Ready(c) = confirm.as_mut().poll(&mut cx)
            {
                entry.confirm = Settle::Done(c);
            }
            if let Settle::Done(c) = &mut entry.confirm
                && let Some(r) = c.returned.take()
            {
                found.push(r);
            }
        }
        found
    }

    /// The batch stops at `index`, or at an earlier record a return named.
    /// The confirms in flight that have already come are looked at for
    /// returns first: one of them may carry the return of a record counted
    /// as confirmed.
    pub(super) fn fail(&mut self, index: usize, error: PublishError) -> Failure {
        self.look_for_returns_at(index);
        self.in_flight.clear();
        match self.returned.take() {
            Some((earlier, returned)) if earlier <= index => Failure::new(earlier, returned),
            _ => Failure::new(index, error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::batch::fake::*;
    use crate::batch::{BatchOptions, Deadlines, Invocation, forward};
    use crate::enrich::NoEnricher;
    use crate::publisher::Reset;

    #[tokio::test]
    async fn publishes_are_pipelined_not_one_round_trip_each() {
        // No confirm arrives before all 50 messages were sent: a loop that
        // waited for each confirm before the next publish would time out.
        let records = inserts(50);
        let mut broker = FakeBroker::new(vec![Reply::AckAfter(50); 50]);
        let report = run(&mut broker, &records).await;
        assert_eq!(report.failure, None);
        assert_eq!(report.published, 50);
    }

    #[tokio::test]
    async fn a_nack_in_the_middle_reports_that_record_and_nothing_after() {
        let records = inserts(6);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Ack, Reply::Ack, Reply::Nack]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert_eq!(report.failure.as_ref().unwrap().error, PublishError::Nacked);
        assert_eq!((report.published, report.failed), (3, 3));
        // The nack was seen before record 5 was sent: nothing after it went out.
        assert_eq!(broker.published.len(), 4);
    }

    #[tokio::test]
    async fn a_returned_message_is_a_failure() {
        let records = inserts(3);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Return]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
    }

    #[tokio::test]
    async fn a_return_carried_by_an_earlier_confirm_fails_the_record_it_names() {
        let records = inserts(8);
        let mut replies = vec![Reply::Ack; 8];
        replies[1] = Reply::AckCarrying { owner: 3, after: 4 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
        assert_eq!(report.published, 3);
        // Nothing was sent once the return was seen.
        assert!(broker.published.len() < 8, "{}", broker.published.len());
    }

    #[tokio::test]
    async fn a_return_carried_by_a_later_confirm_fails_the_earlier_record_it_names() {
        // Record 2's own confirm is an ack; its return comes with record 5's.
        let records = inserts(6);
        let mut replies = vec![Reply::Ack; 6];
        replies[4] = Reply::AckCarrying { owner: 1, after: 5 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.published, 1);
    }

    #[tokio::test]
    async fn returns_swapped_between_two_confirms_fail_the_earlier_record() {
        // One multiple-ack completes records 3 to 7 in any order: the return
        // of record 6 comes with record 3's confirm, and record 3's own
        // return with record 7's, after record 6 in the queue.
        let records = inserts(8);
        let mut replies = vec![Reply::Ack; 8];
        replies[2] = Reply::AckCarrying { owner: 5, after: 7 };
        replies[6] = Reply::AckCarrying { owner: 2, after: 7 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["3"]);
        assert_eq!(report.published, 2);
    }

    #[tokio::test]
    async fn a_return_naming_no_record_fails_the_earliest_unconfirmed_one() {
        let records = inserts(5);
        let mut replies = vec![Reply::Ack; 5];
        replies[2] = Reply::AckCarryingStranger;
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["3"]);
        assert_eq!(report.published, 2);
    }

    #[tokio::test]
    async fn a_nack_after_a_record_whose_return_is_still_to_come_reports_the_nack() {
        // Record 4 is nacked before the return naming record 5 is seen: the
        // earlier of the two decides.
        let records = inserts(6);
        let mut replies = vec![Reply::Ack; 6];
        replies[3] = Reply::Nack;
        replies[5] = Reply::AckCarrying { owner: 4, after: 6 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["4"]);
        assert_eq!(report.failure.unwrap().error, PublishError::Nacked);
    }

    #[tokio::test]
    async fn a_confirm_that_never_comes_times_out_and_is_reported() {
        let records = inserts(4);
        let mut broker = FakeBroker::new(vec![Reply::Ack, Reply::Silent, Reply::Ack, Reply::Ack]);
        let started = Instant::now();
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert_eq!(report.failure.unwrap().error, PublishError::ConfirmTimeout);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_earliest_failure_wins_over_a_later_one() {
        // Record 2's confirm is silent while record 4's write fails: the
        // checkpoint must stop at 2, not 4.
        let records = inserts(5);
        let mut broker = FakeBroker::new(vec![
            Reply::Ack,
            Reply::Silent,
            Reply::Ack,
            Reply::WriteFails(PublishError::WriteTimeout),
        ]);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
    }

    #[tokio::test]
    async fn a_return_that_came_with_a_confirm_in_flight_when_the_batch_fails_fails_its_record() {
        // Record 2's own confirm is an ack; its return comes with record 4's
        // confirm, which has arrived when record 3's nack ends the batch.
        let records = inserts(5);
        let mut replies = vec![Reply::Ack; 5];
        replies[2] = Reply::NackAfter(4);
        replies[3] = Reply::AckCarrying { owner: 1, after: 4 };
        let mut broker = FakeBroker::new(replies);
        let report = run(&mut broker, &records).await;
        assert_eq!(reported(&records, &report), ["2"]);
        assert!(matches!(
            report.failure.unwrap().error,
            PublishError::Returned { code: 312, .. }
        ));
        assert_eq!(report.published, 1);
    }

    #[tokio::test]
    async fn a_confirm_awaited_in_silence_until_the_deadline_drops_the_connection() {
        let records = inserts(2);
        let patient = BatchOptions::new(Duration::from_secs(10));
        let with = |deadline_ms: u64, margin_ms: u64| {
            Invocation::new(
                Utc::now(),
                Deadlines::new(
                    Instant::now() + Duration::from_millis(deadline_ms),
                    Duration::from_millis(margin_ms),
                ),
            )
        };
        // Nothing from the broker for 1.6 s: the socket may be dead.
        let mut broker = FakeBroker::new(vec![Reply::Silent]);
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            with(1800, 800),
            patient,
        )
        .await;
        let failure = report.failure.unwrap();
        assert_eq!(
            (failure.index, &failure.error),
            (0, &PublishError::Deadline)
        );
        assert_eq!(broker.scopes, [Reset::Connection]);

        // Cut after 0.3 s: a slow broker as likely as a dead one; kept.
        let mut broker = FakeBroker::new(vec![Reply::Silent]);
        let report = forward(
            &mut broker,
            &converter(),
            &NoEnricher,
            &raw(&records),
            with(700, 400),
            patient,
        )
        .await;
        assert_eq!(report.failure.unwrap().error, PublishError::Deadline);
        assert_eq!(broker.scopes, [Reset::Channel]);
    }
}
