//! `nenya`, the reference binary: reads config, builds the stack with the library's public
//! API, and serves it (HTTP/1.1 and HTTP/2) until SIGTERM/Ctrl-C, then drains for 5 s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nenya::config::{Config, Secrets};
use nenya::services::{Fault, MockConfig, MockProvider, RouteTable};
use nenya::telemetry::{ScrubbingMakeWriter, SecretFilter, install_panic_hook};
use nenya::{Gateway, GatewayBuilder, ReloadTrigger, ReloadableGateway};
use tracing_subscriber::EnvFilter;

/// Drain time for in-flight requests after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "nenya",
    version,
    about = "An AI API gateway built from tower layers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the mock upstream provider over HTTP.
    Mock(MockArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    /// Config file or directory (else NENYA_CONFIG_FILE, NENYA_CONFIG_DIR, /etc/nenya).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides PORT/HOST and server.listen_addr).
    #[arg(long)]
    listen: Option<String>,
    /// Connection threads, each with its own single-threaded runtime; a connection stays on
    /// one (0: one per CPU; -1: none, connections run on the shared work-stealing runtime).
    #[arg(
        long,
        env = "NENYA_WORKERS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    workers: i64,
}

#[derive(Args, Debug)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// Content chunks per streamed answer.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Delay before each streamed event, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer with a description of the request received.
    #[arg(long)]
    echo: bool,
    /// Inject a fault: status:N, stall, stall-after:N, drop-after:N, malformed.
    #[arg(long)]
    fault: Option<Fault>,
    /// Answer with a tool call: NAME=JSON_ARGUMENTS (arguments stream in --chunks fragments).
    #[arg(long, value_parser = parse_tool_call)]
    tool_call: Option<(String, String)>,
    /// Send this reasoning before the answer.
    #[arg(long)]
    thinking: Option<String>,
}

fn parse_tool_call(s: &str) -> Result<(String, String), String> {
    let (name, args) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=JSON_ARGUMENTS".to_owned())?;
    serde_json::from_str::<serde_json::Value>(args)
        .map_err(|e| format!("arguments are not JSON: {e}"))?;
    Ok((name.to_owned(), args.to_owned()))
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Every log line passes this filter: known secrets (updated on reload) and recognisable
/// credentials never reach the log, whatever a dependency traces or a panic message says.
fn log_filter() -> &'static Arc<SecretFilter> {
    static FILTER: std::sync::OnceLock<Arc<SecretFilter>> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| Arc::new(SecretFilter::new()))
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(ScrubbingMakeWriter::new(
            std::io::stdout,
            log_filter().clone(),
        ));
    install_panic_hook(log_filter().clone());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel::layer());
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
}

/// OpenTelemetry export (cargo feature `otlp`): when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every request's span (and its children) is
/// exported over OTLP/HTTP in batches; `otel::shutdown` flushes at exit.
#[cfg(feature = "otlp")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::sync::OnceLock;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    pub(crate) fn layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("nenya: OTLP export disabled: {e}");
                return None;
            }
        };
        use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("nenya")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("nenya");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    pub(crate) fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            let _ = p.shutdown();
        }
    }
}

#[cfg(not(feature = "otlp"))]
mod otel {
    pub(crate) fn layer() -> Option<tracing_subscriber::layer::Identity> {
        None
    }

    pub(crate) fn shutdown() {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nenya: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = match cli.cmd {
        Some(Cmd::Mock(args)) => rt.block_on(run_mock(args, cli.log_format)),
        Some(Cmd::Serve(args)) => rt.block_on(run_serve(args, cli.log_format)),
        None => rt.block_on(run_serve(cli.serve, cli.log_format)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nenya: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_mock(args: MockArgs, log: LogFormat) -> Result<(), String> {
    init_logging(log, None);
    let shutdown = nenya::server::shutdown_signal();
    let addr = parse_listen(&args.listen)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%local, "nenya mock provider listening on {local}");
    let mock = MockProvider::new(MockConfig {
        chunks: args.chunks,
        delay: Duration::from_millis(args.delay_ms),
        echo: args.echo,
        fault: args.fault,
        tool_call: args.tool_call,
        thinking: args.thinking,
        // Nothing reads what a standalone mock received: keeping it grew without bound under
        // a long load (23 GB after a benchmark's 100 KB requests).
        ..MockConfig::unrecorded()
    });
    mock.serve(listener, shutdown)
        .await
        .map_err(|e| e.to_string())
}

fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    flag.or_else(|| env("NENYA_CONFIG_FILE"))
        .or_else(|| env("NENYA_CONFIG_DIR"))
        .or_else(|| {
            let d = PathBuf::from("/etc/nenya");
            d.is_dir().then_some(d)
        })
}

/// Where secrets come from, in Nenya's order: systemd credentials (`$CREDENTIALS_DIRECTORY/
/// secrets`, then `secrets.d/`), then `NENYA_SECRETS_DIR` (a directory or one file), then
/// `/run/secrets/nenya`.
fn secrets_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(creds) = env("CREDENTIALS_DIRECTORY") {
        for name in ["secrets", "secrets.d"] {
            let p = creds.join(name);
            if p.exists() {
                return Some(p);
            }
        }
    }
    env("NENYA_SECRETS_DIR").or_else(|| {
        let d = PathBuf::from("/run/secrets/nenya");
        d.is_dir().then_some(d)
    })
}

/// Reads config and secrets and assembles a gateway builder (the same for start-up and reload).
fn load(path: Option<&std::path::Path>) -> Result<(Config, Secrets, GatewayBuilder), String> {
    let mut cfg = match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    // The shared-state URL may carry a password: it can come from the environment (a
    // Kubernetes Secret) instead of the config file.
    if let Some(url) = std::env::var("NENYA_STATE_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        cfg.state.url = Some(url);
    }
    let secrets = match secrets_path() {
        Some(d) => Secrets::load_dir(&d).map_err(|e| e.to_string())?,
        None => Secrets::default(),
    };
    let mock_mode = path.is_none() && secrets.provider_keys.is_empty();
    let builder = if mock_mode {
        Gateway::builder(RouteTable::mock(
            MockProvider::new(MockConfig::unrecorded()),
        ))
        .max_body_bytes(cfg.server.max_body_bytes)
        .client_tokens(secrets.client_token.clone())
        .api_keys(secrets.rbac_keys().map_err(|e| e.to_string())?)
        .key_limits(secrets.key_limits())
        .allowed_browser_origins(cfg.governance.allowed_browser_origins.iter().cloned())
        .bouncer(&cfg.bouncer)
        .map_err(|e| e.to_string())?
    } else {
        Gateway::from_config(&cfg, &secrets).map_err(|e| e.to_string())?
    };
    Ok((cfg, secrets, builder))
}

/// `--workers`: 0 is one thread per CPU, a negative number none (see [`ServeArgs`]).
fn connection_workers(n: i64) -> Result<Option<nenya::server::ConnectionWorkers>, String> {
    let n = match usize::try_from(n) {
        Err(_) => return Ok(None),
        Ok(0) => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        Ok(n) => n,
    };
    let workers = nenya::server::ConnectionWorkers::new(n)
        .map_err(|e| format!("cannot start {n} connection threads: {e}"))?;
    tracing::debug!(threads = n, "connection threads started");
    Ok(Some(workers))
}

async fn run_serve(args: ServeArgs, log: LogFormat) -> Result<(), String> {
    let path = config_path(args.config);
    let (cfg, secrets, builder) = load(path.as_deref())?;
    log_filter().set_from(&cfg, &secrets);
    init_logging(log, cfg.server.log_level.as_deref());
    match &path {
        None if secrets.provider_keys.is_empty() => tracing::info!(
            "no config and no provider keys found: every model is served by the built-in mock provider"
        ),
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => {}
    }
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    if secrets.client_token.is_none() && secrets.api_keys.is_empty() {
        tracing::warn!("no client_token in secrets: clients are not authenticated");
    }
    let (trigger, requests) = ReloadTrigger::channel();
    let gateway = ReloadableGateway::new(builder.reload_trigger(Some(trigger.clone())).build());
    spawn_reloader(path.clone(), gateway.clone(), trigger, requests);
    // The tokenizer tables load in the background once a request comes within reach of its
    // budget (`tokens::warm_up_in_background`): a gateway whose requests stay small never
    // holds them (about 75 MiB).
    spawn_memory_trimmer();

    let shutdown = nenya::server::shutdown_signal();
    let listener = match inherited_listener()? {
        // systemd socket activation (nenya.socket): serve on the socket systemd bound.
        Some(l) => l,
        None => {
            let addr = listen_addr(args.listen.as_deref(), cfg.server.listen_addr.as_deref())?;
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        }
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%local, "nenya listening on {local}");
    let served = match connection_workers(args.workers)? {
        Some(w) => nenya::server::serve_on_workers(listener, gateway, shutdown, GRACE, &w).await,
        None => nenya::server::serve(listener, gateway, shutdown, GRACE).await,
    };
    served.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    otel::shutdown();
    Ok(())
}

/// Returns freed heap memory to the system after a burst of connections is over.
///
/// glibc keeps the pages of freed allocations in its arenas, so after 1,000 streams the RSS
/// stayed near its peak (BENCHMARKS.md, soak). Once a second this looks at the open
/// connections: when they fall to a quarter of the high-water mark since the last trim (and
/// that mark was a real burst, 32+), `malloc_trim(0)` runs on a blocking thread. It never runs
/// under steady load, and once 5 s after start (the tokenizer build's scratch memory).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_memory_trimmer() {
    fn trim() {
        let started = std::time::Instant::now();
        // SAFETY: `malloc_trim` only walks glibc's own arenas (under their locks) and
        // releases free pages; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(
            took_us = started.elapsed().as_micros() as u64,
            "heap trimmed"
        );
    }
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = tokio::task::spawn_blocking(trim).await;
        let mut high = 0usize;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let open = nenya::server::open_connections();
            high = high.max(open);
            if high >= 32 && open <= high / 4 {
                high = open;
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_memory_trimmer() {}

/// The first socket passed by systemd (`LISTEN_FDS`, for this process's `LISTEN_PID`), if any.
fn inherited_listener() -> Result<Option<tokio::net::TcpListener>, String> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let std = fds
        .take_tcp_listener(0)
        .map_err(|e| format!("the inherited socket is not a TCP listener: {e}"))?;
    let Some(std) = std else {
        return Ok(None);
    };
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    let l = tokio::net::TcpListener::from_std(std).map_err(|e| e.to_string())?;
    tracing::info!("serving on the socket passed by the service manager (socket activation)");
    Ok(Some(l))
}

/// On `SIGHUP` or `POST /admin/reload`: re-read config and secrets, validate, and swap the
/// gateway in; circuit and limiter state and metrics carry over. A config that fails to load
/// is logged (and reported to the admin request) and the running one keeps serving. (The
/// listen address is not changed by a reload.)
fn spawn_reloader(
    path: Option<PathBuf>,
    gateway: ReloadableGateway,
    trigger: ReloadTrigger,
    mut requests: tokio::sync::mpsc::Receiver<nenya::ReloadReply>,
) {
    #[cfg(unix)]
    let mut hup = {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP handler, reload by signal disabled: {e}");
                None
            }
        }
    };
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            let reply = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => None,
                r = requests.recv() => match r { Some(r) => Some(r), None => return },
            };
            #[cfg(not(unix))]
            let reply = match requests.recv().await {
                Some(r) => Some(r),
                None => return,
            };
            let verdict = match load(path.as_deref()) {
                Ok((cfg, secrets, builder)) => {
                    log_filter().set_from(&cfg, &secrets);
                    gateway.replace(
                        builder
                            .reload_trigger(Some(trigger.clone()))
                            .carry_state_from(&gateway.current())
                            .build(),
                    );
                    for w in cfg.warnings() {
                        tracing::warn!("{w}");
                    }
                    tracing::info!("configuration reloaded");
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(
                        "reload rejected, the previous configuration keeps serving: {e}"
                    );
                    Err(e)
                }
            };
            if let Some(r) = reply {
                let _ = r.send(verdict);
            }
        }
    });
}

/// `--listen` > `PORT`/`HOST` > `server.listen_addr` > 127.0.0.1:8080.
fn listen_addr(flag: Option<&str>, cfg: Option<&str>) -> Result<SocketAddr, String> {
    if let Some(f) = flag {
        return parse_listen(f);
    }
    if let Ok(port) = std::env::var("PORT") {
        let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
        let port: u16 = port
            .parse()
            .map_err(|_| format!("PORT `{port}` is not a port number"))?;
        return parse_listen(&format!("{host}:{port}"))
            .or_else(|_| parse_listen(&format!("[{host}]:{port}")));
    }
    parse_listen(cfg.unwrap_or("127.0.0.1:8080"))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not a listen address (expected HOST:PORT or :PORT)"))
}
