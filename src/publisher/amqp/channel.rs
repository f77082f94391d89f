//! A confirm-mode channel, on the connection there is or on a new one, with
//! the topology declared on it. Neither waits for a blocked broker: a
//! blocked connection reads nothing until its alarm ends.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use lapin::options::ConfirmSelectOptions;

use super::{AmqpBroker, topology};
use crate::publisher::PublishError;

impl AmqpBroker {
    /// Opens a channel, connecting first when there is no live connection.
    pub(super) async fn open(&mut self, until: Instant) -> Result<(), PublishError> {
        let had_connection = self.attach(until).await?;
        // The broker may block the connection while the channel opens: it
        // then reads nothing from it until the alarm ends, and a blocked
        // connection cannot even be closed, so a new one would stay beside
        // it. Fail at once and keep the one connection.
        let mut blocked = self.blocked.clone();
        let opened = tokio::select! {
            biased;
            _ = blocked.wait_for(|b| *b) => Err(PublishError::Blocked),
            opened = self.open_channel(until) => opened,
        };
        match opened {
            Err(PublishError::ChannelLost(_)) if self.is_blocked() => Err(PublishError::Blocked),
            Err(PublishError::ChannelLost(reason)) if had_connection => {
                // The old connection only looked alive: start over once.
                tracing::warn!(%reason, "opening a channel failed; reconnecting");
                self.retire_connection();
                self.attach(until).await?;
                self.open_channel(until).await
            }
            other => other,
        }
    }

    /// A confirm-mode channel on the connection, with the topology
    /// declared; the exchanges the old channel had declared are forgotten.
    ///
    /// Bounded by the connect timeout, as a sign that the connection died
    /// without a word (the caller then reopens it), except while the
    /// broker answers other brokers' publishes on it: the connection is
    /// alive then, only busy. Its methods queue behind their publishes on
    /// the wire, and giving the connection up would close every sibling's
    /// channel to save this one (three batches failed that way in CI, on a
    /// reopened connection). It then waits on, up to `until`.
    async fn open_channel(&mut self, until: Instant) -> Result<(), PublishError> {
        let Some(live) = self.connection.clone() else {
            return Err(PublishError::Unreachable("no connection".into()));
        };
        self.declared.clear();
        let declaring = AtomicBool::new(false);
        let opening = async {
            let channel = connection_step(live.connection.create_channel().await)?;
            connection_step(
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await,
            )?;
            if let Some(topology) = &self.settings.topology {
                declaring.store(true, Ordering::Relaxed);
                topology::declare(&channel, topology).await?;
            }
            Ok::<_, PublishError>(channel)
        };
        let mut opening = std::pin::pin!(opening);
        let opened = loop {
            let answers = live.answers.load(Ordering::Relaxed);
            let deadline = (Instant::now() + self.settings.connect_timeout).min(until);
            if let Ok(opened) = tokio::time::timeout_at(deadline.into(), opening.as_mut()).await {
                break opened;
            }
            if deadline >= until || live.answers.load(Ordering::Relaxed) == answers {
                let what = if declaring.load(Ordering::Relaxed) {
                    "declaring the topology"
                } else {
                    "opening a channel"
                };
                break Err(PublishError::ChannelLost(format!("{what} timed out")));
            }
            tracing::info!(
                "opening a channel is slow on a busy connection; waiting on (the broker answers the others)"
            );
        };
        let channel = opened?;
        if let Some(exchange) = self
            .settings
            .topology
            .as_ref()
            .and_then(|t| t.exchange.as_ref())
        {
            self.declared.insert(exchange, usize::MAX);
        }
        self.channel = Some(channel);
        Ok(())
    }
}

/// A failed channel open or `confirm.select`: the channel is lost.
fn connection_step<T>(result: Result<T, lapin::Error>) -> Result<T, PublishError> {
    result.map_err(|e| PublishError::ChannelLost(format!("opening a channel: {e}")))
}
