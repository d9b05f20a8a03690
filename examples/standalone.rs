//! The gateway's layers stacked by hand in front of a provider, served with hyper.
//!
//! `cargo run --example standalone` serves on 127.0.0.1:8081 against the in-process mock.
//! With `NENYA_EXAMPLE_ONESHOT=1` it sends itself one request, prints the answer and exits.

use std::time::Duration;

use nenya::config::Secret;
use nenya::layers::{AuthLayer, DecodeLayer, ErrorResponseLayer};
use nenya::services::{MockConfig, MockProvider, ProviderService, RouteTable, Router};
use std::sync::Arc;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), nenya::BoxError> {
    // Where requests go: every model to the mock (use RouteTable::from_config for real ones).
    let table = Arc::new(RouteTable::mock(MockProvider::new(MockConfig::default())));

    // Outermost first: errors → JSON, client auth, body decode, routing, the provider.
    let stack = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(AuthLayer::new([Secret::new("demo-token")]))
        .layer(DecodeLayer::new(1 << 20))
        .service(Router::new(table, ProviderService::new()));

    let oneshot = std::env::var_os("NENYA_EXAMPLE_ONESHOT").is_some();
    let addr = if oneshot {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8081"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("standalone example listening on {local}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nenya::server::serve(
        listener,
        stack,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    if !oneshot {
        server.await??;
        return Ok(());
    }

    let client = nenya::services::http_client(Duration::from_secs(5));
    let req = http::Request::post(format!("http://{local}/v1/chat/completions"))
        .header("authorization", "Bearer demo-token")
        .body(nenya::Body::from(
            r#"{"model":"demo","messages":[{"role":"user","content":"hello"}]}"#,
        ))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&body));
    let _ = stop.send(());
    server.await??;
    Ok(())
}
