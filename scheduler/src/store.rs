//! Durable state in sled, and group commit.
//!
//! Everything lives in one sled tree under key prefixes, so that the writes of
//! one scheduler step (a job, its event, its pending-index entry, ...) go in as
//! one atomic `sled::Batch`: after a crash either all of them are there or none.
//!
//! Key layout (ids are big-endian so keys sort numerically):
//! - `j` job id            -> `msfleet.v1.Job` (protobuf)
//! - `E` job id, last seq  -> an event block: the job's events of one write,
//!   in order, as length-delimited `msfleet.v1.JobEvent`s, lz4-compressed when
//!   that is smaller ([`encode_block`]). Written by this version.
//! - `e` job id, seq       -> `msfleet.v1.JobEvent` (protobuf): one event per
//!   key, as older versions wrote them; still read ([`Store::events`]).
//! - `a` job id            -> [`AttemptRecord`] (JSON)
//! - `p` job id            -> queue name: the pending index, small and separate from history
//! - `g` agent name        -> `msfleet.v1.Agent` (protobuf, registration + admin state)
//! - `m` name              -> u64 counters (next epoch)
//! - `b` baseline key      -> `msfleet.v1.Baseline` (protobuf)
//! - `s` schedule name     -> `msfleet.v1.Schedule` (protobuf)
//! - `H` job id, last seq  -> a test-history record of one write: the agent,
//!   its profile, the seqs of the job's test-result events that are runs of
//!   their test, and a Bloom filter of their node ids ([`encode_history`]), so
//!   `msctl test history` reads only the event blocks that may hold the test.
//!   Written by this version.
//! - `h` test id, 0, job id, seq -> `msfleet.v1.TestRun` (protobuf): one key
//!   per test outcome, as older versions wrote them; still read.
//! - `t` kind (`a` agent / `p` people), name -> `msfleet.v1.StoredToken`
//!   (protobuf): a credential's role and the SHA-256 of its secret, never the secret
//! - `r` baseline key      -> `msfleet.v1.CaseRuns` (protobuf): every recent run of
//!   a benchmark case, whatever its verdict (the dashboard's trends; bounded per key)
//! - `l` job id            -> (): the job is live (not finished): what the start loads
//! - `f` end ms, job id    -> (): the job finished then: retention's order
//! - `d` dedup key         -> job id, submit ms: dedup keys within `--dedup-window`
//!   (the core removes one when its window passes, so a start reads only those)
//! - `J` chunk             -> the archive: finished jobs `chunk * 64 ..` `+ 63`, each
//!   its record and (up to [`ARCHIVE_MAX_EVENT_BYTES`]) its events and
//!   test-history records, in one value ([`encode_chunk`]). A finished job
//!   starts in its own keys (`j`, `E`, `H`, `f`); the retention thread moves it here a minute after its end
//!   ([`Store::archive_finished`]), so a store holds a few keys per 64 old
//!   jobs, not three per job: sled keeps a page-table entry per 16 keys in
//!   memory and reads them all at open. Reads look in both places.
//! - `F` min end ms, chunk  -> (): a chunk's earliest end: retention's order
//!   for archived jobs
//!
//! Durability: [`Store::after_durable`] hands a callback to the flusher thread,
//! which calls `Db::flush` once for every callback queued while it was busy and
//! then runs them all. Many concurrent submits therefore share one fsync, and
//! nothing is acknowledged before the flush that covers it has returned.

use msfleet_proto::{Agent, Baseline, Job, JobEvent, Schedule, StoredToken, TestRun};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;

/// What a storage failure looks like to the rest of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
}

/// The live attempt of a task, as the lease and resume logic need it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub epoch: u64,
    pub agent: String,
    /// Highest task-update sequence number applied (updates are gap-free from 1).
    pub applied_seq: u64,
    pub cancel_requested: bool,
    /// Log bytes the agent sent for this attempt so far (kept or dropped),
    /// so that a restart does not reset the attempt's log limit.
    #[serde(default)]
    pub log_bytes: u64,
    /// When the attempt was assigned (core clock, ms): its span's start.
    #[serde(default)]
    pub assigned_at_ms: i64,
    /// The accelerators assigned with the lease (`crate::devices`): held
    /// until the attempt ends, also across a restart.
    #[serde(default)]
    pub devices: Vec<crate::devices::Held>,
}

/// A callback run once the writes before it are on disk (`true`) or failed to get there.
pub type Durable = Box<dyn FnOnce(bool) + Send>;

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The live jobs (every job in a store written before the live index:
    /// `indexed` is false then, and the core writes the index).
    pub jobs: Vec<Job>,
    pub indexed: bool,
    /// The highest job id ever stored.
    pub last_job: u64,
    /// dedup key -> (job, submitted at).
    pub dedup: Vec<(String, u64, i64)>,
    pub attempts: Vec<(u64, AttemptRecord)>,
    pub pending: Vec<u64>,
    pub agents: Vec<Agent>,
    pub meta: Vec<(String, u64)>,
    pub baselines: Vec<(String, Baseline)>,
    pub schedules: Vec<Schedule>,
    pub tokens: Vec<StoredToken>,
}

/// A batch of writes that goes to disk atomically.
#[derive(Default)]
pub struct WriteSet {
    batch: sled::Batch,
    writes: usize,
    /// Events by job, in order: written as blocks when the set is applied.
    events: BTreeMap<u64, Vec<JobEvent>>,
    /// Runs of tests by (job, profile, agent): (event seq, node id).
    history: BTreeMap<(u64, String, String), Vec<(u64, String)>>,
    /// Jobs whose record, events, test history or finished mark this set
    /// writes: the keys the archive moves ([`Claims`]).
    jobs: Vec<u64>,
}

impl WriteSet {
    pub fn put_job(&mut self, id: u64, job: &Job) {
        self.jobs.push(id);
        self.put(key(b'j', id), job.encode_to_vec());
    }

    /// An event of `job`; events of one job must come in seq order.
    pub fn put_event(&mut self, job: u64, event: JobEvent) {
        self.jobs.push(job);
        self.events.entry(job).or_default().push(event);
        self.writes += 1;
    }

    pub fn put_attempt(&mut self, job: u64, attempt: &AttemptRecord) {
        // Serialising a plain struct of integers and strings cannot fail.
        let bytes = serde_json::to_vec(attempt).unwrap_or_default();
        self.put(key(b'a', job), bytes);
    }

    pub fn remove_attempt(&mut self, job: u64) {
        self.batch.remove(key(b'a', job));
        self.writes += 1;
    }

    pub fn set_pending(&mut self, job: u64, queue: Option<&str>) {
        match queue {
            Some(q) => self.put(key(b'p', job), q.as_bytes().to_vec()),
            None => {
                self.batch.remove(key(b'p', job));
                self.writes += 1;
            }
        }
    }

    pub fn put_agent(&mut self, agent: &Agent) {
        let mut k = vec![b'g'];
        k.extend_from_slice(agent.name.as_bytes());
        self.put(k, agent.encode_to_vec());
    }

    pub fn remove_agent(&mut self, name: &str) {
        let mut k = vec![b'g'];
        k.extend_from_slice(name.as_bytes());
        self.batch.remove(k);
        self.writes += 1;
    }

    /// The test-result event `seq` of `job` (put in this set) is a run of
    /// `test_id` on `agent` of `profile`, for its test history.
    pub fn put_test_run(&mut self, test_id: &str, job: u64, seq: u64, profile: &str, agent: &str) {
        self.jobs.push(job);
        self.history
            .entry((job, profile.to_string(), agent.to_string()))
            .or_default()
            .push((seq, test_id.to_string()));
        self.writes += 1;
    }

    pub fn put_schedule(&mut self, schedule: &Schedule) {
        let mut k = vec![b's'];
        k.extend_from_slice(schedule.name.as_bytes());
        self.put(k, schedule.encode_to_vec());
    }

    pub fn remove_schedule(&mut self, name: &str) {
        let mut k = vec![b's'];
        k.extend_from_slice(name.as_bytes());
        self.batch.remove(k);
        self.writes += 1;
    }

    pub fn put_baseline(&mut self, key: &str, baseline: &Baseline) {
        let mut k = vec![b'b'];
        k.extend_from_slice(key.as_bytes());
        self.put(k, baseline.encode_to_vec());
    }

    pub fn put_token(&mut self, agent: bool, token: &StoredToken) {
        let name = token.token.as_ref().map_or("", |t| t.name.as_str());
        self.put(token_key(agent, name), token.encode_to_vec());
    }

    pub fn remove_token(&mut self, agent: bool, name: &str) {
        self.batch.remove(token_key(agent, name));
        self.writes += 1;
    }

    pub fn put_meta(&mut self, name: &str, value: u64) {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        self.put(k, value.to_be_bytes().to_vec());
    }

    pub fn is_empty(&self) -> bool {
        self.writes == 0
    }

    /// Marks job `id` live (loaded at start) or not.
    pub fn set_live(&mut self, id: u64, live: bool) {
        if live {
            self.put(key(b'l', id), Vec::new());
        } else {
            self.batch.remove(key(b'l', id));
            self.writes += 1;
        }
    }

    /// Files finished job `id` under its end, for retention.
    pub fn put_finished(&mut self, id: u64, ended_ms: i64) {
        self.jobs.push(id);
        self.put(finished_key(ended_ms, id), Vec::new());
    }

    pub fn put_dedup(&mut self, dedup_key: &str, id: u64, submitted_ms: i64) {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&submitted_ms.to_be_bytes());
        self.put(dedup_key_of(dedup_key), v);
    }

    /// Forgets a dedup key (its window has passed: it dedups nothing any more).
    pub fn remove_dedup(&mut self, dedup_key: &str) {
        self.batch.remove(dedup_key_of(dedup_key));
        self.writes += 1;
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.batch.insert(k, v);
        self.writes += 1;
    }

    /// The sled batch: events as blocks of at most [`BLOCK_BYTES`] (one
    /// event at least), test history as one record per (job, agent).
    fn into_batch(mut self) -> sled::Batch {
        for (job, events) in std::mem::take(&mut self.events) {
            let mut block: Vec<u8> = Vec::new();
            let mut last = 0;
            for ev in events {
                if !block.is_empty() && block.len() + ev.encoded_len() > BLOCK_BYTES {
                    self.batch
                        .insert(seq_key(b'E', job, last), encode_block(&block));
                    block.clear();
                }
                last = ev.seq;
                // Writing to a Vec cannot fail.
                let _ = ev.encode_length_delimited(&mut block);
            }
            if !block.is_empty() {
                self.batch
                    .insert(seq_key(b'E', job, last), encode_block(&block));
            }
        }
        for ((job, profile, agent), runs) in std::mem::take(&mut self.history) {
            let last = runs.iter().map(|r| r.0).max().unwrap_or(0);
            self.batch.insert(
                seq_key(b'H', job, last),
                encode_history(&profile, &agent, &runs),
            );
        }
        self.batch
    }
}

/// Raw bytes of events in one block, past which a new block starts.
const BLOCK_BYTES: usize = 256 * 1024;
/// Largest block a stored length may claim (a corrupt one is refused, not allocated).
const MAX_BLOCK_BYTES: usize = 64 * 1024 * 1024;
const RAW: u8 = 0;
const LZ4: u8 = 1;

/// `raw` (length-delimited events) as stored: lz4 when that is smaller.
fn encode_block(raw: &[u8]) -> Vec<u8> {
    let packed = lz4_flex::compress_prepend_size(raw);
    let mut v = Vec::with_capacity(1 + packed.len().min(raw.len()));
    if packed.len() < raw.len() {
        v.push(LZ4);
        v.extend_from_slice(&packed);
    } else {
        v.push(RAW);
        v.extend_from_slice(raw);
    }
    v
}

fn decode_block(k: &[u8], v: &[u8]) -> Result<Vec<JobEvent>, StoreError> {
    let raw = match v.split_first() {
        Some((&RAW, rest)) => std::borrow::Cow::Borrowed(rest),
        Some((&LZ4, rest)) => {
            let claimed = rest
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize);
            if claimed > MAX_BLOCK_BYTES {
                return Err(corrupt(k, format!("event block claims {claimed} bytes")));
            }
            std::borrow::Cow::Owned(
                lz4_flex::decompress_size_prepended(rest).map_err(|e| corrupt(k, e))?,
            )
        }
        _ => return Err(corrupt(k, "unknown event block format")),
    };
    let mut buf: &[u8] = &raw;
    let mut events = Vec::new();
    while !buf.is_empty() {
        events.push(JobEvent::decode_length_delimited(&mut buf).map_err(|e| corrupt(k, e))?);
    }
    Ok(events)
}

/// FNV-1a, 64 bits: stable across builds, unlike std's hasher (it is on disk).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A Bloom filter of node ids: 10 bits per id, 4 probes (about 1% false hits).
struct Bloom<'a>(std::borrow::Cow<'a, [u8]>);

impl Bloom<'_> {
    const PROBES: u64 = 4;

    fn of<'s>(ids: impl ExactSizeIterator<Item = &'s str>) -> Bloom<'static> {
        let bytes = (ids.len() * 10).div_ceil(8).max(8);
        let mut b = Bloom(std::borrow::Cow::Owned(vec![0u8; bytes]));
        for id in ids {
            for bit in b.bits(id) {
                b.0.to_mut()[bit / 8] |= 1 << (bit % 8);
            }
        }
        b
    }

    fn bits(&self, id: &str) -> impl Iterator<Item = usize> {
        let h = fnv64(id.as_bytes());
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        let m = (self.0.len() * 8) as u64;
        (0..Self::PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn may_contain(&self, id: &str) -> bool {
        self.bits(id).all(|bit| {
            self.0
                .get(bit / 8)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
        })
    }
}

fn put_varint(v: &mut Vec<u8>, n: u64) {
    prost::encoding::encode_varint(n, v);
}

fn put_text(v: &mut Vec<u8>, s: &str) {
    put_varint(v, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
}

/// A test-history record: version 1, profile, agent, the Bloom filter of
/// the node ids, then the event seqs (ascending, as deltas).
fn encode_history(profile: &str, agent: &str, runs: &[(u64, String)]) -> Vec<u8> {
    let bloom = Bloom::of(runs.iter().map(|r| r.1.as_str()));
    let mut v = vec![1u8];
    put_text(&mut v, profile);
    put_text(&mut v, agent);
    put_varint(&mut v, bloom.0.len() as u64);
    v.extend_from_slice(&bloom.0);
    let mut seqs: Vec<u64> = runs.iter().map(|r| r.0).collect();
    seqs.sort_unstable();
    put_varint(&mut v, seqs.len() as u64);
    let mut prev = 0;
    for seq in seqs {
        put_varint(&mut v, seq - prev);
        prev = seq;
    }
    v
}

/// A decoded test-history record (borrowing the stored bytes).
struct HistoryRecord<'a> {
    profile: String,
    agent: String,
    bloom: Bloom<'a>,
    seqs: Vec<u64>,
}

fn decode_history<'a>(k: &[u8], v: &'a [u8]) -> Result<HistoryRecord<'a>, StoreError> {
    let bad = |what: &str| corrupt(k, format!("test-history record: {what}"));
    let mut buf = v
        .strip_prefix(&[1u8])
        .ok_or_else(|| bad("unknown version"))?;
    let varint =
        |buf: &mut &'a [u8]| prost::encoding::decode_varint(buf).map_err(|_| bad("short varint"));
    let take = |buf: &mut &'a [u8], n: u64| -> Result<&'a [u8], StoreError> {
        let n = usize::try_from(n).map_err(|_| bad("length"))?;
        if buf.len() < n {
            return Err(bad("short"));
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    };
    let n = varint(&mut buf)?;
    let profile = String::from_utf8_lossy(take(&mut buf, n)?).into_owned();
    let n = varint(&mut buf)?;
    let agent = String::from_utf8_lossy(take(&mut buf, n)?).into_owned();
    let n = varint(&mut buf)?;
    let bloom = Bloom(std::borrow::Cow::Borrowed(take(&mut buf, n)?));
    let count = varint(&mut buf)?;
    let mut seqs = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut seq = 0u64;
    for _ in 0..count {
        seq = seq
            .checked_add(varint(&mut buf)?)
            .ok_or_else(|| bad("seq"))?;
        seqs.push(seq);
    }
    Ok(HistoryRecord {
        profile,
        agent,
        bloom,
        seqs,
    })
}

fn seq_key(prefix: u8, job: u64, seq: u64) -> Vec<u8> {
    let mut k = key(prefix, job);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn test_key(test_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(test_id.len() + 18);
    k.push(b'h');
    k.extend_from_slice(test_id.as_bytes());
    k.push(0);
    k
}

fn token_key(agent: bool, name: &str) -> Vec<u8> {
    let mut k = vec![b't', if agent { b'a' } else { b'p' }];
    k.extend_from_slice(name.as_bytes());
    k
}

fn finished_key(ended_ms: i64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'f');
    // Offset so that the order of the bytes is the order of the times.
    k.extend_from_slice(&((ended_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn dedup_key_of(dedup_key: &str) -> Vec<u8> {
    let mut k = vec![b'd'];
    k.extend_from_slice(dedup_key.as_bytes());
    k
}

fn key(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> Result<u64, StoreError> {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            key: k.to_vec(),
            reason: "short key".into(),
        })
}

/// The scheduler's sled database plus its flusher thread.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: mpsc::Sender<Durable>,
    /// Records applied since the flusher last started a flush.
    unflushed: Arc<AtomicU64>,
    /// The jobs an archive pass is moving now; [`Store::apply`] marks a
    /// conflict when it writes one of them, and the pass drops its batch.
    archive: Arc<Mutex<Claims>>,
    /// The last archive chunk decoded (raw value, entries): reads of
    /// neighbouring archived jobs decompress it once.
    last_chunk: Arc<Mutex<Option<DecodedChunk>>>,
    _thread: Arc<FlushThread>,
}

/// Joins the flusher when the last `Store` handle goes, so the database is
/// closed (and its lock released) when `Store` is dropped. Fields drop in
/// declaration order, so every handle's sender is gone by then and the
/// flusher's `recv` fails and ends its loop.
struct FlushThread(Option<thread::JoinHandle<()>>);

impl Drop for FlushThread {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the database under `dir` and starts the flusher thread.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        let (tx, rx) = mpsc::channel::<Durable>();
        let flush_db = db.clone();
        let unflushed = Arc::new(AtomicU64::new(0));
        let flush_count = unflushed.clone();
        let handle = thread::Builder::new()
            .name("msched-flush".into())
            .spawn(move || flush_loop(flush_db, rx, &flush_count))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(Store {
            db,
            flusher: tx,
            unflushed,
            archive: Arc::default(),
            last_chunk: Arc::default(),
            _thread: Arc::new(FlushThread(Some(handle))),
        })
    }

    /// Applies `writes` atomically (visible at once, durable after the next flush).
    pub fn apply(&self, mut writes: WriteSet) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let records = writes.writes as u64;
        let touched = std::mem::take(&mut writes.jobs);
        let batch = writes.into_batch();
        let mut claims = self.archive_lock();
        if !claims.jobs.is_empty() && touched.iter().any(|j| claims.jobs.contains(j)) {
            claims.conflicted = true;
        }
        self.db.apply_batch(batch)?;
        drop(claims);
        self.unflushed.fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `then(true)` once everything applied so far is on disk.
    pub fn after_durable(&self, then: Durable) {
        if let Err(mpsc::SendError(then)) = self.flusher.send(then) {
            then(false);
        }
    }

    /// Loads the whole durable state (start-up).
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot {
            indexed: self.db.get(meta_key(LIVE_INDEX))?.is_some(),
            ..Default::default()
        };
        if snap.indexed {
            for item in self.db.scan_prefix([b'l']) {
                let (k, _) = item?;
                if let Some(job) = self.job(id_of(&k)?)? {
                    snap.jobs.push(job);
                }
            }
        } else {
            for item in self.db.scan_prefix([b'j']) {
                let (k, v) = item?;
                snap.jobs
                    .push(Job::decode(&*v).map_err(|e| corrupt(&k, e))?);
            }
        }
        if let Some(item) = self.db.scan_prefix([b'j']).next_back() {
            snap.last_job = id_of(&item?.0)?;
        }
        if let Some(item) = self.db.scan_prefix([b'J']).next_back() {
            let (k, v) = item?;
            if let Some(e) = ChunkHead::decode(&k, &v)?.entries.last() {
                snap.last_job = snap.last_job.max(e.id);
            }
        }
        for item in self.db.scan_prefix([b'd']) {
            let (k, v) = item?;
            let (id, at) = v
                .split_at_checked(8)
                .ok_or_else(|| corrupt(&k, "short value"))?;
            let id = u64::from_be_bytes(id.try_into().map_err(|e| corrupt(&k, e))?);
            let at = i64::from_be_bytes(at.try_into().map_err(|e| corrupt(&k, e))?);
            snap.dedup
                .push((String::from_utf8_lossy(&k[1..]).into_owned(), id, at));
        }
        for item in self.db.scan_prefix([b'a']) {
            let (k, v) = item?;
            let rec = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            snap.attempts.push((id_of(&k)?, rec));
        }
        for item in self.db.scan_prefix([b'p']) {
            let (k, _) = item?;
            snap.pending.push(id_of(&k)?);
        }
        for item in self.db.scan_prefix([b'g']) {
            let (k, v) = item?;
            snap.agents
                .push(Agent::decode(&*v).map_err(|e| corrupt(&k, e))?);
        }
        for item in self.db.scan_prefix([b'b']) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k[1..]).into_owned();
            snap.baselines
                .push((key, Baseline::decode(&*v).map_err(|e| corrupt(&k, e))?));
        }
        for item in self.db.scan_prefix([b's']) {
            let (k, v) = item?;
            snap.schedules
                .push(Schedule::decode(&*v).map_err(|e| corrupt(&k, e))?);
        }
        for item in self.db.scan_prefix([b't']) {
            let (k, v) = item?;
            snap.tokens
                .push(StoredToken::decode(&*v).map_err(|e| corrupt(&k, e))?);
        }
        for item in self.db.scan_prefix([b'm']) {
            let (k, v) = item?;
            let value = <[u8; 8]>::try_from(&*v).map_err(|e| corrupt(&k, e))?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            snap.meta.push((name, u64::from_be_bytes(value)));
        }
        Ok(snap)
    }

    /// Events of `job` with `after < seq <= upto`, in order (blocking: call off the async runtime).
    pub fn events(&self, job: u64, after: u64, upto: u64) -> Result<Vec<JobEvent>, StoreError> {
        let first = after.saturating_add(1);
        if first > upto {
            return Ok(Vec::new());
        }
        // Loose keys first: a job only ever moves from them into its chunk
        // (atomically), so reading in this order misses nothing.
        let loose = self.loose_events(job, first, upto)?;
        let Some(entry) = self.archived(job)? else {
            return Ok(loose);
        };
        let archived = decode_events(&chunk_key(chunk_of(job)), &entry.events)?;
        if archived.is_empty() {
            return Ok(loose);
        }
        let mut all: BTreeMap<u64, JobEvent> = archived
            .into_iter()
            .filter(|e| e.seq >= first && e.seq <= upto)
            .map(|e| (e.seq, e))
            .collect();
        all.extend(loose.into_iter().map(|e| (e.seq, e)));
        Ok(all.into_values().collect())
    }

    /// Events of `job` in its own keys (`e`, `E`) with `first <= seq <= upto`.
    fn loose_events(&self, job: u64, first: u64, upto: u64) -> Result<Vec<JobEvent>, StoreError> {
        // Older versions' one-event keys come first: they are all older.
        let mut events = self
            .db
            .range(seq_key(b'e', job, first)..=seq_key(b'e', job, upto))
            .map(|item| {
                let (k, v) = item?;
                JobEvent::decode(&*v).map_err(|e| corrupt(&k, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Blocks are keyed by their last seq: the first one ending at or
        // after `first` is the first that may hold it.
        for item in self
            .db
            .range(seq_key(b'E', job, first)..=seq_key(b'E', job, u64::MAX))
        {
            let (k, v) = item?;
            let block = decode_block(&k, &v)?;
            let past = block.first().is_none_or(|e| e.seq > upto);
            if past {
                break;
            }
            let last = block.last().map_or(0, |e| e.seq);
            events.extend(
                block
                    .into_iter()
                    .filter(|e| e.seq >= first && e.seq <= upto),
            );
            if last >= upto {
                break;
            }
        }
        Ok(events)
    }

    /// Runs of `test_id` in this version's history records, newest first, of
    /// `profile` (any when empty), until `limit`.
    fn history_runs(
        &self,
        test_id: &str,
        profile: &str,
        limit: usize,
        runs: &mut Vec<TestRun>,
    ) -> Result<(), StoreError> {
        for item in self.history_walk() {
            if runs.len() >= limit {
                break;
            }
            let (job, seq, v) = item?;
            let rec = decode_history(&seq_key(b'H', job, seq), &v)?;
            if (!profile.is_empty() && rec.profile != profile) || !rec.bloom.may_contain(test_id) {
                continue;
            }
            let (Some(&lo), Some(&hi)) = (rec.seqs.first(), rec.seqs.last()) else {
                continue;
            };
            let wanted: HashSet<u64> = rec.seqs.iter().copied().collect();
            for ev in self
                .events(job, lo.saturating_sub(1), hi)?
                .into_iter()
                .rev()
            {
                if runs.len() >= limit {
                    break;
                }
                let Some(msfleet_proto::job_event::Kind::Test(t)) = ev.kind else {
                    continue;
                };
                if t.nodeid == test_id && wanted.contains(&ev.seq) {
                    runs.push(TestRun {
                        job_id: job.to_string(),
                        time_ms: ev.time_ms,
                        profile: rec.profile.clone(),
                        agent: rec.agent.clone(),
                        attempt: ev.attempt,
                        outcome: t.outcome,
                        duration_s: t.duration_s,
                        when: t.when,
                    });
                }
            }
        }
        Ok(())
    }

    /// The newest `call` duration of each of `ids` on `profile` (any when
    /// empty), from the test history: one pass over at most `max_records`
    /// history records, newest first, then older versions' keys for the ids
    /// still unknown (blocking).
    pub fn call_durations(
        &self,
        ids: &[String],
        profile: &str,
        max_records: usize,
    ) -> Result<HashMap<String, f64>, StoreError> {
        let mut want: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut found = HashMap::new();
        for item in self.history_walk().take(max_records) {
            if want.is_empty() {
                break;
            }
            let (job, seq, v) = item?;
            let rec = decode_history(&seq_key(b'H', job, seq), &v)?;
            if !profile.is_empty() && rec.profile != profile {
                continue;
            }
            // Probing costs one hash per id: with more ids than the record
            // holds, reading its events is cheaper.
            if want.len() <= rec.seqs.len() && !want.iter().any(|id| rec.bloom.may_contain(id)) {
                continue;
            }
            let (Some(&lo), Some(&hi)) = (rec.seqs.first(), rec.seqs.last()) else {
                continue;
            };
            let wanted: HashSet<u64> = rec.seqs.iter().copied().collect();
            for ev in self
                .events(job, lo.saturating_sub(1), hi)?
                .into_iter()
                .rev()
            {
                let Some(msfleet_proto::job_event::Kind::Test(t)) = ev.kind else {
                    continue;
                };
                if t.when == "call" && wanted.contains(&ev.seq) && want.remove(t.nodeid.as_str()) {
                    found.insert(t.nodeid, t.duration_s);
                }
            }
        }
        for id in want {
            let old = self.old_history(id, profile, usize::MAX)?;
            if let Some(run) = old.into_iter().find(|r| r.when == "call") {
                found.insert(id.to_string(), run.duration_s);
            }
        }
        Ok(found)
    }

    /// Recorded outcomes of one test, newest first, optionally of one profile
    /// (blocking: call off the async runtime).
    pub fn test_history(
        &self,
        test_id: &str,
        profile: &str,
        limit: usize,
    ) -> Result<Vec<TestRun>, StoreError> {
        let mut runs = Vec::new();
        self.history_runs(test_id, profile, limit, &mut runs)?;
        if runs.len() < limit {
            let left = limit - runs.len();
            runs.extend(self.old_history(test_id, profile, left)?);
        }
        Ok(runs)
    }

    /// Runs of `test_id` under older versions' one-key-per-run layout, newest first.
    fn old_history(
        &self,
        test_id: &str,
        profile: &str,
        limit: usize,
    ) -> Result<Vec<TestRun>, StoreError> {
        let mut runs = Vec::new();
        if limit == 0 {
            return Ok(runs);
        }
        for item in self.db.scan_prefix(test_key(test_id)).rev() {
            let (k, v) = item?;
            let run = TestRun::decode(&*v).map_err(|e| corrupt(&k, e))?;
            if profile.is_empty() || run.profile == profile {
                runs.push(run);
                if runs.len() >= limit {
                    break;
                }
            }
        }
        Ok(runs)
    }

    /// Flushes synchronously (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Deletes a finished job's records (retention; blocking, call off the
    /// core thread): the test-history entries its test events made, its
    /// events, and its job record last, in batches of at most `chunk` keys,
    /// so a crash midway leaves the job listed and a later pass finishes it.
    /// Returns how many keys it deleted.
    pub fn delete_job(&self, job: u64, chunk: usize) -> Result<usize, StoreError> {
        self.delete_jobs(&[job], chunk)
    }

    /// [`Store::delete_job`] for each of `jobs`, each archive chunk they
    /// are in rewritten once, after their own keys are gone (a crash
    /// between leaves them archived: listed, and retired again later).
    pub fn delete_jobs(&self, jobs: &[u64], chunk: usize) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut archived: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
        for &job in jobs {
            match self.delete_loose(job, chunk) {
                Ok((keys, in_chunk)) => {
                    deleted += keys;
                    if in_chunk {
                        archived.entry(chunk_of(job)).or_default().insert(job);
                    }
                }
                // One job's trouble does not keep the others.
                Err(e) => {
                    tracing::error!(job, error = %e, "deleting a retired job failed; the next start retries it")
                }
            }
        }
        for (c, gone) in archived {
            let old = self.read_chunk(c)?;
            let entries: Vec<ChunkEntry> = old
                .iter()
                .flat_map(|o| o.iter().filter(|e| !gone.contains(&e.id)).cloned())
                .collect();
            let mut batch = sled::Batch::default();
            self.put_chunk(&mut batch, c, old.as_deref().map(Vec::as_slice), &entries);
            // Only this thread writes chunks: no claim needed.
            self.db.apply_batch(batch)?;
            deleted += gone.len();
        }
        Ok(deleted)
    }

    /// A job's own keys gone; whether it has an archived copy to remove.
    fn delete_loose(&self, job: u64, chunk: usize) -> Result<(usize, bool), StoreError> {
        let chunk = chunk.max(1);
        let mut deleted = 0;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        // The older layout's history keys are found through the test ids of
        // the job's one-key-per-event events (in their keys, or archived).
        let mut tests: std::collections::BTreeSet<String> = Default::default();
        let mut old_events = Vec::new();
        for item in self.db.scan_prefix(key(b'e', job)) {
            let (k, v) = item?;
            old_events.push(JobEvent::decode(&*v).map_err(|e| corrupt(&k, e))?);
        }
        let archived = self.archived(job)?;
        if let Some(entry) = &archived {
            old_events.extend(decode_events(&chunk_key(chunk_of(job)), &entry.events)?);
        }
        for event in old_events {
            if let Some(msfleet_proto::job_event::Kind::Test(t)) = event.kind {
                tests.insert(t.nodeid);
            }
        }
        let old_history = tests.iter().map(|test| {
            let mut prefix = test_key(test);
            prefix.extend_from_slice(&job.to_be_bytes());
            prefix
        });
        // History before events: a crash midway leaves no history record
        // pointing at events that are gone.
        let prefixes: Vec<Vec<u8>> = old_history
            .chain([key(b'H', job), key(b'E', job), key(b'e', job)])
            .collect();
        for prefix in prefixes {
            for item in self.db.scan_prefix(prefix) {
                let (k, _) = item?;
                batch.remove(k);
                in_batch += 1;
                if in_batch >= chunk {
                    self.db.apply_batch(std::mem::take(&mut batch))?;
                    deleted += in_batch;
                    in_batch = 0;
                }
            }
        }
        if let Some(j) = self.job(job)? {
            batch.remove(finished_key(j.finished_at_ms, job));
            in_batch += 1;
            if let Some(d) = j
                .spec
                .as_ref()
                .map(|s| &s.dedup_key)
                .filter(|d| !d.is_empty())
            {
                let k = dedup_key_of(d);
                // Only its own entry: a newer job may hold the key now.
                let mine = self
                    .db
                    .get(&k)?
                    .is_some_and(|v| v.get(..8) == Some(&job.to_be_bytes()[..]));
                if mine {
                    batch.remove(k);
                    in_batch += 1;
                }
            }
        }
        for prefix in [b'a', b'p', b'l', b'j'] {
            batch.remove(key(prefix, job));
            in_batch += 1;
        }
        self.db.apply_batch(batch)?;
        Ok((deleted + in_batch, archived.is_some()))
    }

    /// One stored job (a finished job that is not in the core's memory).
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let k = key(b'j', id);
        // Its own key first (see `events`): also newer than an archived copy.
        if let Some(v) = self.db.get(&k)? {
            return Job::decode(&*v).map(Some).map_err(|e| corrupt(&k, e));
        }
        let Some(entry) = self.archived(id)? else {
            return Ok(None);
        };
        Job::decode(&*entry.record)
            .map(Some)
            .map_err(|e| corrupt(&chunk_key(chunk_of(id)), e))
    }

    /// Ids of stored jobs below `before`, newest first, at most `n`.
    pub fn job_ids_before(&self, before: u64, n: usize) -> Result<Vec<u64>, StoreError> {
        let mut ids = self
            .db
            .range(key(b'j', 0)..key(b'j', before))
            .rev()
            .take(n)
            .map(|item| id_of(&item?.0))
            .collect::<Result<Vec<_>, _>>()?;
        if before > 0 {
            let mut archived = 0;
            for item in self
                .db
                .range(chunk_key(0)..=chunk_key(chunk_of(before - 1)))
                .rev()
            {
                if archived >= n {
                    break;
                }
                let (k, v) = item?;
                let head = ChunkHead::decode(&k, &v)?;
                for e in head.entries.iter().rev().filter(|e| e.id < before) {
                    ids.push(e.id);
                    archived += 1;
                }
            }
        }
        // A job re-written after it was archived is in both places.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(n);
        Ok(ids)
    }

    /// Jobs that finished before `cutoff_ms`, oldest first, at most `n`.
    pub fn finished_before(&self, cutoff_ms: i64, n: usize) -> Result<Vec<u64>, StoreError> {
        let mut ended = self
            .db
            .range(finished_key(i64::MIN, 0)..finished_key(cutoff_ms, 0))
            .take(n)
            .map(|item| {
                let (k, _) = item?;
                finished_of(&k)
            })
            .collect::<Result<Vec<(i64, u64)>, _>>()?;
        // Archived jobs, by their chunks' earliest ends.
        let mut archived = 0;
        for item in self
            .db
            .range(chunk_index_key(i64::MIN, 0)..chunk_index_key(cutoff_ms, 0))
        {
            if archived >= n {
                break;
            }
            let (k, _) = item?;
            let (_, chunk) = finished_of(&k)?;
            let Some(v) = self.db.get(chunk_key(chunk))? else {
                continue;
            };
            let head = ChunkHead::decode(&chunk_key(chunk), &v)?;
            for e in head.entries.iter().filter(|e| e.end_ms < cutoff_ms) {
                ended.push((e.end_ms, e.id));
                archived += 1;
            }
        }
        ended.sort_unstable();
        let mut seen = HashSet::new();
        ended.retain(|&(_, id)| seen.insert(id));
        ended.truncate(n);
        Ok(ended.into_iter().map(|(_, id)| id).collect())
    }
}

/// Finished jobs per archive chunk: ids `c * ARCHIVE_JOBS ..` share key `J c`.
pub const ARCHIVE_JOBS: u64 = 64;
/// A finished job's events up to this size (raw) are archived with its
/// record; a larger job's events stay in their own keys (a few per job).
pub const ARCHIVE_MAX_EVENT_BYTES: usize = 64 * 1024;
/// The archive chunk format.
const CHUNK_V1: u8 = 1;

/// One archived job: its record, its events (length-delimited) and its
/// test-history records (by last seq, as `H` keys held them), as stored.
#[derive(Debug, Clone)]
struct ChunkEntry {
    id: u64,
    end_ms: i64,
    record: Vec<u8>,
    events: Vec<u8>,
    history: Vec<(u64, Vec<u8>)>,
}

/// A chunk's stored value and its entries, decoded.
type DecodedChunk = (sled::IVec, Arc<Vec<ChunkEntry>>);

/// What an archive chunk's uncompressed head says of one job.
struct HeadEntry {
    id: u64,
    end_ms: i64,
    record_len: usize,
    events_len: usize,
    history_len: usize,
}

/// A chunk's head (ids, ends, lengths) and its compressed body.
struct ChunkHead<'a> {
    entries: Vec<HeadEntry>,
    body: &'a [u8],
}

fn chunk_of(id: u64) -> u64 {
    id / ARCHIVE_JOBS
}

fn chunk_key(chunk: u64) -> Vec<u8> {
    key(b'J', chunk)
}

/// `F` + the chunk's earliest end + chunk: sorts like `f` keys.
fn chunk_index_key(min_end_ms: i64, chunk: u64) -> Vec<u8> {
    let mut k = finished_key(min_end_ms, chunk);
    k[0] = b'F';
    k
}

/// (end ms, id) of an `f` key, (min end ms, chunk) of an `F` key.
fn finished_of(k: &[u8]) -> Result<(i64, u64), StoreError> {
    let end = k
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64);
    let id = k
        .get(9..17)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    end.zip(id).ok_or_else(|| corrupt(k, "short key"))
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// A job's test-history records in a chunk: (last seq, record length, record)...
fn encode_chunk_history(history: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (seq, rec) in history {
        put_varint(&mut v, *seq);
        put_varint(&mut v, rec.len() as u64);
        v.extend_from_slice(rec);
    }
    v
}

fn decode_chunk_history(k: &[u8], mut buf: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let bad = || corrupt(k, "archive chunk: test history");
    let mut out = Vec::new();
    while !buf.is_empty() {
        let seq = prost::encoding::decode_varint(&mut buf).map_err(|_| bad())?;
        let n = prost::encoding::decode_varint(&mut buf).map_err(|_| bad())?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or_else(bad)?;
        let (rec, rest) = buf.split_at(n);
        out.push((seq, rec.to_vec()));
        buf = rest;
    }
    Ok(out)
}

/// A chunk: version, count, per job (ascending ids) the id, end (zigzag),
/// record, events and test-history lengths, then the records, events and
/// test histories, in that order, lz4-compressed as one body.
fn encode_chunk(entries: &[ChunkEntry]) -> Vec<u8> {
    let mut v = vec![CHUNK_V1];
    put_varint(&mut v, entries.len() as u64);
    let mut body = Vec::new();
    for e in entries {
        let history = encode_chunk_history(&e.history);
        put_varint(&mut v, e.id);
        put_varint(&mut v, zigzag(e.end_ms));
        put_varint(&mut v, e.record.len() as u64);
        put_varint(&mut v, e.events.len() as u64);
        put_varint(&mut v, history.len() as u64);
        body.extend_from_slice(&e.record);
        body.extend_from_slice(&e.events);
        body.extend_from_slice(&history);
    }
    v.extend_from_slice(&lz4_flex::compress_prepend_size(&body));
    v
}

impl<'a> ChunkHead<'a> {
    fn decode(k: &[u8], v: &'a [u8]) -> Result<ChunkHead<'a>, StoreError> {
        let bad = |what: &str| corrupt(k, format!("archive chunk: {what}"));
        let mut buf = v
            .strip_prefix(&[CHUNK_V1])
            .ok_or_else(|| bad("unknown version"))?;
        let varint =
            |buf: &mut &'a [u8]| prost::encoding::decode_varint(buf).map_err(|_| bad("short"));
        let count = varint(&mut buf)?;
        if count > ARCHIVE_JOBS {
            return Err(bad("too many jobs"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut total: usize = 0;
        for _ in 0..count {
            let id = varint(&mut buf)?;
            let end_ms = unzigzag(varint(&mut buf)?);
            let record_len = usize::try_from(varint(&mut buf)?).map_err(|_| bad("length"))?;
            let events_len = usize::try_from(varint(&mut buf)?).map_err(|_| bad("length"))?;
            let history_len = usize::try_from(varint(&mut buf)?).map_err(|_| bad("length"))?;
            total = total
                .checked_add(record_len)
                .and_then(|t| t.checked_add(events_len))
                .and_then(|t| t.checked_add(history_len))
                .filter(|&t| t <= MAX_BLOCK_BYTES)
                .ok_or_else(|| bad("too large"))?;
            entries.push(HeadEntry {
                id,
                end_ms,
                record_len,
                events_len,
                history_len,
            });
        }
        let claimed = buf
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize);
        if claimed != Some(total) {
            return Err(bad("body length"));
        }
        Ok(ChunkHead { entries, body: buf })
    }

    fn entries(&self, k: &[u8]) -> Result<Vec<ChunkEntry>, StoreError> {
        let body = lz4_flex::decompress_size_prepended(self.body).map_err(|e| corrupt(k, e))?;
        let mut at = 0;
        let mut slice = |n: usize| {
            let s = body.get(at..at + n).map(<[u8]>::to_vec);
            at += n;
            s.ok_or_else(|| corrupt(k, "archive chunk: short body"))
        };
        self.entries
            .iter()
            .map(|h| {
                Ok(ChunkEntry {
                    id: h.id,
                    end_ms: h.end_ms,
                    record: slice(h.record_len)?,
                    events: slice(h.events_len)?,
                    history: decode_chunk_history(k, &slice(h.history_len)?)?,
                })
            })
            .collect()
    }
}

/// Length-delimited events, as a block's raw bytes or a chunk entry holds them.
fn decode_events(k: &[u8], mut buf: &[u8]) -> Result<Vec<JobEvent>, StoreError> {
    let mut events = Vec::new();
    while !buf.is_empty() {
        events.push(JobEvent::decode_length_delimited(&mut buf).map_err(|e| corrupt(k, e))?);
    }
    Ok(events)
}

/// The jobs an archive pass is moving, and whether one was written meanwhile.
#[derive(Default)]
struct Claims {
    jobs: HashSet<u64>,
    conflicted: bool,
}

impl Store {
    fn archive_lock(&self) -> MutexGuard<'_, Claims> {
        self.archive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunk `c`'s entries, if it exists (decoded once for neighbouring reads).
    fn read_chunk(&self, c: u64) -> Result<Option<Arc<Vec<ChunkEntry>>>, StoreError> {
        let k = chunk_key(c);
        let Some(v) = self.db.get(&k)? else {
            return Ok(None);
        };
        let mut last = self.last_chunk.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((raw, entries)) = last.as_ref() {
            if *raw == v {
                return Ok(Some(entries.clone()));
            }
        }
        let entries = Arc::new(ChunkHead::decode(&k, &v)?.entries(&k)?);
        *last = Some((v, entries.clone()));
        Ok(Some(entries))
    }

    /// Job `id`'s archived copy, if it has one.
    fn archived(&self, id: u64) -> Result<Option<ChunkEntry>, StoreError> {
        let k = chunk_key(chunk_of(id));
        let Some(v) = self.db.get(&k)? else {
            return Ok(None);
        };
        // The head says whether the job is there without decompressing.
        if !ChunkHead::decode(&k, &v)?
            .entries
            .iter()
            .any(|e| e.id == id)
        {
            return Ok(None);
        }
        Ok(self
            .read_chunk(chunk_of(id))?
            .and_then(|entries| entries.iter().find(|e| e.id == id).cloned()))
    }

    /// Writes chunk `c` as `entries` (sorted by id; none: the chunk goes),
    /// with its `F` entry moved from `old`'s earliest end to the new one.
    fn put_chunk(
        &self,
        batch: &mut sled::Batch,
        c: u64,
        old: Option<&[ChunkEntry]>,
        entries: &[ChunkEntry],
    ) {
        let min_end = |es: &[ChunkEntry]| es.iter().map(|e| e.end_ms).min();
        if let Some(end) = old.and_then(min_end) {
            batch.remove(chunk_index_key(end, c));
        }
        match min_end(entries) {
            Some(end) => {
                batch.insert(chunk_key(c), encode_chunk(entries));
                batch.insert(chunk_index_key(end, c), Vec::new());
            }
            None => batch.remove(chunk_key(c)),
        }
    }

    /// Moves finished jobs that ended before `ended_before_ms` (at most
    /// `max_jobs`, oldest first) from their own keys into their archive
    /// chunks: record, events (when at most [`ARCHIVE_MAX_EVENT_BYTES`]) and
    /// finished mark, one atomic batch per chunk (blocking: the retention
    /// thread calls it). A job written again after it was archived (its own
    /// keys back) is merged again: its newer record and events win.
    /// Returns how many jobs it archived. A job the core writes while its
    /// chunk is being made stays in its own keys until a later pass.
    pub fn archive_finished(
        &self,
        ended_before_ms: i64,
        max_jobs: usize,
    ) -> Result<usize, StoreError> {
        self.archive_pass(ended_before_ms, max_jobs, &mut || {})
    }

    /// [`Store::archive_finished`], calling `meanwhile` after a chunk is
    /// read and made, before it is written (tests write there).
    fn archive_pass(
        &self,
        ended_before_ms: i64,
        max_jobs: usize,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<usize, StoreError> {
        let mut by_chunk: BTreeMap<u64, Vec<(Vec<u8>, u64)>> = BTreeMap::new();
        for item in self
            .db
            .range(finished_key(i64::MIN, 0)..finished_key(ended_before_ms, 0))
            .take(max_jobs)
        {
            let (k, _) = item?;
            let (_, id) = finished_of(&k)?;
            by_chunk
                .entry(chunk_of(id))
                .or_default()
                .push((k.to_vec(), id));
        }
        let mut archived = 0;
        for (c, members) in by_chunk {
            {
                // Claimed before anything is read: a write after this is seen.
                let mut claims = self.archive_lock();
                claims.jobs = members.iter().map(|m| m.1).collect();
                claims.conflicted = false;
            }
            let before = archived;
            let old = self.read_chunk(c)?;
            let mut entries: BTreeMap<u64, ChunkEntry> = old
                .iter()
                .flat_map(|o| o.iter().cloned())
                .map(|e| (e.id, e))
                .collect();
            let mut batch = sled::Batch::default();
            let mut changed = false;
            for (finished, id) in members {
                let jk = key(b'j', id);
                let Some(record) = self.db.get(&jk)? else {
                    // A mark left without its job.
                    batch.remove(finished);
                    changed = true;
                    continue;
                };
                let job = Job::decode(&*record).map_err(|e| corrupt(&jk, e))?;
                if !job.state().is_terminal() {
                    continue;
                }
                let mut loose_keys = Vec::new();
                let mut events: BTreeMap<u64, JobEvent> = BTreeMap::new();
                if let Some(prev) = entries.get(&id) {
                    for ev in decode_events(&chunk_key(c), &prev.events)? {
                        events.insert(ev.seq, ev);
                    }
                }
                for item in self.db.scan_prefix(key(b'e', id)) {
                    let (k, v) = item?;
                    let ev = JobEvent::decode(&*v).map_err(|e| corrupt(&k, e))?;
                    events.insert(ev.seq, ev);
                    loose_keys.push(k);
                }
                for item in self.db.scan_prefix(key(b'E', id)) {
                    let (k, v) = item?;
                    for ev in decode_block(&k, &v)? {
                        events.insert(ev.seq, ev);
                    }
                    loose_keys.push(k);
                }
                let mut history: BTreeMap<u64, Vec<u8>> = entries
                    .get(&id)
                    .map(|e| e.history.iter().cloned().collect())
                    .unwrap_or_default();
                for item in self.db.scan_prefix(key(b'H', id)) {
                    let (k, v) = item?;
                    let seq = k
                        .get(9..17)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt(&k, "short key"))?;
                    history.insert(seq, v.to_vec());
                    loose_keys.push(k);
                }
                let mut raw = Vec::new();
                for ev in events.values() {
                    // Writing to a Vec cannot fail.
                    let _ = ev.encode_length_delimited(&mut raw);
                }
                let (events, history) = if raw.len() <= ARCHIVE_MAX_EVENT_BYTES {
                    for k in loose_keys {
                        batch.remove(k);
                    }
                    (raw, history.into_iter().collect())
                } else {
                    // Too large: its events and test history stay (or start) in their own keys.
                    let prev = entries.get(&id);
                    (
                        prev.map(|e| e.events.clone()).unwrap_or_default(),
                        prev.map(|e| e.history.clone()).unwrap_or_default(),
                    )
                };
                entries.insert(
                    id,
                    ChunkEntry {
                        id,
                        end_ms: job.finished_at_ms,
                        record: record.to_vec(),
                        events,
                        history,
                    },
                );
                batch.remove(jk);
                batch.remove(finished);
                archived += 1;
                changed = true;
            }
            let entries: Vec<ChunkEntry> = entries.into_values().collect();
            self.put_chunk(&mut batch, c, old.as_deref().map(Vec::as_slice), &entries);
            meanwhile();
            let mut claims = self.archive_lock();
            let conflicted = std::mem::take(&mut claims.conflicted);
            claims.jobs.clear();
            if conflicted || !changed {
                // Written meanwhile: they stay in their own keys until a later pass.
                archived = before;
                continue;
            }
            self.db.apply_batch(batch)?;
        }
        Ok(archived)
    }
}

/// A test-history record: (job, last seq, record).
type HistoryItem = (u64, u64, Vec<u8>);

/// Test-history records newest first (by job, then last seq): the `H` keys
/// and the archived ones, merged ([`Store::history_walk`]).
struct HistoryWalk {
    loose: std::iter::Peekable<std::iter::Rev<sled::Iter>>,
    chunks: std::iter::Rev<sled::Iter>,
    /// The current chunk's records, ascending: taken from the end.
    archived: Vec<HistoryItem>,
}

fn job_and_seq(k: &[u8]) -> Result<(u64, u64), StoreError> {
    let seq = k
        .get(9..17)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(k, "short key"))?;
    Ok((id_of(k)?, seq))
}

impl HistoryWalk {
    /// Loads the next chunk that holds test history, if `archived` is empty.
    fn refill(&mut self) -> Result<(), StoreError> {
        while self.archived.is_empty() {
            let Some(item) = self.chunks.next() else {
                return Ok(());
            };
            let (k, v) = item?;
            let head = ChunkHead::decode(&k, &v)?;
            if head.entries.iter().all(|e| e.history_len == 0) {
                continue;
            }
            for e in head.entries(&k)? {
                self.archived
                    .extend(e.history.into_iter().map(|(seq, rec)| (e.id, seq, rec)));
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<HistoryItem>, StoreError> {
        self.refill()?;
        let loose = match self.loose.peek() {
            Some(Ok((k, _))) => Some(job_and_seq(k)?),
            Some(Err(_)) => {
                return match self.loose.next() {
                    Some(Err(e)) => Err(e.into()),
                    _ => Ok(None),
                }
            }
            None => None,
        };
        let archived = self.archived.last().map(|&(job, seq, _)| (job, seq));
        match (loose, archived) {
            (None, None) => Ok(None),
            (Some(l), a) if a.is_none_or(|a| l >= a) => {
                if a == Some(l) {
                    // In both places (written again after archiving): one.
                    self.archived.pop();
                }
                let (_, v) = self
                    .loose
                    .next()
                    .transpose()?
                    .ok_or_else(|| corrupt(&[], "walk"))?;
                Ok(Some((l.0, l.1, v.to_vec())))
            }
            _ => Ok(self.archived.pop()),
        }
    }
}

impl Iterator for HistoryWalk {
    type Item = Result<HistoryItem, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

impl Store {
    /// Every test-history record, newest first, loose and archived.
    fn history_walk(&self) -> HistoryWalk {
        HistoryWalk {
            loose: self.db.scan_prefix([b'H']).rev().peekable(),
            chunks: self.db.scan_prefix([b'J']).rev(),
            archived: Vec::new(),
        }
    }
}

#[cfg(test)]
impl Store {
    /// Drops a meta entry (tests make an old store's layout with it).
    pub fn remove_meta_for_test(&self, name: &str) {
        self.db.remove(meta_key(name)).expect("remove meta");
    }
}

/// The meta flag of a store whose live and finished indexes are written.
pub const LIVE_INDEX: &str = "live_index";

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn corrupt(k: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: k.to_vec(),
        reason: e.to_string(),
    }
}

/// Group commit: one `flush` for every callback that queued up while the last one ran.
/// Each flush's duration and record count go to [`crate::metrics::store_commit`].
fn flush_loop(db: sled::Db, rx: mpsc::Receiver<Durable>, unflushed: &AtomicU64) {
    let mut waiting: Vec<Durable> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter());
        let records = unflushed.swap(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let flushed = db.flush();
        crate::metrics::store_commit(started.elapsed().as_secs_f64(), records);
        let ok = match flushed {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "flushing the store failed; acknowledging nothing");
                false
            }
        };
        for then in waiting.drain(..) {
            then(ok);
        }
    }
}

impl WriteSet {
    /// The kept runs of one benchmark case key ([`crate::baseline::key_string`]).
    pub fn put_case_runs(&mut self, key: &str, runs: &msfleet_proto::CaseRuns) {
        let mut k = vec![b'r'];
        k.extend_from_slice(key.as_bytes());
        self.put(k, runs.encode_to_vec());
    }
}

impl Store {
    /// Every key's kept case runs (start-up; blocking).
    pub fn load_case_runs(&self) -> Result<Vec<(String, msfleet_proto::CaseRuns)>, StoreError> {
        let mut all = Vec::new();
        for item in self.db.scan_prefix([b'r']) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k[1..]).into_owned();
            let runs = msfleet_proto::CaseRuns::decode(&*v).map_err(|e| corrupt(&k, e))?;
            all.push((key, runs));
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::JobState;

    #[test]
    fn writes_survive_reopen_and_events_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let mut w = WriteSet::default();
            let job = Job {
                id: "7".into(),
                state: JobState::Queued as i32,
                ..Default::default()
            };
            w.put_job(7, &job);
            w.set_pending(7, Some("default"));
            for seq in 1..=300u64 {
                w.put_event(
                    7,
                    JobEvent {
                        seq,
                        ..Default::default()
                    },
                );
            }
            store.apply(w).unwrap();
            let (tx, rx) = mpsc::channel();
            store.after_durable(Box::new(move |ok| tx.send(ok).unwrap()));
            assert!(rx.recv().unwrap());
        }
        // sled's own background thread lets go of the file lock shortly after
        // the last handle drops; a new process never sees this.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match Store::open(dir.path(), 1 << 20) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        };
        let snap = store.load().unwrap();
        assert_eq!(snap.jobs.len(), 1);
        assert_eq!(snap.pending, vec![7]);
        let evs = store.events(7, 255, 300).unwrap();
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (256..=300).collect::<Vec<_>>());
    }

    fn test_event(seq: u64, nodeid: &str, outcome: &str) -> JobEvent {
        JobEvent {
            seq,
            time_ms: 1000 + seq as i64,
            attempt: 1,
            kind: Some(msfleet_proto::job_event::Kind::Test(
                msfleet_proto::TestResult {
                    nodeid: nodeid.into(),
                    when: "call".into(),
                    outcome: outcome.into(),
                    duration_s: seq as f64,
                    ..Default::default()
                },
            )),
        }
    }

    fn durable(store: &Store) {
        let (tx, rx) = mpsc::channel();
        store.after_durable(Box::new(move |ok| tx.send(ok).unwrap()));
        assert!(rx.recv().unwrap());
    }

    /// A store written by an older version (one key per event, one per
    /// history run) keeps reading: a job's old events and its new event
    /// blocks come back as one gap-free run, and a test's history joins the
    /// old runs after the new ones, newest first.
    #[test]
    fn events_and_history_of_the_older_one_key_layout_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        // As the older version wrote them.
        for seq in 1..=3u64 {
            let ev = test_event(seq, "t.py::a", "passed");
            store
                .db
                .insert(seq_key(b'e', 5, seq), ev.encode_to_vec())
                .unwrap();
            let mut k = test_key("t.py::a");
            k.extend_from_slice(&5u64.to_be_bytes());
            k.extend_from_slice(&seq.to_be_bytes());
            let run = TestRun {
                job_id: "5".into(),
                time_ms: 1000 + seq as i64,
                profile: "old".into(),
                outcome: "passed".into(),
                when: "call".into(),
                duration_s: seq as f64,
                ..Default::default()
            };
            store.db.insert(k, run.encode_to_vec()).unwrap();
        }
        // This version, in two writes (two blocks), one event over the block size.
        let mut w = WriteSet::default();
        w.put_event(5, test_event(4, "t.py::a", "failed"));
        w.put_test_run("t.py::a", 5, 4, "new", "a1");
        let mut big = test_event(5, "t.py::b", "failed");
        if let Some(msfleet_proto::job_event::Kind::Test(t)) = big.kind.as_mut() {
            t.longrepr = "x".repeat(BLOCK_BYTES + 10);
        }
        w.put_event(5, big);
        w.put_test_run("t.py::b", 5, 5, "new", "a1");
        store.apply(w).unwrap();
        let mut w = WriteSet::default();
        for seq in 6..=9 {
            w.put_event(5, test_event(seq, "t.py::a", "passed"));
            w.put_test_run("t.py::a", 5, seq, "new", "a1");
        }
        store.apply(w).unwrap();
        durable(&store);
        let all: Vec<u64> = store
            .events(5, 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all, (1..=9).collect::<Vec<_>>());
        for (after, upto) in [(0, 2), (2, 4), (3, 5), (4, 7), (7, 9), (8, 8), (9, 20)] {
            let got: Vec<u64> = store
                .events(5, after, upto)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            let want: Vec<u64> = (after + 1..=upto.min(9)).collect();
            assert_eq!(got, want, "events({after}, {upto})");
        }
        let runs = store.test_history("t.py::a", "", 100).unwrap();
        let seen: Vec<(String, f64)> = runs
            .iter()
            .map(|r| (r.profile.clone(), r.duration_s))
            .collect();
        let want: Vec<(String, f64)> = [9.0, 8.0, 7.0, 6.0, 4.0]
            .iter()
            .map(|d| ("new".to_string(), *d))
            .chain([3.0, 2.0, 1.0].iter().map(|d| ("old".to_string(), *d)))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(runs[4].outcome, "failed");
        assert_eq!(runs[0].agent, "a1");
        assert_eq!(store.test_history("t.py::a", "old", 2).unwrap().len(), 2);
        assert_eq!(store.test_history("t.py::a", "new", 100).unwrap().len(), 5);
        assert_eq!(store.test_history("t.py::b", "", 10).unwrap().len(), 1);
        assert!(store.test_history("t.py::zzz", "", 10).unwrap().is_empty());
        let d = store
            .call_durations(
                &["t.py::a".into(), "t.py::b".into(), "t.py::c".into()],
                "",
                100,
            )
            .unwrap();
        assert_eq!(d.get("t.py::a"), Some(&9.0));
        assert_eq!(d.get("t.py::b"), Some(&5.0));
        assert_eq!(d.get("t.py::c"), None);
        let d = store
            .call_durations(&["t.py::a".into()], "old", 100)
            .unwrap();
        assert_eq!(
            d.get("t.py::a"),
            Some(&3.0),
            "old keys fill in what is missing"
        );
    }

    fn finished_job(id: u64, end: i64) -> Job {
        Job {
            id: id.to_string(),
            state: JobState::Passed as i32,
            finished_at_ms: end,
            submitted_at_ms: end - 10,
            ..Default::default()
        }
    }

    /// Everything a reader sees of the stored jobs `ids`.
    fn seen(store: &Store, ids: &[u64]) -> Vec<(Option<Job>, Vec<JobEvent>)> {
        ids.iter()
            .map(|&id| {
                (
                    store.job(id).unwrap(),
                    store.events(id, 0, u64::MAX).unwrap(),
                )
            })
            .collect()
    }

    fn keys_with(store: &Store, prefix: u8) -> usize {
        store.db.scan_prefix([prefix]).count()
    }

    /// Finished jobs written in their own keys (this version's blocks, the
    /// older one-key-per-event layout, one job over the archive's event
    /// size) read back the same once archived: record, events, listing,
    /// retention's order, test history, the last id; their own keys are
    /// gone but the large job's events. A job written again after it was
    /// archived reads as the merge and is archived again; a retired
    /// archived job is gone everywhere.
    #[test]
    fn archived_finished_jobs_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let ids: Vec<u64> = (60..=140).collect();
        let mut w = WriteSet::default();
        for &id in &ids {
            w.put_job(id, &finished_job(id, 5_000 + (id as i64 % 7) * 100));
            w.put_finished(id, 5_000 + (id as i64 % 7) * 100);
            if id % 10 == 3 {
                continue; // old layout, below
            }
            let mine = format!("t.py::{id}");
            for (seq, test) in [(1, mine.as_str()), (2, "t.py::all"), (3, "t.py::all")] {
                w.put_event(id, test_event(seq, test, "passed"));
                w.put_test_run(test, id, seq, "p", "a1");
            }
        }
        store.apply(w).unwrap();
        for &id in ids.iter().filter(|&&id| id % 10 == 3) {
            for seq in 1..=2u64 {
                let ev = test_event(seq, "t.py::old", "failed");
                store
                    .db
                    .insert(seq_key(b'e', id, seq), ev.encode_to_vec())
                    .unwrap();
            }
        }
        // A large job: its events stay in their own keys.
        let mut w = WriteSet::default();
        let mut big = test_event(4, "t.py::big", "failed");
        if let Some(msfleet_proto::job_event::Kind::Test(t)) = big.kind.as_mut() {
            t.longrepr = "y".repeat(ARCHIVE_MAX_EVENT_BYTES + 1);
        }
        w.put_event(100, big);
        // A live job in a chunk's range is left alone.
        let live = Job {
            id: "141".into(),
            state: JobState::Running as i32,
            ..Default::default()
        };
        w.put_job(141, &live);
        w.set_live(141, true);
        store.apply(w).unwrap();
        let mut all = ids.clone();
        all.push(141);
        let before = seen(&store, &all);
        let listed = store.job_ids_before(u64::MAX, 1000).unwrap();
        let page = store.job_ids_before(100, 10).unwrap();
        let due = store.finished_before(5_300, 1000).unwrap();
        let history = store.test_history("t.py::77", "", 10).unwrap();
        assert_eq!(history.len(), 1);
        let shared = store.test_history("t.py::all", "", 1000).unwrap();
        let with_blocks = ids.iter().filter(|&&id| id % 10 != 3).count();
        assert_eq!(shared.len(), 2 * with_blocks);
        let names: Vec<String> = ids.iter().map(|id| format!("t.py::{id}")).collect();
        let durations = store.call_durations(&names, "", 1000).unwrap();
        assert_eq!(durations.len(), with_blocks);
        assert_eq!(before[40].1.len(), 4, "job 100: 3 + the large event");

        // Only what ended before the cutoff moves.
        assert_eq!(store.archive_finished(5_100, 1000).unwrap(), 12);
        // Some archived, some not: the history walk merges them in order.
        assert_eq!(store.test_history("t.py::all", "", 1000).unwrap(), shared);
        assert_eq!(store.test_history("t.py::all", "", 7).unwrap(), shared[..7]);
        assert_eq!(
            store.archive_finished(i64::MAX, 1000).unwrap(),
            ids.len() - 12
        );
        assert_eq!(store.archive_finished(i64::MAX, 1000).unwrap(), 0);
        assert_eq!(seen(&store, &all), before);
        assert_eq!(store.job_ids_before(u64::MAX, 1000).unwrap(), listed);
        assert_eq!(store.job_ids_before(100, 10).unwrap(), page);
        let mut due_after = store.finished_before(5_300, 1000).unwrap();
        let mut due_sorted = due.clone();
        due_sorted.sort_unstable();
        due_after.sort_unstable();
        assert_eq!(due_after, due_sorted, "the same jobs are due");
        assert_eq!(store.test_history("t.py::77", "", 10).unwrap(), history);
        assert_eq!(store.test_history("t.py::all", "", 1000).unwrap(), shared);
        assert_eq!(store.call_durations(&names, "", 1000).unwrap(), durations);
        assert_eq!(
            keys_with(&store, b'H'),
            1,
            "the large job's history record stays"
        );
        assert_eq!(
            keys_with(&store, b'j'),
            1,
            "only the live job keeps its record key"
        );
        assert_eq!(keys_with(&store, b'f'), 0);
        assert_eq!(keys_with(&store, b'e'), 0);
        assert_eq!(
            keys_with(&store, b'E'),
            2,
            "the large job's two event blocks stay"
        );
        assert_eq!(keys_with(&store, b'J'), 3, "60..63, 64..127, 128..140");
        assert_eq!(keys_with(&store, b'F'), 3);
        store.db.remove(key(b'j', 141)).unwrap();
        assert_eq!(store.load().unwrap().last_job, 140, "ids are never reused");

        // Written again after archiving: the newer record and events win.
        let mut w = WriteSet::default();
        let mut again = finished_job(70, 5_000);
        again.reason = "accepted".into();
        w.put_job(70, &again);
        w.put_finished(70, 5_000);
        w.put_event(70, test_event(4, "t.py::all", "failed"));
        w.put_test_run("t.py::all", 70, 4, "p", "a1");
        store.apply(w).unwrap();
        let merged = store.events(70, 0, u64::MAX).unwrap();
        assert_eq!(
            merged.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let runs_of_70 = |store: &Store| {
            store
                .test_history("t.py::all", "", 1000)
                .unwrap()
                .into_iter()
                .filter(|r| r.job_id == "70")
                .count()
        };
        assert_eq!(
            runs_of_70(&store),
            3,
            "loose and archived history of one job"
        );
        assert_eq!(store.job(70).unwrap().unwrap().reason, "accepted");
        assert_eq!(store.job_ids_before(71, 1).unwrap(), [70], "listed once");
        assert_eq!(store.archive_finished(i64::MAX, 1000).unwrap(), 1);
        assert_eq!(store.events(70, 0, u64::MAX).unwrap(), merged);
        assert_eq!(store.job(70).unwrap().unwrap().reason, "accepted");
        assert_eq!(runs_of_70(&store), 3);
        assert_eq!(keys_with(&store, b'j'), 0);
        assert_eq!(keys_with(&store, b'H'), 1);

        // Retired: gone from its chunk, its history with it.
        store.delete_job(77, 100).unwrap();
        store.delete_job(100, 100).unwrap();
        assert_eq!(store.job(77).unwrap(), None);
        assert!(store.events(77, 0, u64::MAX).unwrap().is_empty());
        assert!(store.events(100, 0, u64::MAX).unwrap().is_empty());
        assert!(store.test_history("t.py::77", "", 10).unwrap().is_empty());
        assert_eq!(keys_with(&store, b'E'), 0);
        let left = store.job_ids_before(u64::MAX, 1000).unwrap();
        assert_eq!(left.len(), ids.len() - 2);
        assert!(!left.contains(&77) && !left.contains(&100));
        assert!(!store.finished_before(i64::MAX, 1000).unwrap().contains(&77));
        // A whole chunk retired leaves no key behind.
        for id in 60..=63 {
            store.delete_job(id, 100).unwrap();
        }
        assert_eq!(keys_with(&store, b'J'), 2);
        assert_eq!(keys_with(&store, b'F'), 2);
    }

    /// The core writing a job while the retention thread makes its chunk:
    /// the chunk is not written (it would drop the new write), the job stays
    /// in its own keys, whole, and a later pass archives it with the write.
    #[test]
    fn a_write_while_its_chunk_is_made_keeps_the_job_in_its_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut w = WriteSet::default();
        for id in [1, 2] {
            w.put_job(id, &finished_job(id, 1_000));
            w.put_finished(id, 1_000);
            w.put_event(id, test_event(1, "t.py::a", "passed"));
        }
        store.apply(w).unwrap();
        let writer = store.clone();
        let mut write = || {
            let mut w = WriteSet::default();
            w.put_event(2, test_event(2, "t.py::a", "failed"));
            writer.apply(w).unwrap();
        };
        assert_eq!(store.archive_pass(i64::MAX, 100, &mut write).unwrap(), 0);
        assert_eq!(keys_with(&store, b'J'), 0);
        assert_eq!(keys_with(&store, b'j'), 2);
        let seqs = |id| -> Vec<u64> {
            store
                .events(id, 0, u64::MAX)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(2), [1, 2]);
        // A write to another chunk's job does not get in the way.
        let mut other = || {
            let mut w = WriteSet::default();
            w.put_event(64, test_event(1, "t.py::a", "passed"));
            store.apply(w).unwrap();
        };
        assert_eq!(store.archive_pass(i64::MAX, 100, &mut other).unwrap(), 2);
        assert_eq!(keys_with(&store, b'j'), 0);
        assert_eq!(seqs(1), [1]);
        assert_eq!(seqs(2), [1, 2]);
    }

    #[test]
    fn a_corrupt_archive_chunk_is_an_error_not_a_panic() {
        let k = chunk_key(1);
        let good = encode_chunk(&[ChunkEntry {
            id: 64,
            end_ms: -5,
            record: vec![1, 2, 3],
            events: vec![4],
            history: vec![(7, vec![5, 6])],
        }]);
        let head = ChunkHead::decode(&k, &good).unwrap();
        assert_eq!(head.entries[0].end_ms, -5);
        assert_eq!(head.entries(&k).unwrap()[0].record, [1, 2, 3]);
        assert_eq!(head.entries(&k).unwrap()[0].history, [(7, vec![5, 6])]);
        for bad in [
            &[][..],
            &[9][..],
            &[CHUNK_V1, 65][..],
            &[CHUNK_V1, 1, 64, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0][..],
            &good[..good.len() - 1],
        ] {
            let decoded = ChunkHead::decode(&k, bad).and_then(|h| h.entries(&k));
            assert!(decoded.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_corrupt_event_block_is_an_error_not_a_panic() {
        let k = seq_key(b'E', 1, 1);
        assert!(decode_block(&k, &[]).is_err());
        assert!(decode_block(&k, &[9, 1, 2]).is_err());
        assert!(decode_block(&k, &[LZ4, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(decode_block(&k, &[RAW, 0x05, 1]).is_err());
        assert!(decode_history(&k, &[1, 0x80]).is_err());
        assert!(decode_history(&k, &[2]).is_err());
    }
}
