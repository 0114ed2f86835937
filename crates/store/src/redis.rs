//! The shared store on Redis, for many instances behind a load balancer (design.md §5). Every
//! key starts with [`PREFIX`].
//!
//! - Dedupe marks: `SET mark:{id} processing NX PX hold`, then `done` for the long keep; a
//!   release deletes only a `processing` mark (one script).
//! - Intake queues, one per kind of event (`q:events:plans`, `q:events:subscriptions`), each a
//!   named queue (below). Enqueue checks the capacity and adds in one script (`XLEN` plus
//!   `ZCARD` counts waiting, handed-out and scheduled entries, as acknowledged ones are
//!   deleted). A consumer takes new entries with `XREADGROUP … BLOCK` on a connection of its
//!   own, and first claims entries another consumer took and left idle past `reclaim_after`
//!   (`XAUTOCLAIM`), so the events of a dead instance are processed by another.
//! - Named queues (delayed redelivery, e.g. the notification outbox): the same Stream, consumer
//!   group and `XAUTOCLAIM` takeover per queue (`q:{name}`), entries `{attempt}\x1f{id}\x1f{body}`,
//!   plus a sorted set of entries scheduled for later (`q:{name}:later`, scored by due time in
//!   epoch ms on Redis's clock). Handing a taken entry back is one script: `XACK` (nothing more if
//!   it was acknowledged already), `XDEL`, `ZADD` at its due time. Before each take one script
//!   moves the due entries from the sorted set into the Stream, and the blocking read waits no
//!   longer than until the next one comes due.
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
//!   `{subscription}\x1f{quota}\x1f{resource id}\x1f{resource name}\x1f{s|f}`). One script per window and chunk adds
//!   the ids new to this generation and the previous one, and their counts, together. Windows
//!   and generations with data are kept in sorted sets, for pruning.
//! - Links: the directory of billed subscriptions as one snapshot (`links`), shared by every
//!   instance, so none of them reads all of Amplify's subscriptions again on start.
//!
//! Redis being unreachable is [`StoreError::Unavailable`]: intake answers 503 and the sender
//! keeps its event; the connection manager reconnects by itself.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use billing_bridge_domain::transactions::{Group, GroupKey};
use billing_bridge_domain::trust::SubscriptionLink;
use billing_bridge_domain::usage::Window;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crate::ledger::{Intent, Report, ReportState, Settled, WindowLedger};
use crate::{Claim, IngestOutcome, IngestWindow, Lease, StoreError, Taken};

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

/// KEYS: stream, later set. ARGV: capacity, entry. Waiting, handed-out and scheduled entries
/// all count (acknowledged ones are deleted).
const ENQUEUE: &str = r"
if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[2])
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
/// G, the most groups a window may hold, G group fields, then (value, group index) pairs.
/// Returns the ids added, then the (0-based) positions of the transactions refused because
/// their group is new to a window already holding the most groups it may. Deciding that here,
/// in the script that adds the counts, keeps two instances from both letting a window grow past
/// the limit. (Full key names come from the caller: building them in Lua costs more than
/// sending them.)
const INGEST: &str = r"
local g = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local counts = {}
local allowed = {}
local known = nil
local added = 0
local refused = {}
local k = 4
local t = 0
for i = 5 + g, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[k + 1], ARGV[i]) == 0
     and redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 0 then
    local group = ARGV[i + 1]
    local ok = allowed[group]
    if ok == nil then
      if redis.call('HEXISTS', KEYS[3], ARGV[5 + tonumber(group)]) == 1 then
        ok = true
      else
        if known == nil then known = redis.call('HLEN', KEYS[3]) end
        ok = known < max
        if ok then known = known + 1 end
      end
      allowed[group] = ok
    end
    if ok then
      redis.call('SADD', KEYS[k], ARGV[i])
      counts[group] = (counts[group] or 0) + 1
      added = added + 1
    else
      refused[#refused + 1] = t
    end
  end
  k = k + 2
  t = t + 1
end
for group, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], ARGV[5 + tonumber(group)], n)
end
if added > 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
end
local out = {added}
for _, r in ipairs(refused) do out[#out + 1] = r end
return out";

/// KEYS: stream, later set. ARGV: group, entry id, delay ms, the entry as scheduled. The
/// hand-out is acknowledged and the next one scheduled together; an entry acknowledged already
/// (taken over and finished by another consumer) is left alone.
const RETRY: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return 1";

/// KEYS: stream, later set. ARGV: most entries to move. Moves entries due by Redis's clock into
/// the stream; returns the ms until the next one is due, or -1 when none is scheduled.
const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', 'm', m)
  redis.call('ZREM', KEYS[2], m)
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next[2] then return math.max(0, tonumber(next[2]) - now) end
return -1";

/// KEYS: the intake stream of the releases before per-kind queues, the plans stream, the
/// subscriptions stream. ARGV: the entry separator. Moves up to 500 events (field `e`, the
/// event as JSON) into their kind's queue as new entries, deleting each from the old stream,
/// and the old stream once empty; an event that does not read is dropped. Returns -1 once there
/// is no old stream.
const MIGRATE_LEGACY_QUEUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 500)
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then
      local ok, event = pcall(cjson.decode, fields[i + 1])
      if ok and type(event) == 'table' and type(event.event_id) == 'string' then
        local target = nil
        if event.kind == 'ProductPlan' then target = KEYS[2] end
        if event.kind == 'Subscription' then target = KEYS[3] end
        if target then
          redis.call('XADD', target, '*', 'm', '0' .. ARGV[1] .. event.event_id .. ARGV[1] .. fields[i + 1])
        end
      end
    end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return #entries";

/// Due entries one take moves from the later set into the stream.
const PROMOTE_BATCH: usize = 100;

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
static RETRY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RETRY));
static PROMOTE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PROMOTE));
static MIGRATE_LEGACY_QUEUE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(MIGRATE_LEGACY_QUEUE));

/// A named queue's entry: attempt, id and body in one string, so the Stream entry and the
/// later set's member are the same value.
fn queue_entry(attempt: u32, id: &str, body: &str) -> String {
    format!("{attempt}{SEP}{id}{SEP}{body}")
}

fn parse_queue_entry(tag: String, entry: &str) -> Option<Taken> {
    let mut parts = entry.splitn(3, SEP);
    let attempt = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_owned();
    let body = parts.next()?.to_owned();
    Some(Taken {
        tag,
        id,
        body,
        attempt,
    })
}

/// A group as a hash field: subscription, quota, resource id, resource name, status.
///
/// Escapes the separator (and the escape) inside a name, so two groups never share a field:
/// `\x1e` → `\x1e0`, `\x1f` → `\x1e1`. Names without either (all the release before wrote
/// that could be read back) are unchanged.
const ESC: char = '\u{1e}';

fn push_escaped(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            ESC => out.push_str("\u{1e}0"),
            SEP => out.push_str("\u{1e}1"),
            c => out.push(c),
        }
    }
}

fn unescape(part: &str) -> Option<String> {
    let mut out = String::with_capacity(part.len());
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        if c == ESC {
            out.push(match chars.next()? {
                '0' => ESC,
                '1' => SEP,
                _ => return None,
            });
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn group_field(g: &Group<'_>) -> String {
    let mut field = String::with_capacity(
        g.subscription.len() + g.quota.len() + g.resource_id.len() + g.resource_name.len() + 6,
    );
    for part in [&g.subscription, &g.quota, &g.resource_id, &g.resource_name] {
        push_escaped(&mut field, part);
        field.push(SEP);
    }
    field.push(if g.success { 's' } else { 'f' });
    field
}

/// Reads [`group_field`]; a field of four parts was written before resources had an id and a
/// name, and its one resource is read as the name.
fn parse_group_field(field: &str) -> Option<GroupKey> {
    let parts: Vec<&str> = field.split(SEP).collect();
    let (subscription, quota, resource_id, resource_name, status) = match parts[..] {
        [s, q, id, name, status] => (s, q, id, name, status),
        [s, q, name, status] => (s, q, "", name, status),
        _ => return None,
    };
    Some(Group {
        subscription: unescape(subscription)?.into(),
        quota: unescape(quota)?.into(),
        resource_id: unescape(resource_id)?.into(),
        resource_name: unescape(resource_name)?.into(),
        success: status == "s",
    })
}

pub struct RedisStore {
    conn: ConnectionManager,
    /// Only for the blocking read, which would hold up every other command on a shared one.
    reader: ConnectionManager,
    /// Events a kind's queue may hold.
    pub(crate) capacity: usize,
    consumer: String,
    reclaim_after: Duration,
    /// Streams whose consumer group exists.
    groups_ready: parking_lot::Mutex<HashSet<String>>,
    /// The intake stream of earlier releases was emptied into the per-kind queues.
    legacy_migrated: std::sync::atomic::AtomicBool,
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
            groups_ready: parking_lot::Mutex::new(HashSet::new()),
            legacy_migrated: std::sync::atomic::AtomicBool::new(false),
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

    async fn ensure_group(&self, stream: &str) -> Result<(), StoreError> {
        if self.groups_ready.lock().contains(stream) {
            return Ok(());
        }
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
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
        self.groups_ready.lock().insert(stream.to_owned());
        Ok(())
    }

    fn field(map: &HashMap<String, redis::Value>, name: &str) -> Option<String> {
        map.get(name)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
    }

    /// The next entry of `stream` for this consumer: first one a dead consumer took and never
    /// acknowledged (idle past `reclaim_after`), else a new one, waiting up to `wait`. An entry
    /// `read` cannot make sense of is dropped rather than handed out forever.
    async fn take_entry<T>(
        &self,
        stream: &str,
        wait: Duration,
        read: impl Fn(String, &HashMap<String, redis::Value>) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        self.ensure_group(stream).await?;
        let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.reclaim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let entry = match claimed.claimed.into_iter().next() {
            Some(entry) => entry,
            None => {
                let read: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(wait.as_millis().max(1) as u64)
                    .arg("STREAMS")
                    .arg(stream)
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
                entry
            }
        };
        match read(entry.id.clone(), &entry.map) {
            Some(found) => Ok(Some(found)),
            None => {
                self.drop_entry(stream, &entry.id).await?;
                Ok(None)
            }
        }
    }

    /// Acknowledges and deletes a stream entry (acknowledged entries are deleted, so `XLEN`
    /// counts what is waiting or handed out).
    async fn drop_entry(&self, stream: &str, tag: &str) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(tag)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(tag)
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Moves the events an earlier release left in its one intake stream (`queue`) into the
    /// per-kind queues, once per process, before the first event is taken.
    pub(crate) async fn migrate_legacy_queue(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.legacy_migrated.load(Ordering::Relaxed) {
            return Ok(());
        }
        let plans = Self::named_queue(crate::event_queue(
            billing_bridge_domain::events::ResourceKind::ProductPlan,
        ))
        .0;
        let subscriptions = Self::named_queue(crate::event_queue(
            billing_bridge_domain::events::ResourceKind::Subscription,
        ))
        .0;
        loop {
            let moved: i64 = MIGRATE_LEGACY_QUEUE_SCRIPT
                .key(key(&["queue"]))
                .key(&plans)
                .key(&subscriptions)
                .arg(SEP.to_string())
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if moved < 0 {
                break;
            }
            if moved > 0 {
                tracing::info!(
                    moved,
                    "events of the earlier intake queue moved to the per-kind queues"
                );
            }
        }
        self.legacy_migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn named_queue(queue: &str) -> (String, String) {
        (key(&["q", queue]), key(&["q", queue, "later"]))
    }

    /// Adds an entry, refused when `capacity` entries are already queued.
    pub(crate) async fn queue_put(
        &self,
        queue: &str,
        id: &str,
        body: &str,
        capacity: Option<usize>,
    ) -> Result<(), StoreError> {
        let (stream, later) = Self::named_queue(queue);
        self.ensure_group(&stream).await?;
        let entry = queue_entry(0, id, body);
        let Some(capacity) = capacity else {
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("m")
                .arg(entry)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            return Ok(());
        };
        let added: i64 = ENQUEUE_SCRIPT
            .key(&stream)
            .key(&later)
            .arg(capacity)
            .arg(entry)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if added == 1 {
            Ok(())
        } else {
            Err(StoreError::QueueFull { capacity })
        }
    }

    pub(crate) async fn queue_take(
        &self,
        queue: &str,
        wait: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        let (stream, later) = Self::named_queue(queue);
        self.ensure_group(&stream).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next_due: i64 = PROMOTE_SCRIPT
                .key(&stream)
                .key(&later)
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            // The blocking read only wakes for new entries: it waits no longer than until a
            // scheduled entry comes due or an unfinished one may be taken over.
            let mut block = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(self.reclaim_after);
            if let Ok(ms) = u64::try_from(next_due) {
                block = block.min(Duration::from_millis(ms));
            }
            let taken = self
                .take_entry(&stream, block, |tag, map| {
                    parse_queue_entry(tag, &Self::field(map, "m")?)
                })
                .await?;
            if taken.is_some() || tokio::time::Instant::now() >= deadline {
                return Ok(taken);
            }
        }
    }

    pub(crate) async fn queue_ack(&self, queue: &str, taken: &Taken) -> Result<(), StoreError> {
        self.drop_entry(&Self::named_queue(queue).0, &taken.tag)
            .await
    }

    pub(crate) async fn queue_retry(
        &self,
        queue: &str,
        taken: &Taken,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let (stream, later) = Self::named_queue(queue);
        let _: i64 = RETRY_SCRIPT
            .key(&stream)
            .key(&later)
            .arg(GROUP)
            .arg(&taken.tag)
            .arg(delay.as_millis() as u64)
            .arg(queue_entry(taken.attempt + 1, &taken.id, &taken.body))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn queue_len(&self, queue: &str) -> Result<usize, StoreError> {
        let (stream, later) = Self::named_queue(queue);
        let (len, scheduled): (usize, usize) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("ZCARD")
            .arg(&later)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(len + scheduled)
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

    pub(crate) async fn watch_sequence(&self, topic: &str) -> Result<Option<i64>, StoreError> {
        self.conn()
            .hget(key(&["watch-sequences"]), topic)
            .await
            .map_err(unavailable)
    }

    pub(crate) async fn set_watch_sequence(
        &self,
        topic: &str,
        sequence: i64,
    ) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .hset(key(&["watch-sequences"]), topic, sequence)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn link_subscription(
        &self,
        link: &SubscriptionLink,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_string(link).expect("links serialize");
        let _: () = self
            .conn()
            .hset(key(&["subscription-links"]), &link.amplify_id, value)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn unlink_subscription(&self, amplify_id: &str) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .hdel(key(&["subscription-links"]), amplify_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn subscription_link(
        &self,
        amplify_id: &str,
    ) -> Result<Option<SubscriptionLink>, StoreError> {
        let value: Option<String> = self
            .conn()
            .hget(key(&["subscription-links"]), amplify_id)
            .await
            .map_err(unavailable)?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub(crate) async fn subscription_links(&self) -> Result<Vec<SubscriptionLink>, StoreError> {
        let values: Vec<String> = self
            .conn()
            .hvals(key(&["subscription-links"]))
            .await
            .map_err(unavailable)?;
        Ok(values
            .iter()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect())
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
        max_groups: usize,
        batch: &[IngestWindow],
    ) -> Result<IngestOutcome, StoreError> {
        let mut outcome = IngestOutcome::default();
        let (windows, generations) = (key(&["ingest", "windows"]), key(&["ingest", "gens"]));
        let (current, previous) = (
            Self::ingest_ids_prefix(generation),
            Self::ingest_ids_prefix(generation - 1),
        );
        for (position, window) in batch.iter().enumerate() {
            let units = key(&["ingest", &window.start_ms.to_string(), "units"]);
            let fields: Vec<String> = window.groups.iter().map(group_field).collect();
            for (c, chunk) in window.transactions.chunks(INGEST_CHUNK).enumerate() {
                let mut script = INGEST_SCRIPT.prepare_invoke();
                script
                    .key(&windows)
                    .key(&generations)
                    .key(&units)
                    .arg(window.start_ms)
                    .arg(generation)
                    .arg(fields.len())
                    .arg(max_groups.min(i64::MAX as usize))
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
                let answer: Vec<u64> = script
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                let (added, refused) = answer.split_first().ok_or_else(|| {
                    StoreError::Unavailable("redis: the ingest script answered nothing".into())
                })?;
                outcome.accepted += added;
                outcome.duplicates += chunk.len() as u64 - added - refused.len() as u64;
                outcome.too_many_groups.extend(
                    refused
                        .iter()
                        .map(|t| (position, c * INGEST_CHUNK + *t as usize)),
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_fields_round_trip_and_older_fields_still_read() {
        let group = Group {
            subscription: "s1".into(),
            quota: "q1".into(),
            resource_id: "ar-1".into(),
            resource_name: "list".into(),
            success: false,
        };
        assert_eq!(parse_group_field(&group_field(&group)), Some(group));
        let old = parse_group_field("s1\u{1f}q1\u{1f}pets/list\u{1f}s").unwrap();
        assert_eq!(
            (&*old.resource_id, &*old.resource_name, old.success),
            ("", "pets/list", true)
        );
        assert_eq!(parse_group_field("s1\u{1f}q1"), None);
    }
}
