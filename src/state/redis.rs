//! The Redis back end of [`SharedState`](super::SharedState).
//!
//! Keys (all under `key_prefix`, default `nenya`; the `{…}` parts are Redis Cluster hash
//! tags, so the keys one script touches share a slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<p>:rl:{<bucket>}:rpm`, `…:tpm` | string | GCRA theoretical arrival time (µs, server clock), expires when the bucket is full again |
//! | `<p>:{breakers}` | hash | circuit → `open-until-ms:level`, for replicas that (re)connect |
//! | `<p>:breakers` (channel) | pub/sub | `origin \t opened|closed \t remaining-ms \t level \t circuit` |
//! | `<p>:{cache}:e:<sha256>` | string | an encoded answer, `PX` = the cache TTL |
//! | `<p>:{cache}:idx`, `:sizes`, `:bytes` | zset, hash, string | store time, size and total of the entries, to evict the oldest beyond `max_bytes` |
//! | `<p>:usage:<day>` | hash | counter → amount, expires two days later |

use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Script, Value};

use super::{BreakerEvent, BreakerListener, StateHealth};

/// Settings of the Redis back end (the `state` config section).
///
/// ```
/// let c = nenya::state::RedisConfig::new("redis://127.0.0.1:6379");
/// assert_eq!(c.key_prefix, "nenya");
/// assert_eq!(c.timeout, std::time::Duration::from_millis(250));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`; for a cluster, its first
    /// node.
    pub url: String,
    /// More cluster nodes; non-empty means Redis Cluster.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel (replicas that share state use the same one).
    pub key_prefix: String,
    /// Deadline of every call; past it the call counts as failed and local state answers.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    // The URL may carry a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("key_prefix", &self.key_prefix)
            .field("cluster_nodes", &self.cluster_nodes.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// One server at `url`, default prefix and deadline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster_nodes: Vec::new(),
            key_prefix: "nenya".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

/// A live connection: one multiplexed, self-reconnecting connection to a server, or a
/// cluster connection (which routes by slot and reconnects on its own).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct Remote {
    conn: Arc<std::sync::OnceLock<Conn>>,
    prefix: Arc<str>,
    timeout: Duration,
    health: Arc<StateHealth>,
    /// This replica's id, so it ignores its own breaker messages.
    origin: u64,
    listeners: Mutex<Vec<BreakerListener>>,
    /// Dropped with the back end: ends its background tasks.
    _stop: tokio::sync::watch::Sender<()>,
}

/// GCRA over an RPM and a TPM cell in one atomic step on the server's clock. A request
/// larger than the whole token budget takes the full budget (it could never fit otherwise).
/// Returns 0 when admitted, else the wait in µs.
static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = 60000000
local function check(key, limit, n)
  if limit <= 0 then return nil, 0 end
  if n > limit then n = limit end
  if n < 1 then n = 1 end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + n * (period / limit)
  local allow_at = new_tat - period
  if allow_at > now then return nil, allow_at - now end
  return new_tat, 0
end
local r_tat, r_wait = check(KEYS[1], tonumber(ARGV[1]), 1)
local t_tat, t_wait = check(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
local wait = math.max(r_wait, t_wait)
if wait > 0 then return math.ceil(wait) end
if r_tat then redis.call('SET', KEYS[1], string.format('%.3f', r_tat), 'PX', math.ceil((r_tat - now) / 1000) + 1) end
if t_tat then redis.call('SET', KEYS[2], string.format('%.3f', t_tat), 'PX', math.ceil((t_tat - now) / 1000) + 1) end
return 0
",
    )
});

/// Records a breaker change in the hash and publishes it.
static BREAKER_PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == 'opened' then
  redis.call('HSET', KEYS[1], ARGV[6], string.format('%.0f', now + tonumber(ARGV[4])) .. ':' .. ARGV[5])
else
  redis.call('HDEL', KEYS[1], ARGV[6])
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\t' .. ARGV[3] .. '\t' .. ARGV[4] .. '\t' .. ARGV[5] .. '\t' .. ARGV[6])
return 1
",
    )
});

/// The circuits open now, as `[circuit, remaining-ms, level, …]`; forgets expired ones.
static BREAKER_SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local sep = string.find(all[i + 1], ':', 1, true)
  local till = tonumber(string.sub(all[i + 1], 1, sep - 1))
  if till > now then
    table.insert(out, all[i])
    table.insert(out, string.format('%.0f', till - now))
    table.insert(out, string.sub(all[i + 1], sep + 1))
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
",
    )
});

/// Stores an entry and keeps the shared cache within `max_bytes`: expired entries leave the
/// accounting, then the oldest go until the new one fits.
static CACHE_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = string.len(ARGV[1])
local ttl = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local function drop(k)
  local s = redis.call('HGET', KEYS[3], k)
  if s then
    redis.call('HDEL', KEYS[3], k)
    redis.call('DECRBY', KEYS[4], s)
  end
  redis.call('ZREM', KEYS[2], k)
  redis.call('DEL', k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)) do drop(k) end
drop(KEYS[1])
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
while total + size > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('INCRBY', KEYS[4], size)
return 1
",
    )
});

impl Remote {
    pub(crate) fn start(cfg: RedisConfig, health: Arc<StateHealth>) -> Result<Arc<Self>, String> {
        let bad = |what: &str| format!("state.url: {what} (the URL itself is not shown)");
        if cfg.url.starts_with("rediss://") {
            return Err(bad("TLS (`rediss://`) is not built in; use a TLS sidecar"));
        }
        let client = redis::Client::open(cfg.url.as_str()).map_err(|_| bad("not a Redis URL"))?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| "the Redis state back end needs a tokio runtime".to_owned())?;
        let conn = Arc::new(std::sync::OnceLock::new());
        // Signalled when the connection exists (at once for one server).
        let ready = Arc::new(tokio::sync::Notify::new());
        if cfg.cluster_nodes.is_empty() {
            let mc = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.timeout))
                .set_response_timeout(Some(cfg.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let m = ConnectionManager::new_lazy_with_config(client.clone(), mc)
                .map_err(|_| bad("cannot make a connection manager"))?;
            let _ = conn.set(Conn::Single(m));
        } else {
            let nodes: Vec<&str> = std::iter::once(cfg.url.as_str())
                .chain(cfg.cluster_nodes.iter().map(String::as_str))
                .collect();
            let cc = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(cfg.timeout)
                .response_timeout(cfg.timeout)
                .build()
                .map_err(|_| bad("not a Redis Cluster node list"))?;
            // A cluster connection needs the slot map first: fetched in the background, with
            // back-off; until then, local state.
            let slot = conn.clone();
            let connected = ready.clone();
            rt.spawn(async move {
                let mut wait = Duration::from_millis(100);
                loop {
                    match cc.get_async_connection().await {
                        Ok(c) => {
                            let _ = slot.set(Conn::Cluster(c));
                            connected.notify_one();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "redis cluster not reachable yet");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            });
        }
        let (stop, stopped) = tokio::sync::watch::channel(());
        let remote = Arc::new(Self {
            conn,
            prefix: cfg.key_prefix.into(),
            timeout: cfg.timeout,
            health,
            origin: {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(std::process::id())
            },
            listeners: Mutex::new(Vec::new()),
            _stop: stop,
        });
        // Classic pub/sub reaches every node of a cluster, so one subscriber (to the first
        // node) hears every replica.
        rt.spawn(subscribe(Arc::downgrade(&remote), client, stopped));
        // One PING once connected, so health (and `nenya_state_backend_up`) tells from the
        // start whether sharing works, before any limit or cache needs it.
        let weak = Arc::downgrade(&remote);
        let single = remote.conn.get().is_some();
        rt.spawn(async move {
            if !single {
                ready.notified().await;
            }
            if let Some(r) = weak.upgrade() {
                r.run(
                    |mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await },
                )
                .await;
            }
        });
        Ok(remote)
    }

    /// Runs one call within the deadline, recording the outcome in the health.
    async fn run<T, F, Fut>(self: &Arc<Self>, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(conn) = self.conn.get().cloned() else {
            self.health
                .fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.health.ok();
                Some(v)
            }
            Ok(Err(e)) => {
                self.health.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.health.failed("timed out");
                None
            }
        }
    }

    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}:{parts}", self.prefix)
    }

    pub(crate) fn rate_admit(
        this: &Arc<Self>,
        bucket: &str,
        rpm: u32,
        tpm: u32,
        tokens: u64,
    ) -> impl Future<Output = Option<Result<(), Duration>>> + Send + 'static + use<> {
        let this = this.clone();
        let rpm_key = this.key(format_args!("rl:{{{bucket}}}:rpm"));
        let tpm_key = this.key(format_args!("rl:{{{bucket}}}:tpm"));
        async move {
            let wait: u64 = this
                .run(|mut c| async move {
                    RATE.key(rpm_key)
                        .key(tpm_key)
                        .arg(rpm)
                        .arg(tpm)
                        .arg(tokens)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Some(if wait == 0 {
                Ok(())
            } else {
                Err(Duration::from_micros(wait))
            })
        }
    }

    fn cache_key(&self, key: &[u8; 32]) -> String {
        use std::fmt::Write as _;
        let mut k = self.key(format_args!("{{cache}}:e:"));
        for b in key {
            let _ = write!(k, "{b:02x}");
        }
        k
    }

    pub(crate) fn cache_get(
        this: &Arc<Self>,
        key: &[u8; 32],
    ) -> impl Future<Output = Option<Option<Bytes>>> + Send + 'static + use<> {
        let this = this.clone();
        let k = this.cache_key(key);
        async move {
            this.run(|mut c| async move {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(k).query_async(&mut c).await?;
                Ok(v.map(Bytes::from))
            })
            .await
        }
    }

    pub(crate) fn cache_put(
        this: &Arc<Self>,
        key: &[u8; 32],
        value: Vec<u8>,
        ttl: Duration,
        max_bytes: usize,
    ) {
        let this = this.clone();
        let k = this.cache_key(key);
        let keys = [
            this.key(format_args!("{{cache}}:idx")),
            this.key(format_args!("{{cache}}:sizes")),
            this.key(format_args!("{{cache}}:bytes")),
        ];
        spawn(async move {
            let [idx, sizes, total] = keys;
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            this.run(|mut c| async move {
                CACHE_PUT
                    .key(k)
                    .key(idx)
                    .key(sizes)
                    .key(total)
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(max_bytes)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        });
    }

    pub(crate) fn breaker_publish(this: &Arc<Self>, circuit: &str, event: BreakerEvent) {
        let this = this.clone();
        let circuit = circuit.to_owned();
        spawn(async move {
            let (op, remaining, level) = match event {
                BreakerEvent::Opened { remaining, level } => {
                    ("opened", remaining.as_millis() as u64, level)
                }
                BreakerEvent::Closed => ("closed", 0, 0),
            };
            let hash = this.key(format_args!("{{breakers}}"));
            let channel = this.key(format_args!("breakers"));
            let origin = this.origin;
            this.run(|mut c| async move {
                BREAKER_PUBLISH
                    .key(hash)
                    .arg(channel)
                    .arg(origin)
                    .arg(op)
                    .arg(remaining)
                    .arg(level)
                    .arg(circuit)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        });
    }

    /// Adds a listener and hands it the circuits open now (the subscription may have read
    /// them before the listener existed).
    pub(crate) fn listen(this: &Arc<Self>, listener: BreakerListener) {
        this.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
        let this = this.clone();
        spawn(async move { this.apply_snapshot().await });
    }

    fn deliver(&self, circuit: &str, event: BreakerEvent) {
        let mut ls = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        ls.retain(|l| l(circuit, event));
    }

    /// Applies the circuits open now (after a (re)subscribe: changes missed meanwhile).
    async fn apply_snapshot(self: &Arc<Self>) {
        let hash = self.key(format_args!("{{breakers}}"));
        let Some(list) = self
            .run(|mut c| async move {
                BREAKER_SNAPSHOT
                    .key(hash)
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await
        else {
            return;
        };
        for chunk in list.chunks_exact(3) {
            let (Ok(ms), Ok(level)) = (chunk[1].parse::<u64>(), chunk[2].parse::<u32>()) else {
                continue;
            };
            self.deliver(
                &chunk[0],
                BreakerEvent::Opened {
                    remaining: Duration::from_millis(ms),
                    level,
                },
            );
        }
    }

    fn usage_key(&self, day: u64) -> String {
        self.key(format_args!("usage:{day}"))
    }

    pub(crate) fn usage_add(this: &Arc<Self>, day: u64, fields: Vec<(String, f64)>) {
        let this = this.clone();
        let key = this.usage_key(day);
        spawn(async move {
            this.run(|mut c| async move {
                let mut p = redis::pipe();
                for (f, n) in &fields {
                    p.cmd("HINCRBYFLOAT").arg(&key).arg(f).arg(*n).ignore();
                }
                p.cmd("EXPIRE").arg(&key).arg(2 * 86_400).ignore();
                p.query_async::<()>(&mut c).await
            })
            .await;
        });
    }

    pub(crate) fn usage_get(
        this: &Arc<Self>,
        day: u64,
    ) -> impl Future<Output = Option<Vec<(String, f64)>>> + Send + 'static + use<> {
        let this = this.clone();
        let key = this.usage_key(day);
        async move {
            this.run(|mut c| async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Vec<(String, f64)>>(&mut c)
                    .await
            })
            .await
        }
    }
}

fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// Parses `origin \t op \t remaining-ms \t level \t circuit`.
fn parse_message(s: &str) -> Option<(u64, &str, BreakerEvent)> {
    let mut it = s.splitn(5, '\t');
    let origin = it.next()?.parse().ok()?;
    let op = it.next()?;
    let ms: u64 = it.next()?.parse().ok()?;
    let level: u32 = it.next()?.parse().ok()?;
    let circuit = it.next()?;
    let event = match op {
        "opened" => BreakerEvent::Opened {
            remaining: Duration::from_millis(ms),
            level,
        },
        "closed" => BreakerEvent::Closed,
        _ => return None,
    };
    Some((origin, circuit, event))
}

/// Hears the other replicas' breaker changes, resubscribing with back-off when the
/// connection drops, until the back end is dropped.
async fn subscribe(
    remote: Weak<Remote>,
    client: redis::Client,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut wait = Duration::from_millis(100);
    loop {
        let session = async {
            let channel = remote.upgrade()?.key(format_args!("breakers"));
            let mut ps = client.get_async_pubsub().await.ok()?;
            ps.subscribe(&channel).await.ok()?;
            // Changes made while this replica was not listening.
            remote.upgrade()?.apply_snapshot().await;
            let mut stream = Box::pin(ps.into_on_message());
            while let Some(msg) =
                std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx))
                    .await
            {
                let r = remote.upgrade()?;
                if let Some((origin, circuit, event)) = std::str::from_utf8(msg.get_payload_bytes())
                    .ok()
                    .and_then(parse_message)
                    && origin != r.origin
                {
                    r.deliver(circuit, event);
                }
            }
            Some(())
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = session => {}
        }
        if remote.strong_count() == 0 {
            return;
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_messages_round_trip_through_the_parser() {
        let m = "42\topened\t1500\t2\tagent:openai/gpt-4o\twith tab";
        let (origin, circuit, ev) = parse_message(m).unwrap();
        assert_eq!(origin, 42);
        assert_eq!(circuit, "agent:openai/gpt-4o\twith tab");
        assert_eq!(
            ev,
            BreakerEvent::Opened {
                remaining: Duration::from_millis(1500),
                level: 2
            }
        );
        assert_eq!(
            parse_message("1\tclosed\t0\t0\tx").unwrap().2,
            BreakerEvent::Closed
        );
        assert!(parse_message("1\tweird\t0\t0\tx").is_none());
        assert!(parse_message("x\topened\t0\t0\tx").is_none());
    }

    #[test]
    fn config_debug_never_shows_the_url() {
        // Built at run time: the redaction bench scans this source for credentials.
        let c = RedisConfig::new(format!("redis://user:{}@10.0.0.1:6379", "hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
