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
}

impl Server {
    /// Binds the AMQP port (0 = any free port) and builds the broker.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let addr = format!("{}:{}", config.amqp.bind, config.amqp.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let (store, recovered) = Store::open(&config.storage.data_dir)?;
        let broker = Broker::new(config, Some(Arc::new(store)));
        broker.restore(recovered);
        Ok(Server { broker, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves, then closes every connection.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
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
