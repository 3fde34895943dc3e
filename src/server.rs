//! The listeners (plain AMQP and, when configured, AMQPS): accept
//! connections, spawn a task per connection, and on shutdown close them all
//! with 320 CONNECTION_FORCED.

use crate::broker::queue::paging::PageBudget;
use crate::broker::Broker;
use crate::config::Config;
use crate::connection::limits::ConnectionLimits;
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
    tls: Option<(TcpListener, crate::tls::TlsAcceptor)>,
    limits: Arc<ConnectionLimits>,
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
        let tls = if config.tls.enabled {
            let acceptor = crate::tls::acceptor(&config.tls)?;
            let addr = format!("{}:{}", config.tls.bind, config.tls.port);
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for AMQPS: {e}"))?;
            Some((listener, acceptor))
        } else {
            None
        };
        let management = bind_http(&config.management, "the management API").await?;
        let prometheus = bind_http(&config.prometheus, "Prometheus metrics").await?;
        let options = crate::store::LogOptions {
            segment_size: config.storage.segment_size_bytes,
        };
        let (store, recovered) = Store::open_with(&config.storage.data_dir, options)?;
        // Page files live beside the data and are emptied at each start:
        // they only ever hold copies of queued messages.
        let pages = PageBudget::in_dir(&config.storage.data_dir.join("pages"))
            .map_err(|e| anyhow::anyhow!("cannot prepare the page directory: {e}"))?;
        let broker = Broker::with_pages(config, Some(Arc::new(store)), Arc::new(pages));
        broker.restore(recovered);
        if broker.config.cluster.enabled {
            join_cluster(&broker).await?;
        }
        Ok(Server {
            broker,
            listener,
            tls,
            limits: ConnectionLimits::new(),
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

    /// Where AMQPS listens, if enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
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
        if let Some(addr) = self.tls_addr() {
            tracing::info!(%addr, "AMQPS listener started");
        }
        let tls = self.tls.take();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(crate::connection::serve(stream, peer, self.broker.clone(), self.limits.clone(), stop_rx.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // accept() is cancel-safe: losing the race loses no socket.
                accepted = accept_tls(&tls) => match (accepted, &tls) {
                    (Ok((stream, peer)), Some((_, acceptor))) => {
                        connections.spawn(serve_tls(acceptor.clone(), stream, peer, self.broker.clone(), self.limits.clone(), stop_rx.clone()));
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        tracing::error!("AMQPS accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!(connections = connections.len(), "shutting down");
        drop(self.listener);
        drop(tls);
        let _ = stop_tx.send(true);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close in time; stopping anyway");
        }
        if let Some(cluster) = self.broker.replication.cluster() {
            cluster.shutdown().await;
        }
        // Acks and removals of the last moments reach the disk too.
        if let Some(store) = &self.broker.store {
            if !store.log.sync().await {
                tracing::error!("the message log could not write everything before the stop");
            }
        }
        tracing::info!("broker stopped");
    }
}

/// Starts this node's part of the cluster (`[cluster]`): from now on,
/// definitions change through the metadata group.
async fn join_cluster(broker: &Arc<Broker>) -> anyhow::Result<()> {
    let config = &broker.config.cluster;
    if config.secret.is_empty() {
        anyhow::bail!(
            "cluster.secret must be set when cluster.enabled is true (the same on every node)"
        );
    }
    let listen: SocketAddr = config
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("cluster.listen '{}': {e}", config.listen))?;
    let advertise = match config.advertise.as_str() {
        "" => format!("{}:{}", crate::config::hostname(), listen.port()),
        given => given.to_string(),
    };
    let tls = match config.tls_files(&broker.config.tls)? {
        Some((cert_file, key_file, ca_file)) => Some(
            crate::cluster::tls::NodeTls::load(cert_file, key_file, ca_file)
                .map_err(|e| anyhow::anyhow!("cluster.tls: {e}"))?,
        ),
        None => None,
    };
    let options = crate::cluster::ClusterOptions {
        cluster_name: config.name.clone(),
        node_name: broker.config.node_name(),
        listen,
        advertise,
        seed_nodes: config.seed_nodes.clone(),
        secret: config.secret.clone(),
        data_dir: broker.config.storage.data_dir.join("cluster"),
        tls,
        tuning: crate::cluster::Tuning {
            snapshot_every: config.snapshot_every.max(1),
            // Entries kept behind a snapshot, for followers a little behind
            // (further behind, they are sent the snapshot).
            keep_after_snapshot: (config.snapshot_every / 5).min(1000),
            ..Default::default()
        },
    };
    let applier = crate::broker::metadata::applier::BrokerApplier::new(Arc::downgrade(broker));
    let cluster = crate::cluster::Cluster::start(options, Arc::new(applier)).await?;
    cluster.set_broker_handler(crate::broker::node_calls::handler(Arc::downgrade(broker)));
    broker.replication.attach(cluster);
    for vhost in broker.vhosts() {
        vhost.forget_gone_queues();
    }
    Ok(())
}

/// The next AMQPS client, or never when AMQPS is off.
async fn accept_tls(
    tls: &Option<(TcpListener, crate::tls::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// One AMQPS connection: the TLS handshake (under the AMQP handshake
/// timeout), then the same connection code as plain AMQP. A client that
/// fails the handshake only loses its own socket.
async fn serve_tls(
    acceptor: crate::tls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout_secs.max(1));
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    crate::connection::serve_tls_stream(stream, peer, local, broker, limits, shutdown).await;
}
