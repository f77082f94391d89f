//! Redrive from S3 OnFailure objects (`--bucket`, or `--from-objects` for
//! copies on disk): the records come from the object's payload, so the
//! stream is never read and an object of any age redrives. They go
//! through the function in batches, in the payload's order, after the
//! mapping's filter. After each batch is confirmed the object is marked
//! with the last record confirmed (the tag `forwarder-ops-confirmed-through`,
//! or a `<file>.progress` file beside a copy), so that a stopped redrive
//! resumes after it and sends again only what was in flight. An object
//! whose records are all confirmed is done: deleted from the bucket (the
//! listing is then exactly what is left to redrive, as the SQS queue is;
//! the stack's versioned bucket keeps it as an old version for its
//! retention), or a copy renamed `<file>.done`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aws_sdk_s3::types::{Tag, Tagging};
use chrono::Utc;
use event_forwarder::esm::{self, MAX_EVENT_BYTES, Pace, Pending};
use serde_json::Value;

use super::Redrive;
use crate::{
    objects::{self, Location},
    progress,
};

/// The tag that holds the last sequence number of an object confirmed.
const CONFIRMED_THROUGH: &str = "forwarder-ops-confirmed-through";

/// Where the objects are, and how one is marked.
pub(super) enum Store<'a> {
    Bucket {
        s3: &'a aws_sdk_s3::Client,
        at: &'a Location,
    },
    Files,
}

impl Store<'_> {
    /// An object's bytes.
    async fn body(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Store::Bucket { s3, at } => Ok(s3
                .get_object()
                .bucket(&at.bucket)
                .key(name)
                .send()
                .await
                .map_err(aws_sdk_s3::Error::from)
                .with_context(|| format!("GetObject s3://{}/{name}", at.bucket))?
                .body
                .collect()
                .await
                .with_context(|| format!("reading s3://{}/{name}", at.bucket))?
                .into_bytes()
                .to_vec()),
            Store::Files => std::fs::read(name).with_context(|| format!("reading {name}")),
        }
    }

    /// The last sequence number confirmed by an earlier redrive, if any.
    async fn confirmed_through(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self {
            Store::Bucket { s3, at } => {
                let tags = s3
                    .get_object_tagging()
                    .bucket(&at.bucket)
                    .key(name)
                    .send()
                    .await
                    .map_err(aws_sdk_s3::Error::from)
                    .with_context(|| format!("GetObjectTagging s3://{}/{name}", at.bucket))?;
                Ok(tags
                    .tag_set()
                    .iter()
                    .find(|t| t.key() == CONFIRMED_THROUGH)
                    .map(|t| t.value().to_owned()))
            }
            Store::Files => match std::fs::read_to_string(progress_file(name)) {
                Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {name}.progress")),
            },
        }
    }

    /// Records that every record through `sequence_number` is confirmed.
    async fn mark(&self, name: &str, sequence_number: &str) -> anyhow::Result<()> {
        match self {
            Store::Bucket { s3, at } => {
                let tag = Tag::builder()
                    .key(CONFIRMED_THROUGH)
                    .value(sequence_number)
                    .build()
                    .context("a tag")?;
                s3.put_object_tagging()
                    .bucket(&at.bucket)
                    .key(name)
                    .tagging(Tagging::builder().tag_set(tag).build().context("tags")?)
                    .send()
                    .await
                    .map_err(aws_sdk_s3::Error::from)
                    .with_context(|| format!("PutObjectTagging s3://{}/{name}", at.bucket))?;
                Ok(())
            }
            Store::Files => std::fs::write(progress_file(name), sequence_number)
                .with_context(|| format!("writing {name}.progress")),
        }
    }

    /// Marks an object done: every record of it is confirmed.
    async fn done(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Store::Bucket { s3, at } => {
                s3.delete_object()
                    .bucket(&at.bucket)
                    .key(name)
                    .send()
                    .await
                    .map_err(aws_sdk_s3::Error::from)
                    .with_context(|| format!("DeleteObject s3://{}/{name}", at.bucket))?;
                Ok(())
            }
            Store::Files => {
                std::fs::rename(name, format!("{name}.done"))
                    .with_context(|| format!("renaming {name} to {name}.done"))?;
                match std::fs::remove_file(progress_file(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(e).with_context(|| format!("removing {name}.progress"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

fn progress_file(name: &str) -> String {
    format!("{name}.progress")
}

/// Every key under `at`, in key order (for one shard: the order Lambda
/// wrote them).
pub(super) async fn keys(s3: &aws_sdk_s3::Client, at: &Location) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(&at.bucket)
        .prefix(&at.prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page
            .map_err(aws_sdk_s3::Error::from)
            .with_context(|| format!("ListObjectsV2 {at}"))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys.sort();
    Ok(keys)
}

/// The files of `paths` (directories walked), in name order, leaving out
/// the `.done` and `.progress` files redrive itself writes.
pub(super) fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    fn walk(p: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        if p.is_dir() {
            for entry in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
                walk(&entry?.path(), out)?;
            }
        } else {
            let name = p.to_string_lossy().into_owned();
            if !name.ends_with(".done") && !name.ends_with(".progress") {
                out.push(name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
        walk(p, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// The part of a key Lambda names by the second it wrote the object in:
/// all but the `-<UUID>` that ends it (the whole key, for another name).
fn second_of(key: &str) -> &str {
    let cut = key.len().saturating_sub(37);
    match (key.get(..cut), key.get(cut..)) {
        (Some(head), Some(tail))
            if tail.starts_with('-') && uuid::Uuid::parse_str(&tail[1..]).is_ok() =>
        {
            head
        }
        _ => key,
    }
}

/// The place of an object among those of its second: its shard and first
/// sequence number (the stream's order); unreadable ones first.
fn stream_order(body: &[u8]) -> (String, usize, String) {
    match objects::read(body) {
        Ok(o) => {
            let start = o.start.trim_start_matches('0').to_owned();
            (o.shard_id, start.len(), start)
        }
        Err(_) => (String::new(), 0, String::new()),
    }
}

impl Redrive<'_> {
    /// Every object of `names` (sorted), one after the other, in the
    /// stream's order: keys are in the order of the second Lambda wrote
    /// them, and the objects of one second (their keys end with a random
    /// UUID) are put in order by their first sequence number.
    pub(super) async fn each_object(
        &mut self,
        store: &Store<'_>,
        names: &[String],
    ) -> anyhow::Result<()> {
        let mut rest = names;
        while let Some(first) = rest.first() {
            let second = second_of(first);
            let n = rest
                .iter()
                .take_while(|k| second_of(k) == second)
                .count()
                .max(1);
            let (group, after) = rest.split_at(n);
            rest = after;
            let mut bodies = Vec::with_capacity(group.len());
            for name in group {
                if self.halted.is_some() {
                    break;
                }
                bodies.push((name, store.body(name).await?));
            }
            bodies.sort_by_cached_key(|(_, body)| stream_order(body));
            let mut reached = 0;
            for (name, body) in &bodies {
                if self.halted.is_some() {
                    break;
                }
                self.object(store, name, body).await?;
                reached += 1;
            }
            // Not reached once the function could not be invoked: left for
            // the next redrive.
            self.summary.kept += (group.len() - reached) as u64;
        }
        Ok(())
    }

    /// One object: its records not confirmed yet, filtered, forwarded a
    /// batch at a time with the object marked after each, then done.
    async fn object(&mut self, store: &Store<'_>, name: &str, body: &[u8]) -> anyhow::Result<()> {
        self.summary.objects += 1;
        let object = match objects::read(body) {
            Ok(o) => o,
            Err(why) => {
                progress::say(&self.bar, format_args!("{name}: {why}; kept"));
                self.summary.kept += 1;
                return Ok(());
            }
        };
        let through = store.confirmed_through(name).await?;
        let found = object.records.len();
        self.summary.records += found as u64;
        let left: Vec<Pending> = object
            .records
            .into_iter()
            .filter(|r| {
                through
                    .as_deref()
                    .is_none_or(|t| objects::after(&r.sequence_number, t))
            })
            .collect();
        let confirmed_before = found - left.len();
        self.summary.confirmed_before += confirmed_before as u64;
        let records: Vec<Pending> = match &self.filter {
            Some(f) => left
                .into_iter()
                .filter(|r| {
                    serde_json::from_str::<Value>(r.record.get()).is_ok_and(|v| f.matches(&v))
                })
                .collect(),
            None => left,
        };
        let filtered = found - confirmed_before - records.len();
        self.summary.filtered += filtered as u64;
        if self.args.dry_run {
            progress::say(
                &self.bar,
                format_args!(
                    "would forward {} record(s) of {name} ({} {}–{}; {filtered} filtered out, \
                     {confirmed_before} confirmed by an earlier redrive)",
                    records.len(),
                    object.shard_id,
                    object.start,
                    object.end,
                ),
            );
            return Ok(());
        }
        let pace = Pace {
            retry_delay: self.args.sending.retry_delay(),
            now: &Utc::now,
            stop: &|| false,
            target: None,
            not_invoked_limit: self.args.sending.not_invoked_limit(),
        };
        let mut forwarded = 0;
        for batch in records.chunks(self.rules.batch_size.max(1)) {
            let delivery = esm::deliver_all(
                &mut self.invoker,
                batch,
                &self.rules,
                &pace,
                MAX_EVENT_BYTES,
            )
            .await;
            let confirmed = delivery.stopped_at.unwrap_or(batch.len());
            forwarded += confirmed;
            self.summary.forwarded += confirmed as u64;
            self.bar.inc(confirmed as u64);
            self.halted = delivery.refused.or(delivery.not_invoked_for);
            let last_of_object = forwarded == records.len();
            if confirmed > 0 && !last_of_object {
                store
                    .mark(name, &batch[confirmed - 1].sequence_number)
                    .await?;
            }
            if delivery.stopped_at.is_some() {
                self.summary.failed += (records.len() - forwarded) as u64;
                let rest = if self.halted.is_some() {
                    "the function cannot be invoked"
                } else {
                    "the rest failed again"
                };
                progress::say(
                    &self.bar,
                    format_args!(
                        "{name}: {forwarded} of {} record(s) forwarded, {rest}; kept, marked \
                         through the last one confirmed",
                        records.len()
                    ),
                );
                self.summary.kept += 1;
                return Ok(());
            }
        }
        store.done(name).await?;
        self.summary.done += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_of_one_second_are_grouped_by_what_precedes_their_uuid() {
        let a = "p/aws/lambda/m/shardId-1/2026/01/01/2026-01-01T10.00.00-0d9a4a4e-5a8c-4f0e-9a35-4f0d2b6f1c11";
        let b = "p/aws/lambda/m/shardId-1/2026/01/01/2026-01-01T10.00.00-ff9a4a4e-5a8c-4f0e-9a35-4f0d2b6f1c11";
        let c = "p/aws/lambda/m/shardId-1/2026/01/01/2026-01-01T10.00.01-0d9a4a4e-5a8c-4f0e-9a35-4f0d2b6f1c11";
        assert_eq!(second_of(a), second_of(b));
        assert_ne!(second_of(a), second_of(c));
        assert_eq!(second_of("notes.txt"), "notes.txt");
    }

    #[test]
    fn the_stream_order_is_the_first_sequence_number_as_an_integer() {
        let body = |start: &str| {
            serde_json::json!({
                "DDBStreamBatchInfo": {"shardId": "s", "startSequenceNumber": start, "endSequenceNumber": start},
                "payload": {"Records": []},
            })
            .to_string()
            .into_bytes()
        };
        assert!(stream_order(&body("900")) < stream_order(&body("1000")));
        assert!(stream_order(b"not an object") < stream_order(&body("1")));
    }
}
