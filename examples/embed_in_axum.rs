//! Mounting the nenya gateway, and one nenya layer, inside an existing axum application.
//!
//! `cargo run --example embed_in_axum` serves on 127.0.0.1:8082.
//! With `NENYA_EXAMPLE_ONESHOT=1` it calls its own routes once, prints the answers and exits.

use axum::Router;
use axum::routing::get;
use nenya::config::Secret;
use nenya::layers::AuthLayer;
use nenya::services::{MockConfig, MockProvider, RouteTable};

#[tokio::main]
async fn main() -> Result<(), nenya::BoxError> {
    let gateway =
        nenya::Gateway::builder(RouteTable::mock(MockProvider::new(MockConfig::default())))
            .client_tokens([Secret::new("demo-token")])
            .build();

    let app = Router::new()
        // The application's own routes…
        .route("/", get(|| async { "my app" }))
        // …one of them guarded by nenya's AuthLayer on its own…
        .route(
            "/internal",
            get(|| async { "internal data" }).layer(AuthLayer::new([Secret::new("demo-token")])),
        )
        // …and the whole gateway mounted on the LLM paths.
        .route_service("/v1/chat/completions", gateway.clone())
        .route_service("/v1/messages", gateway);

    let oneshot = std::env::var_os("NENYA_EXAMPLE_ONESHOT").is_some();
    let addr = if oneshot {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8082"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("axum example listening on {local}");
    if !oneshot {
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = nenya::services::http_client(std::time::Duration::from_secs(5));
    let call = |req: http::Request<nenya::Body>| {
        let client = client.clone();
        async move {
            let resp = client.request(req).await?;
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await?
                .to_bytes();
            Ok::<_, nenya::BoxError>(format!("{status} {}", String::from_utf8_lossy(&body)))
        }
    };
    let unauth =
        http::Request::get(format!("http://{local}/internal")).body(nenya::Body::empty())?;
    println!("/internal without token: {}", call(unauth).await?);
    let chat = http::Request::post(format!("http://{local}/v1/messages"))
        .header("x-api-key", "demo-token")
        .body(nenya::Body::from(
            r#"{"model":"demo","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}"#,
        ))?;
    println!("/v1/messages: {}", call(chat).await?);
    server.abort();
    Ok(())
}
