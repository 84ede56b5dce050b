//! The benchmark baseline: the barest axum server on a tokio `current_thread` runtime answering
//! `GET /hello`, so `workload/bench/serve.sh` can show what the workload's supervisor, metrics and
//! middleware cost on top of the framework itself. Port from `PORT` (default 8081).

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8081);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await?
                .tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
            let app = Router::new().route("/hello", get(|| async { "Hello, World!\n" }));
            axum::serve(listener, app).await
        })
}
