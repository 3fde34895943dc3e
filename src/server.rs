//! The listener: accepts connections, spawns a task per connection, and on
//! shutdown closes them all with 320 CONNECTION_FORCED.

use crate::broker::Broker;
use crate::config::Config;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Server {
    pub broker: Arc<Broker>,
    listener: TcpListener,
    management: Option<TcpListener>,
    prometheus: Option<TcpListener>,
}

/// Binds an optional HTTP listener (port 0 = any free port).
async fn bind_http(
    config: &crate::config::ListenerConfig,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    if !config.enabled {
        return Ok(None);
    }
    let addr = format!("{}:{}", config.bind, config.port);
    TcpListener::bind(&addr)
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}

impl Server {
    /// Binds the AMQP port (0 = any free port) and builds the broker.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let addr = format!("{}:{}", config.amqp.bind, config.amqp.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let management = bind_http(&config.management, "the management API").await?;
        let prometheus = bind_http(&config.prometheus, "Prometheus metrics").await?;
        let (store, recovered) = Store::open(&config.storage.data_dir)?;
        let broker = Broker::new(config, Some(Arc::new(store)));
        broker.restore(recovered);
        Ok(Server {
            broker,
            listener,
            management,
            prometheus,
        })
    }

    /// Where the management API listens, if enabled.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where Prometheus metrics are served, if enabled.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves, then closes every connection.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.broker.alarms.check();
        self.broker.alarms.start();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let Some(listener) = self.management.take() {
            let serve = crate::mgmt::serve(self.broker.clone(), listener, stopped(stop_rx.clone()));
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!("management API stopped: {e}");
                }
            });
        }
        if let Some(listener) = self.prometheus.take() {
            let serve =
                crate::mgmt::serve_metrics(self.broker.clone(), listener, stopped(stop_rx.clone()));
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!("Prometheus endpoint stopped: {e}");
                }
            });
        }
        let mut connections = JoinSet::new();
        tracing::info!(addr = %self.local_addr(), "AMQP listener started");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(crate::connection::serve(stream, peer, self.broker.clone(), stop_rx.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!(connections = connections.len(), "shutting down");
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close in time; stopping anyway");
        }
        // Acks and removals of the last moments reach the disk too.
        if let Some(store) = &self.broker.store {
            store.log.sync().await;
        }
        tracing::info!("broker stopped");
    }
}
