//! The shared store on Redis, for many instances behind a load balancer (design.md §5). Every
//! key starts with [`PREFIX`].
//!
//! - Dedupe marks: `SET mark:{id} processing NX PX hold`, then `done` for the long keep; a
//!   release deletes only a `processing` mark (one script).
//! - Intake queue: a Stream with one consumer group. Enqueue checks the capacity and adds in one
//!   script (`XLEN` counts waiting and handed-out entries, as acknowledged ones are deleted).
//!   A consumer takes new entries with `XREADGROUP … BLOCK` on a connection of its own, and first
//!   claims entries another consumer took and left idle past `reclaim_after` (`XAUTOCLAIM`), so
//!   the events of a dead instance are processed by another.
//! - Leases: `SET lease:{name} {token} NX PX ttl`, the token from `INCR fence:{name}`; extending,
//!   releasing and every ledger write check the token in the same script, so a holder that lost
//!   its lease (paused past its TTL) cannot write.
//! - Ledger: per window a hash of reports (`ledger:{start}:{end}`, field
//!   `{n}\x1f{subscription}\x1f{add-on}`, value the report as JSON) and a hash of their states
//!   (`ledger-state:…`, `p`/`a`/`s`); done windows in a sorted set scored by their end; pruned
//!   windows in a set; the watermark moved only forward by a script.
//! - Pushed transactions (docs/ingest.md): the fingerprints of taken ids per generation of
//!   arrival (see `ingest.rs`) in 65,536 sets (`ingest:gen:{g}:ids:{shard}`, members the 64-bit
//!   value as an integer, so Redis keeps each small set as a compact intset: about 8 bytes an
//!   id); the counts per window and group in a hash (`ingest:{start}:units`, field
//!   `{subscription}\x1f{quota}\x1f{resource}\x1f{s|f}`). One script per window and chunk adds
//!   the ids new to this generation and the previous one, and their counts, together. Windows
//!   and generations with data are kept in sorted sets, for pruning.
//! - Links: the directory of billed subscriptions as one snapshot (`links`), shared by every
//!   instance, so none of them reads all of Amplify's subscriptions again on start.
//!
//! Redis being unreachable is [`StoreError::Unavailable`]: intake answers 503 and the sender
//! keeps its event; the connection manager reconnects by itself.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use billing_bridge_domain::events::ResourceEvent;
use billing_bridge_domain::transactions::{Group, GroupKey};
use billing_bridge_domain::usage::Window;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crate::ledger::{Intent, Report, ReportState, Settled, WindowLedger};
use crate::{Claim, Delivery, IngestOutcome, IngestWindow, Lease, StoreError};

pub const PREFIX: &str = "billing-bridge:";
const GROUP: &str = "bridge";
const PROCESSING: &str = "processing";
const DONE: &str = "done";
/// Ledger writes are sent in scripts of at most this many items.
const CHUNK: usize = 500;
const SEP: char = '\u{1f}';

fn key(parts: &[&str]) -> String {
    let mut k = String::from(PREFIX);
    k.push_str(&parts.join(":"));
    k
}

fn window_id(w: Window) -> String {
    format!("{}:{}", w.start_ms, w.end_ms)
}

fn unavailable(e: redis::RedisError) -> StoreError {
    // Redis errors name the command and the server's message, never the URL or password.
    StoreError::Unavailable(format!("redis: {e}"))
}

fn state_code(state: ReportState) -> &'static str {
    match state {
        ReportState::Pending => "p",
        ReportState::Acked => "a",
        ReportState::Skipped => "s",
    }
}

const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

const ENQUEUE: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
return 1";

const ACQUIRE: &str = r"
local token = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1]) then return token end
return 0";

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// KEYS: lease, reports, states. ARGV: token, then (field, report, state) triples. A report is
/// written once: a replayed intent keeps the first.
const INTENTS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n";

/// KEYS: lease, reports, states. ARGV: token, then (field, state) pairs of existing reports.
const SETTLE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
return 1";

/// KEYS: lease, done set, watermark. ARGV: token, window id, window end, new watermark or ''.
const MARK_DONE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
  local current = redis.call('GET', KEYS[3])
  if (not current) or tonumber(current) < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], ARGV[4])
  end
end
return 1";

/// KEYS: reports, states, pruned set. ARGV: window id. Drops a done window's reports unless one
/// is still pending.
const PRUNE: &str = r"
local states = redis.call('HVALS', KEYS[2])
for _, s in ipairs(states) do
  if s == 'p' then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SADD', KEYS[3], ARGV[1])
return 1";

/// KEYS: windows zset, generations zset, units hash, then for each transaction its id set in
/// the current generation and in the previous one. ARGV: window start, generation, group count
/// G, G group fields, then (value, group index) pairs. Returns the ids added. (Full key names
/// come from the caller: building them in Lua costs more than sending them.)
const INGEST: &str = r"
local g = tonumber(ARGV[3])
local counts = {}
local added = 0
local k = 4
for i = 4 + g, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[k + 1], ARGV[i]) == 0
     and redis.call('SADD', KEYS[k], ARGV[i]) == 1 then
    local group = ARGV[i + 1]
    counts[group] = (counts[group] or 0) + 1
    added = added + 1
  end
  k = k + 2
end
for group, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], ARGV[4 + tonumber(group)], n)
end
if added > 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
end
return added";

/// Transactions per ingest script: bounds how long one script holds Redis.
const INGEST_CHUNK: usize = 5_000;
/// Keys per UNLINK when a window's ids are dropped.
const UNLINK_CHUNK: usize = 2_048;

// Scripts are hashed once and sent by hash (EVALSHA, falling back to EVAL).
static ABANDON_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ABANDON));
static ENQUEUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ENQUEUE));
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));
static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static INTENTS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INTENTS));
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE));
static MARK_DONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_DONE));
static PRUNE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PRUNE));
static INGEST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INGEST));

fn group_field(g: &Group<'_>) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}",
        g.subscription,
        g.quota,
        g.resource,
        if g.success { 's' } else { 'f' }
    )
}

fn parse_group_field(field: &str) -> Option<GroupKey> {
    let mut parts = field.split(SEP);
    let (subscription, quota, resource, status) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(Group {
        subscription: subscription.to_owned().into(),
        quota: quota.to_owned().into(),
        resource: resource.to_owned().into(),
        success: status == "s",
    })
}

pub struct RedisStore {
    conn: ConnectionManager,
    /// Only for the blocking read, which would hold up every other command on a shared one.
    reader: ConnectionManager,
    capacity: usize,
    consumer: String,
    reclaim_after: Duration,
    group_ready: AtomicBool,
    queue: String,
}

impl RedisStore {
    /// Connects lazily: a store whose Redis is down starts, answers `Unavailable`, and works as
    /// soon as Redis is back. `consumer` names this instance in the consumer group.
    pub fn new(
        url: &str,
        capacity: usize,
        consumer: String,
        reclaim_after: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::Unavailable(format!("redis URL not usable: {:?}", e.kind()))
        })?;
        let config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
        };
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            config().set_response_timeout(Some(Duration::from_secs(5))),
        )
        .map_err(unavailable)?;
        let reader = ConnectionManager::new_lazy_with_config(
            client,
            config().set_response_timeout(Some(Duration::from_secs(35))),
        )
        .map_err(unavailable)?;
        Ok(Self {
            conn,
            reader,
            capacity: capacity.max(1),
            consumer,
            reclaim_after,
            group_ready: AtomicBool::new(false),
            queue: key(&["queue"]),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn claim_event(
        &self,
        event_id: &str,
        hold: Duration,
    ) -> Result<Claim, StoreError> {
        let mark = key(&["mark", event_id]);
        let mut conn = self.conn();
        for _ in 0..2 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&mark)
                .arg(PROCESSING)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis().max(1) as u64)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if set.is_some() {
                return Ok(Claim::Claimed);
            }
            let current: Option<String> = conn.get(&mark).await.map_err(unavailable)?;
            match current.as_deref() {
                Some(DONE) => return Ok(Claim::Done),
                Some(_) => return Ok(Claim::InFlight),
                // Expired between the two commands: try once more.
                None => continue,
            }
        }
        Ok(Claim::InFlight)
    }

    pub(crate) async fn finish_event(
        &self,
        event_id: &str,
        keep: Duration,
    ) -> Result<(), StoreError> {
        let _: () = redis::cmd("SET")
            .arg(key(&["mark", event_id]))
            .arg(DONE)
            .arg("PX")
            .arg(keep.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn abandon_event(&self, event_id: &str) -> Result<(), StoreError> {
        let _: i64 = ABANDON_SCRIPT
            .key(key(&["mark", event_id]))
            .arg(PROCESSING)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ensure_group(&self) -> Result<(), StoreError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.queue)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) async fn enqueue(&self, event: ResourceEvent) -> Result<(), StoreError> {
        self.ensure_group().await?;
        let body = serde_json::to_string(&event).expect("events serialize");
        let added: i64 = ENQUEUE_SCRIPT
            .key(&self.queue)
            .arg(self.capacity)
            .arg(body)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if added == 1 {
            Ok(())
        } else {
            Err(StoreError::QueueFull {
                capacity: self.capacity,
            })
        }
    }

    fn delivery(id: String, map: &HashMap<String, redis::Value>) -> Option<Delivery> {
        let body: String = map
            .get("e")
            .and_then(|v| redis::from_redis_value_ref(v).ok())?;
        let event = serde_json::from_str(&body).ok()?;
        Some(Delivery { tag: id, event })
    }

    pub(crate) async fn next_event(&self, wait: Duration) -> Result<Option<Delivery>, StoreError> {
        self.ensure_group().await?;
        // Entries a dead consumer took and never acknowledged.
        let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.queue)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.reclaim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if let Some(entry) = claimed.claimed.into_iter().next() {
            match Self::delivery(entry.id.clone(), &entry.map) {
                Some(d) => return Ok(Some(d)),
                None => {
                    // Unreadable: drop it rather than hand it out forever.
                    self.ack(&entry.id).await?;
                    return Ok(None);
                }
            }
        }
        let read: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.queue)
            .arg(">")
            .query_async(&mut self.reader.clone())
            .await
            .map_err(unavailable)?;
        let Some(entry) = read
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
        else {
            return Ok(None);
        };
        match Self::delivery(entry.id.clone(), &entry.map) {
            Some(d) => Ok(Some(d)),
            None => {
                self.ack(&entry.id).await?;
                Ok(None)
            }
        }
    }

    pub(crate) async fn ack(&self, tag: &str) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.queue)
            .arg(GROUP)
            .arg(tag)
            .ignore()
            .cmd("XDEL")
            .arg(&self.queue)
            .arg(tag)
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn queue_depth(&self) -> Result<usize, StoreError> {
        self.ensure_group().await?;
        let (len, pending): (usize, redis::Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.queue)
            .cmd("XPENDING")
            .arg(&self.queue)
            .arg(GROUP)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let pending = match pending {
            redis::Value::Array(items) => items
                .first()
                .and_then(|v| redis::from_redis_value_ref::<usize>(v).ok())
                .unwrap_or(0),
            _ => 0,
        };
        Ok(len.saturating_sub(pending))
    }

    pub(crate) async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let token: u64 = ACQUIRE_SCRIPT
            .key(key(&["lease", name]))
            .key(key(&["fence", name]))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok((token > 0).then(|| Lease {
            name: name.to_owned(),
            token,
        }))
    }

    pub(crate) async fn extend_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let extended: i64 = EXTEND_SCRIPT
            .key(key(&["lease", &lease.name]))
            .arg(lease.token)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if extended == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(lease.name.clone()))
        }
    }

    pub(crate) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let _: i64 = RELEASE_SCRIPT
            .key(key(&["lease", &lease.name]))
            .arg(lease.token)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn report_field(n: u32, pair: &(String, String)) -> String {
        format!("{n}{SEP}{}{SEP}{}", pair.0, pair.1)
    }

    pub(crate) async fn window_ledger(&self, window: Window) -> Result<WindowLedger, StoreError> {
        let id = window_id(window);
        let (reports, states, done, pruned): (
            HashMap<String, String>,
            HashMap<String, String>,
            Option<f64>,
            bool,
        ) = redis::pipe()
            .hgetall(key(&["ledger", &id]))
            .hgetall(key(&["ledger-state", &id]))
            .zscore(key(&["done"]), &id)
            .sismember(key(&["pruned"]), &id)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut ledger = WindowLedger {
            done: done.is_some(),
            pruned,
            ..WindowLedger::default()
        };
        for (field, json) in reports {
            let mut parts = field.splitn(3, SEP);
            let (Some(_), Some(sub), Some(add_on)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(mut report) = serde_json::from_str::<Report>(&json) else {
                continue;
            };
            report.state = match states.get(&field).map(String::as_str) {
                Some("a") => ReportState::Acked,
                Some("s") => ReportState::Skipped,
                _ => ReportState::Pending,
            };
            ledger
                .pairs
                .entry((sub.to_owned(), add_on.to_owned()))
                .or_default()
                .push(report);
        }
        for reports in ledger.pairs.values_mut() {
            reports.sort_by_key(|r| r.report);
        }
        Ok(ledger)
    }

    pub(crate) async fn windows_done(&self, windows: &[Window]) -> Result<Vec<bool>, StoreError> {
        let mut pipe = redis::pipe();
        for w in windows {
            pipe.zscore(key(&["done"]), window_id(*w));
        }
        let scores: Vec<Option<f64>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(scores.into_iter().map(|s| s.is_some()).collect())
    }

    fn guarded(result: i64, lease: &Lease) -> Result<(), StoreError> {
        if result < 0 {
            Err(StoreError::LeaseLost(lease.name.clone()))
        } else {
            Ok(())
        }
    }

    pub(crate) async fn record_intents(
        &self,
        lease: &Lease,
        window: Window,
        intents: Vec<Intent>,
    ) -> Result<(), StoreError> {
        let id = window_id(window);
        for chunk in intents.chunks(CHUNK) {
            let mut script = INTENTS_SCRIPT.prepare_invoke();
            script
                .key(key(&["lease", &lease.name]))
                .key(key(&["ledger", &id]))
                .key(key(&["ledger-state", &id]))
                .arg(lease.token);
            for intent in chunk {
                script
                    .arg(Self::report_field(intent.report.report, &intent.pair))
                    .arg(serde_json::to_string(&intent.report).expect("reports serialize"))
                    .arg(state_code(intent.report.state));
            }
            let result: i64 = script
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Self::guarded(result, lease)?;
        }
        Ok(())
    }

    pub(crate) async fn settle(
        &self,
        lease: &Lease,
        window: Window,
        settled: Vec<Settled>,
    ) -> Result<(), StoreError> {
        let id = window_id(window);
        for chunk in settled.chunks(CHUNK) {
            let mut script = SETTLE_SCRIPT.prepare_invoke();
            script
                .key(key(&["lease", &lease.name]))
                .key(key(&["ledger", &id]))
                .key(key(&["ledger-state", &id]))
                .arg(lease.token);
            for s in chunk {
                script
                    .arg(Self::report_field(s.report, &s.pair))
                    .arg(state_code(s.state));
            }
            let result: i64 = script
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Self::guarded(result, lease)?;
        }
        Ok(())
    }

    pub(crate) async fn mark_done(
        &self,
        lease: &Lease,
        window: Window,
        watermark: Option<i64>,
    ) -> Result<(), StoreError> {
        let result: i64 = MARK_DONE_SCRIPT
            .key(key(&["lease", &lease.name]))
            .key(key(&["done"]))
            .key(key(&["watermark"]))
            .arg(lease.token)
            .arg(window_id(window))
            .arg(window.end_ms)
            .arg(watermark.map(|w| w.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Self::guarded(result, lease)
    }

    pub(crate) async fn watermark(&self) -> Result<Option<i64>, StoreError> {
        let value: Option<i64> = self
            .conn()
            .get(key(&["watermark"]))
            .await
            .map_err(unavailable)?;
        Ok(value)
    }

    pub(crate) async fn prune(&self, before_ms: i64) -> Result<(), StoreError> {
        let done: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key(&["done"]))
            .arg("-inf")
            .arg(before_ms)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let pruned: Vec<String> = self
            .conn()
            .smembers(key(&["pruned"]))
            .await
            .map_err(unavailable)?;
        for id in done.into_iter().filter(|id| !pruned.contains(id)) {
            let _: i64 = PRUNE_SCRIPT
                .key(key(&["ledger", &id]))
                .key(key(&["ledger-state", &id]))
                .key(key(&["pruned"]))
                .arg(&id)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    pub(crate) async fn save_links(&self, snapshot: String) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .set(key(&["links"]), snapshot)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn links(&self) -> Result<Option<String>, StoreError> {
        self.conn().get(key(&["links"])).await.map_err(unavailable)
    }

    pub(crate) async fn first_time(&self, once: &str) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key(&["once", once]))
            .arg(1)
            .arg("NX")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    fn ingest_ids_prefix(generation: i64) -> String {
        key(&["ingest", "gen", &generation.to_string(), "ids", ""])
    }

    pub(crate) async fn ingest(
        &self,
        generation: i64,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        let mut outcome = IngestOutcome::default();
        let (windows, generations) = (key(&["ingest", "windows"]), key(&["ingest", "gens"]));
        let (current, previous) = (
            Self::ingest_ids_prefix(generation),
            Self::ingest_ids_prefix(generation - 1),
        );
        for window in batch {
            let units = key(&["ingest", &window.start_ms.to_string(), "units"]);
            let fields: Vec<String> = window.groups.iter().map(group_field).collect();
            for chunk in window.transactions.chunks(INGEST_CHUNK) {
                let mut script = INGEST_SCRIPT.prepare_invoke();
                script
                    .key(&windows)
                    .key(&generations)
                    .key(&units)
                    .arg(window.start_ms)
                    .arg(generation)
                    .arg(fields.len())
                    .arg(&fields);
                let mut set = String::with_capacity(current.len() + 5);
                for (tx, group) in chunk {
                    let shard = tx.shard.to_string();
                    for prefix in [&current, &previous] {
                        set.clear();
                        set.push_str(prefix);
                        set.push_str(&shard);
                        script.key(set.as_str());
                    }
                    script.arg(tx.value as i64).arg(group);
                }
                let added: u64 = script
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                outcome.accepted += added;
                outcome.duplicates += chunk.len() as u64 - added;
            }
        }
        Ok(outcome)
    }

    pub(crate) async fn ingested(
        &self,
        window: Window,
    ) -> Result<Vec<(GroupKey, u64)>, StoreError> {
        let units: HashMap<String, u64> = self
            .conn()
            .hgetall(key(&["ingest", &window.start_ms.to_string(), "units"]))
            .await
            .map_err(unavailable)?;
        Ok(units
            .into_iter()
            .filter_map(|(field, n)| Some((parse_group_field(&field)?, n)))
            .collect())
    }

    async fn drop_generation(&self, generation: i64) -> Result<(), StoreError> {
        let prefix = Self::ingest_ids_prefix(generation);
        let shards: Vec<String> = (0..=u16::MAX).map(|s| format!("{prefix}{s}")).collect();
        for chunk in shards.chunks(UNLINK_CHUNK) {
            let _: i64 = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        let _: i64 = self
            .conn()
            .zrem(key(&["ingest", "gens"]), generation)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn scored_before(&self, zset: &str, before: i64) -> Result<Vec<i64>, StoreError> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(key(&["ingest", zset]))
            .arg("-inf")
            .arg(format!("({before}"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub(crate) async fn ingested_windows(&self) -> Result<Vec<i64>, StoreError> {
        self.scored_before("windows", i64::MAX).await
    }

    pub(crate) async fn forget_generations(&self, generation: i64) -> Result<(), StoreError> {
        for old in self.scored_before("gens", generation).await? {
            self.drop_generation(old).await?;
        }
        Ok(())
    }

    pub(crate) async fn prune_ingested(
        &self,
        before_ms: i64,
        len_ms: i64,
    ) -> Result<(), StoreError> {
        for start in self
            .scored_before("windows", before_ms - len_ms + 1)
            .await?
        {
            let _: i64 = self
                .conn()
                .del(key(&["ingest", &start.to_string(), "units"]))
                .await
                .map_err(unavailable)?;
            let _: i64 = self
                .conn()
                .zrem(key(&["ingest", "windows"]), start)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
