//! A scripted DynamoDB Streams for the tool's tests: shards whose records
//! the test writes and closes, iterators the test makes expire (AWS: 15
//! minutes after they were issued; moto never expires them) and a number of
//! empty pages before the records (AWS: "it might take multiple calls").

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use event_forwarder::esm::StreamRecord;

use crate::reader::{Page, Position, ShardInfo, Streams, StreamsError, before};

#[derive(Debug, Default)]
struct Shard {
    info: ShardInfo,
    records: Vec<StreamRecord>,
}

#[derive(Debug, Default)]
struct State {
    shards: Vec<Shard>,
    /// Iterator → (shard index, record index, its number).
    iterators: HashMap<String, (usize, usize, u64)>,
    issued: u64,
    /// Iterators up to this number have expired.
    expired_through: u64,
    /// Empty pages still to give before records.
    empty_pages: usize,
    /// Every GetRecords fails (a network error).
    failing: bool,
    /// Every call, for the tests to look at.
    calls: Vec<String>,
}

/// The scripted stream; clones share it.
#[derive(Debug, Clone, Default)]
pub struct ScriptedStreams(Rc<RefCell<State>>);

/// A record as GetRecords gives it: an INSERT with `aggregateId` and
/// `version`, created at `created` (epoch seconds).
pub fn record(seq: &str, aggregate: &str, version: u64, created: f64) -> StreamRecord {
    let image = serde_json::json!({
        "aggregateId": {"S": aggregate},
        "version": {"N": version.to_string()},
    });
    StreamRecord {
        event_id: format!("e-{seq}"),
        event_name: "INSERT".into(),
        event_version: "1.1".into(),
        aws_region: "eu-west-1".into(),
        created: Some(created),
        keys: Some(image.clone()),
        new_image: Some(image),
        old_image: None,
        sequence_number: seq.into(),
        size_bytes: Some(50),
        stream_view_type: Some("NEW_IMAGE".into()),
        user_identity: None,
        backfill: false,
    }
}

impl ScriptedStreams {
    /// Adds an open shard starting at sequence number `starting`.
    pub fn shard(&self, id: &str, parent: Option<&str>, starting: &str) -> &Self {
        self.0.borrow_mut().shards.push(Shard {
            info: ShardInfo {
                id: id.into(),
                parent: parent.map(str::to_owned),
                starting: Some(starting.into()),
                ending: None,
            },
            records: Vec::new(),
        });
        self
    }

    /// Writes records to a shard.
    pub fn write(&self, shard: &str, records: impl IntoIterator<Item = StreamRecord>) {
        let mut state = self.0.borrow_mut();
        if let Some(s) = state.shards.iter_mut().find(|s| s.info.id == shard) {
            s.records.extend(records);
        }
    }

    /// Closes a shard at its last record.
    pub fn close(&self, shard: &str) {
        let mut state = self.0.borrow_mut();
        if let Some(s) = state.shards.iter_mut().find(|s| s.info.id == shard) {
            let last = s.records.last().map(|r| r.sequence_number.clone());
            s.info.ending = last.or_else(|| s.info.starting.clone());
        }
    }

    /// Every iterator issued so far expires: as 15 minutes without a read
    /// would make them.
    pub fn expire_issued(&self) {
        let mut state = self.0.borrow_mut();
        state.expired_through = state.issued;
    }

    /// The next `n` GetRecords give an empty page (and an iterator at the
    /// same place).
    pub fn empty_pages(&self, n: usize) {
        self.0.borrow_mut().empty_pages = n;
    }

    /// Every GetRecords fails (`true`) or works again.
    pub fn fail_reads(&self, failing: bool) {
        self.0.borrow_mut().failing = failing;
    }

    /// The calls made so far, e.g. `GetRecords shardId-a` or
    /// `GetShardIterator shardId-a after:102`.
    pub fn calls(&self) -> Vec<String> {
        self.0.borrow().calls.clone()
    }

    fn issue(state: &mut State, shard: usize, index: usize) -> String {
        state.issued += 1;
        let id = format!("it-{}", state.issued);
        let n = state.issued;
        state.iterators.insert(id.clone(), (shard, index, n));
        id
    }
}

impl Streams for ScriptedStreams {
    async fn shards(&self, _stream_arn: &str) -> Result<Vec<ShardInfo>, StreamsError> {
        let mut state = self.0.borrow_mut();
        state.calls.push("DescribeStream".into());
        Ok(state.shards.iter().map(|s| s.info.clone()).collect())
    }

    async fn iterator(
        &self,
        _stream_arn: &str,
        shard_id: &str,
        at: &Position,
    ) -> Result<Option<String>, StreamsError> {
        let mut state = self.0.borrow_mut();
        state
            .calls
            .push(format!("GetShardIterator {shard_id} {at}"));
        let Some(s) = state.shards.iter().position(|s| s.info.id == shard_id) else {
            return Err(StreamsError::NotFound(shard_id.into()));
        };
        let records = &state.shards[s].records;
        let index = match at {
            Position::TrimHorizon => 0,
            Position::Latest => records.len(),
            Position::At(seq) => records
                .iter()
                .position(|r| !before(&r.sequence_number, seq))
                .unwrap_or(records.len()),
            Position::After(seq) => records
                .iter()
                .position(|r| before(seq, &r.sequence_number))
                .unwrap_or(records.len()),
        };
        Ok(Some(Self::issue(&mut state, s, index)))
    }

    async fn records(&self, iterator: &str, limit: usize) -> Result<Page, StreamsError> {
        let mut state = self.0.borrow_mut();
        let Some(&(s, index, n)) = state.iterators.get(iterator) else {
            return Err(anyhow::anyhow!("unknown iterator {iterator}").into());
        };
        let shard = state.shards[s].info.id.clone();
        state.calls.push(format!("GetRecords {shard}"));
        if n <= state.expired_through {
            return Err(StreamsError::ExpiredIterator);
        }
        if state.failing {
            return Err(anyhow::anyhow!("GetRecords: connection reset").into());
        }
        if state.empty_pages > 0 {
            state.empty_pages -= 1;
            let next = Self::issue(&mut state, s, index);
            return Ok(Page {
                records: Vec::new(),
                next: Some(next),
            });
        }
        let all = &state.shards[s].records;
        let end = (index + limit).min(all.len());
        let records = all[index..end].to_vec();
        let closed = state.shards[s].info.ending.is_some();
        let next = if closed && end == all.len() {
            None
        } else {
            Some(Self::issue(&mut state, s, end))
        };
        Ok(Page { records, next })
    }
}
