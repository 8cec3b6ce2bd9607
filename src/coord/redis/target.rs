//! Where a worker finds Redis: the URL's server (TLS with a private CA and
//! a client certificate when configured; an ACL user and password from the
//! URL), or the master that Redis Sentinel names, asked again at every
//! connection so that a fail-over is followed.

use std::path::{Path, PathBuf};

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};
use secrecy::{ExposeSecret, SecretString};

use crate::coord::config::host_port;
use crate::coord::CoordError;

fn unavailable(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> CoordError {
    CoordError::Failed {
        what: what.into(),
        cause: Box::new(e),
    }
}

/// The TLS files of the `coord` section.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, CoordError> {
    std::fs::read(path)
        .map_err(|e| unavailable(&format!("{field}: cannot read {}", path.display()), e))
}

impl TlsFiles {
    fn certificates(&self) -> Result<Option<TlsCertificates>, CoordError> {
        if self.ca.is_none() && self.cert.is_none() {
            return Ok(None);
        }
        let client_tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read("coord.tls_cert_file", c)?,
                client_key: read("coord.tls_key_file", k)?,
            }),
            _ => None,
        };
        let root_cert = self
            .ca
            .as_deref()
            .map(|p| read("coord.tls_ca_file", p))
            .transpose()?;
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

enum Kind {
    Direct(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
        sentinels: Vec<String>,
    },
}

/// How this worker reaches Redis.
pub struct RedisTarget {
    kind: Kind,
}

impl RedisTarget {
    /// `sentinel`: the master's name and the sentinels' `host:port`;
    /// `cluster`: a Redis Cluster's seed nodes.
    pub fn new(
        url: &SecretString,
        tls: &TlsFiles,
        sentinel: Option<(&str, &[String])>,
        cluster: &[String],
    ) -> Result<Self, CoordError> {
        let certs = tls.certificates()?;
        if !cluster.is_empty() {
            return Self::cluster(url, certs, cluster);
        }
        let Some((master, sentinels)) = sentinel else {
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(url.expose_secret(), c),
                None => redis::Client::open(url.expose_secret()),
            }
            .map_err(|e| unavailable("coord.redis_url", e))?;
            return Ok(Self {
                kind: Kind::Direct(client),
            });
        };
        let info = url
            .expose_secret()
            .into_connection_info()
            .map_err(|e| unavailable("coord.redis_url", e))?;
        let tls_mode =
            matches!(info.addr, ConnectionAddr::TcpTls { .. }).then_some(TlsMode::Secure);
        let addrs = sentinels
            .iter()
            .filter_map(|s| host_port(s))
            .map(|(h, p)| ConnectionAddr::Tcp(h, p));
        let mut b =
            SentinelClientBuilder::new(addrs, master.to_string(), SentinelServerType::Master)
                .map_err(|e| unavailable("coord.sentinels", e))?
                .set_client_to_redis_db(info.redis.db);
        if let Some(u) = info.redis.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = info.redis.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(m) = tls_mode {
            // The sentinels are reached as the master is: TLS with rediss.
            b = b
                .set_client_to_redis_tls_mode(m)
                .set_client_to_sentinel_tls_mode(m);
            if let Some(c) = certs {
                b = b
                    .set_client_to_redis_certificates(c.clone())
                    .set_client_to_sentinel_certificates(c);
            }
        }
        let client = b.build().map_err(|e| unavailable("coord.sentinels", e))?;
        Ok(Self {
            kind: Kind::Sentinel {
                client: tokio::sync::Mutex::new(client),
                master: master.to_string(),
                sentinels: sentinels.to_vec(),
            },
        })
    }

    fn cluster(
        url: &SecretString,
        certs: Option<TlsCertificates>,
        nodes: &[String],
    ) -> Result<Self, CoordError> {
        let info = url
            .expose_secret()
            .into_connection_info()
            .map_err(|e| unavailable("coord.redis_url", e))?;
        let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        let seeds: Vec<redis::ConnectionInfo> = nodes
            .iter()
            .filter_map(|s| host_port(s))
            .map(|(host, port)| redis::ConnectionInfo {
                addr: if tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                },
                redis: info.redis.clone(),
            })
            .collect();
        let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(super::CALL_TIMEOUT)
            .response_timeout(super::CALL_TIMEOUT)
            .retries(2);
        if tls {
            b = b.tls(TlsMode::Secure);
            if let Some(c) = certs {
                b = b.certs(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| unavailable("coord.cluster_nodes", e))?;
        Ok(Self {
            kind: Kind::Cluster(client),
        })
    }

    /// Whether this is a Redis Cluster (keys carry hash tags).
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster(_))
    }

    /// A connection to the server (or the cluster) to talk to now.
    pub(crate) async fn connect(
        &self,
        cfg: redis::aio::ConnectionManagerConfig,
    ) -> Result<super::Conn, CoordError> {
        if let Kind::Cluster(c) = &self.kind {
            return c
                .get_async_connection()
                .await
                .map(super::Conn::Cluster)
                .map_err(|e| unavailable("connecting to the Redis Cluster", e));
        }
        let client = self.client().await?;
        redis::aio::ConnectionManager::new_with_config(client, cfg)
            .await
            .map(super::Conn::Single)
            .map_err(super::unavailable)
    }

    /// A client for the server to talk to now: for Sentinel, the master the
    /// sentinels name at this moment (it is checked to be a master).
    async fn client(&self) -> Result<redis::Client, CoordError> {
        match &self.kind {
            Kind::Direct(c) => Ok(c.clone()),
            Kind::Cluster(_) => Err(CoordError::Unavailable(
                "a Redis Cluster has no single client".into(),
            )),
            Kind::Sentinel {
                client,
                master,
                sentinels,
            } => client.lock().await.async_get_client().await.map_err(|e| {
                unavailable(
                    &format!(
                        "no master `{master}` from the sentinels {}",
                        sentinels.join(", ")
                    ),
                    e,
                )
            }),
        }
    }
}
