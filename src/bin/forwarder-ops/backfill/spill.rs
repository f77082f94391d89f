//! The events of an event-store table not keyed (aggregateId, version), in
//! aggregate and version order, with memory bounded by a budget rather than
//! by the table: an external merge sort. Events are held until the budget
//! is reached, then sorted and written out as one run (an anonymous
//! temporary file, gone when the tool ends, however it ends); the runs are
//! merged a line at a time. A table that fits the budget never touches the
//! disk.
//!
//! The budget is in bytes, not events: an item is anything from a few
//! bytes to DynamoDB's 400 KB, so a bound on a count bounds nothing.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write},
    path::PathBuf,
};

use anyhow::Context as _;
use serde_json::value::RawValue;

/// One event as sorted: its aggregate (as text), its version and the item
/// (DynamoDB JSON, kept as text: parsed again only when it is sent).
#[derive(Debug)]
pub struct Entry {
    pub group: String,
    pub version: u64,
    pub item: Box<RawValue>,
}

impl Entry {
    /// What it takes in memory, near enough: its texts and the fields.
    fn weight(&self) -> usize {
        self.group.len() + self.item.get().len() + 64
    }

    fn key(&self) -> (&str, u64) {
        (&self.group, self.version)
    }
}

/// Takes events in any order, up to `budget` bytes of them in memory.
pub struct Sorter {
    budget: usize,
    dir: PathBuf,
    held: Vec<Entry>,
    weight: usize,
    runs: Vec<File>,
}

impl Sorter {
    /// Runs go to files in `dir` (the system's temporary directory,
    /// `TMPDIR`, in the tool).
    pub fn new(budget: usize, dir: PathBuf) -> Self {
        Self {
            budget,
            dir,
            held: Vec::new(),
            weight: 0,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, entry: Entry) -> anyhow::Result<()> {
        self.weight += entry.weight();
        self.held.push(entry);
        if self.weight >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Files written so far (0 when everything fit the budget).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The held events, sorted (stably: equal keys keep the order they
    /// came in), as one run on disk.
    fn spill(&mut self) -> anyhow::Result<()> {
        self.held.sort_by(|a, b| a.key().cmp(&b.key()));
        let file = tempfile::tempfile_in(&self.dir)
            .with_context(|| format!("a temporary file in {}", self.dir.display()))?;
        let mut out = BufWriter::new(file);
        for e in self.held.drain(..) {
            serde_json::to_writer(&mut out, &(&e.group, e.version, &e.item))
                .context("writing a sorted run")?;
            out.write_all(b"\n").context("writing a sorted run")?;
        }
        let mut file = out.into_inner().context("writing a sorted run")?;
        file.seek(SeekFrom::Start(0))
            .context("reading a sorted run")?;
        self.runs.push(file);
        self.weight = 0;
        Ok(())
    }

    /// Every event pushed, in (aggregate, version) order; events with the
    /// same key in the order they were pushed.
    pub fn sorted(mut self) -> anyhow::Result<Sorted> {
        if self.runs.is_empty() {
            self.held.sort_by(|a, b| a.key().cmp(&b.key()));
            return Ok(Sorted(Source::Held(self.held.into_iter())));
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<BufReader<File>> = self.runs.into_iter().map(BufReader::new).collect();
        let mut heads = BinaryHeap::with_capacity(readers.len());
        for (run, reader) in readers.iter_mut().enumerate() {
            if let Some(entry) = read(reader)? {
                heads.push(Reverse(Head { entry, run }));
            }
        }
        Ok(Sorted(Source::Merged { readers, heads }))
    }
}

/// The next event of one run. Runs are ordered by their number last, so
/// equal keys come out in the order they were pushed (an earlier run holds
/// earlier events).
struct Head {
    entry: Entry,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.entry.key(), self.run).cmp(&(other.entry.key(), other.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// The events in order: from memory, or merged from the runs (one event
/// per run held).
pub struct Sorted(Source);

enum Source {
    Held(std::vec::IntoIter<Entry>),
    Merged {
        readers: Vec<BufReader<File>>,
        heads: BinaryHeap<Reverse<Head>>,
    },
}

impl Sorted {
    pub fn next(&mut self) -> anyhow::Result<Option<Entry>> {
        match &mut self.0 {
            Source::Held(events) => Ok(events.next()),
            Source::Merged { readers, heads } => {
                let Some(Reverse(Head { entry, run })) = heads.pop() else {
                    return Ok(None);
                };
                if let Some(next) = read(&mut readers[run])? {
                    heads.push(Reverse(Head { entry: next, run }));
                }
                Ok(Some(entry))
            }
        }
    }
}

/// One line of a run: `[aggregate, version, item]`.
fn read(reader: &mut BufReader<File>) -> anyhow::Result<Option<Entry>> {
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .context("reading a sorted run")?
        == 0
    {
        return Ok(None);
    }
    let (group, version, item): (String, u64, Box<RawValue>) =
        serde_json::from_str(&line).context("a line of a sorted run")?;
    Ok(Some(Entry {
        group,
        version,
        item,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: &str, version: u64, n: usize) -> Entry {
        Entry {
            group: group.to_owned(),
            version,
            item: RawValue::from_string(format!(r#"{{"n":{{"N":"{n}"}}}}"#)).unwrap(),
        }
    }

    fn drain(mut sorted: Sorted) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        while let Some(e) = sorted.next().unwrap() {
            out.push((e.group, e.version, e.item.get().to_owned()));
        }
        out
    }

    type Input = Vec<(String, u64, usize)>;

    /// What the sorter gives for `input`, against the stable sort's, or
    /// `None` when they agree.
    fn mismatch(input: &Input, budget: usize) -> Option<String> {
        let mut sorter = Sorter::new(budget, std::env::temp_dir());
        for (g, v, n) in input {
            sorter.push(entry(g, *v, *n)).unwrap();
        }
        let runs = sorter.runs();
        let got = drain(sorter.sorted().unwrap());
        let mut want: Vec<(String, u64, String)> = input
            .iter()
            .map(|(g, v, n)| (g.clone(), *v, format!(r#"{{"n":{{"N":"{n}"}}}}"#)))
            .collect();
        want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        (got != want).then(|| format!("{runs} runs: got {got:?}, want {want:?}"))
    }

    /// Whatever the budget (so however many runs), the order is the
    /// stable in-memory sort's: generated inputs with many equal keys,
    /// aggregates of any text and budgets from one event per run up. A
    /// failing input is shrunk (events dropped while it still fails).
    #[test]
    fn any_budget_gives_the_stable_sort_of_what_was_pushed() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let groups = ["a", "b", "a#b", "", "ü", "prod-1", "prod-10", "prod-2"];
            let mut input: Input = (0..rng.usize(0..300))
                .map(|n| {
                    (
                        groups[rng.usize(..groups.len())].to_owned(),
                        rng.u64(0..20),
                        n,
                    )
                })
                .collect();
            let budget = [1, 100, 2_000, 50_000, usize::MAX][rng.usize(..5)];
            if mismatch(&input, budget).is_none() {
                continue;
            }
            let mut i = 0;
            while i < input.len() {
                let mut smaller = input.clone();
                smaller.remove(i);
                if mismatch(&smaller, budget).is_some() {
                    input = smaller;
                } else {
                    i += 1;
                }
            }
            panic!(
                "seed {seed}, budget {budget}, shrunk to {input:?}: {}",
                mismatch(&input, budget).unwrap_or_default()
            );
        }
    }

    #[test]
    fn a_budget_smaller_than_the_table_spills_and_one_larger_does_not() {
        let mut small = Sorter::new(300, std::env::temp_dir());
        let mut large = Sorter::new(1 << 20, std::env::temp_dir());
        for v in (0..40).rev() {
            small.push(entry("agg", v, 0)).unwrap();
            large.push(entry("agg", v, 0)).unwrap();
        }
        assert!(small.runs() >= 10, "{} runs", small.runs());
        assert_eq!(large.runs(), 0);
        let versions: Vec<u64> = drain(small.sorted().unwrap()).iter().map(|e| e.1).collect();
        assert_eq!(versions, (0..40).collect::<Vec<_>>());
    }
}
