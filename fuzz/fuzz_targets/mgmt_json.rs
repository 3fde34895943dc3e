//! The management API's JSON handlers fed arbitrary bodies: definitions
//! import, publish, policies, queue and exchange declares and bindings,
//! through the real router (authentication included, as the administrator
//! guest from loopback) against a broker without storage. Any answer but
//! a 5xx is fine; a panic or a 5xx is a finding. The first input byte
//! picks the endpoint.
#![no_main]

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;

const ENDPOINTS: [(Method, &str); 8] = [
    (Method::POST, "/api/definitions"),
    (Method::POST, "/api/definitions/%2F"),
    (Method::POST, "/api/exchanges/%2F/amq.default/publish"),
    (Method::PUT, "/api/policies/%2F/p"),
    (Method::PUT, "/api/queues/%2F/q"),
    (Method::PUT, "/api/exchanges/%2F/x"),
    (Method::POST, "/api/bindings/%2F/e/amq.direct/q/q"),
    (Method::PUT, "/api/users/u"),
];

fn config() -> broker::Config {
    let mut config = broker::Config::default();
    config.storage.data_dir = std::env::temp_dir().join("broker-fuzz-unused");
    config
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = ENDPOINTS[pick as usize % ENDPOINTS.len()].clone();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let broker = broker::broker::Broker::new(config(), None);
        // The queue the binding endpoint binds.
        if let Some(vhost) = broker.vhost("/") {
            let _ = vhost.declare_queue(
                broker::broker::vhost::QueueDeclare {
                    name: "q",
                    passive: false,
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    arguments: &Default::default(),
                },
                0,
            );
        }
        let ctx = broker::mgmt::Ctx::new(broker, Duration::from_secs(5));
        let app = broker::mgmt::router(ctx);
        let Ok(mut request) = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
        else {
            return;
        };
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        request.extensions_mut().insert(ConnectInfo(peer));
        let Ok(response) = app.oneshot(request).await;
        assert!(
            !response.status().is_server_error(),
            "{path}: {} for {:?}",
            response.status(),
            String::from_utf8_lossy(body)
        );
    });
});
