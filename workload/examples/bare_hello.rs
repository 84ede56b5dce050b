//! A bare axum hello server on a tokio current-thread runtime: the fixed target of the load
//! generator benchmark (`workload/bench/load.sh`), so it measures the generators, not a model.
//!
//! `PORT=8099 cargo run --release -p loopscale-workload --example bare_hello`

fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8099);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello\n" }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the PORT");
        axum::serve(listener, app).await.expect("serve");
    });
}
