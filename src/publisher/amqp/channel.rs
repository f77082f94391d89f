//! A confirm-mode channel, on the connection there is or on a new one, with
//! the topology declared on it. Neither waits for a blocked broker: a
//! blocked connection reads nothing until its alarm ends.

use std::time::Instant;

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
    async fn open_channel(&mut self, until: Instant) -> Result<(), PublishError> {
        let Some(connection) = self.connection.as_ref().map(|c| &c.connection) else {
            return Err(PublishError::Unreachable("no connection".into()));
        };
        let deadline = (Instant::now() + self.settings.connect_timeout).min(until);
        let channel = tokio::time::timeout_at(deadline.into(), async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await
        .map_err(|_| PublishError::ChannelLost("opening a channel timed out".into()))?
        .map_err(|e| PublishError::ChannelLost(format!("opening a channel: {e}")))?;
        self.declared.clear();
        if let Some(topology) = &self.settings.topology {
            tokio::time::timeout_at(deadline.into(), topology::declare(&channel, topology))
                .await
                .map_err(|_| {
                    PublishError::ChannelLost("declaring the topology timed out".into())
                })??;
            if let Some(exchange) = &topology.exchange {
                self.declared.insert(exchange, usize::MAX);
            }
        }
        self.channel = Some(channel);
        Ok(())
    }
}
