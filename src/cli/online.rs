//! The same operations through a running broker's management API, so that
//! they take effect at once (a deleted user's connections are closed).

use super::http::{Client, Response};
use super::{ApiArgs, PermissionEntry, UserAdmin, UserEntry};
use broker::Config;
use serde_json::{json, Value};

pub struct RunningBroker {
    client: Client,
    api_user: String,
}

impl RunningBroker {
    pub fn new(config: &Config, api: &ApiArgs) -> Result<RunningBroker, String> {
        let management = &config.management;
        let host = api.api_host.clone().unwrap_or_else(|| {
            // A wildcard bind is reached on loopback.
            match management.bind.as_str() {
                "0.0.0.0" | "" => "127.0.0.1".to_string(),
                "::" => "::1".to_string(),
                other => other.to_string(),
            }
        });
        let port = api.api_port.unwrap_or(management.port);
        if !management.enabled && api.api_port.is_none() {
            return Err(
                "the data dir is in use by a running broker whose management API is disabled; \
                 stop the broker or pass --api-port"
                    .into(),
            );
        }
        let mut client = Client::new(&host, port, &api.api_user, &api.api_password);
        let tls = &management.tls;
        let ca_file = api.api_cacert.clone().or_else(|| {
            tls.enabled
                .then(|| tls.ca_file.clone().unwrap_or_else(|| tls.cert_file.clone()))
        });
        if let Some(ca_file) = ca_file {
            client = client.with_tls(&ca_file)?;
        }
        Ok(RunningBroker {
            client,
            api_user: api.api_user.clone(),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "its management API at {}://{}:{}",
            self.client.scheme(),
            self.client.host,
            self.client.port
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Response, String> {
        let response = self
            .client
            .request(method, &format!("/api{path}"), body.as_ref())?;
        match response.status {
            401 => Err(format!(
                "the management API refused the credentials of '{}' \
                 (give an administrator with --api-user and --api-password)",
                self.api_user
            )),
            403 => Err(format!(
                "user '{}' is not an administrator of the management API",
                self.api_user
            )),
            _ => Ok(response),
        }
    }

    fn get_json(&self, path: &str) -> Result<Value, String> {
        let response = self.call("GET", path, None)?;
        if response.status != 200 {
            return Err(failure("GET", path, &response));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| format!("unreadable answer from GET {path}: {e}"))
    }

    /// The user's JSON, or None when it does not exist.
    fn user(&self, name: &str) -> Result<Option<Value>, String> {
        let path = format!("/users/{}", encode(name));
        let response = self.call("GET", &path, None)?;
        match response.status {
            200 => serde_json::from_slice(&response.body)
                .map(Some)
                .map_err(|e| format!("unreadable answer from GET {path}: {e}")),
            404 => Ok(None),
            _ => Err(failure("GET", &path, &response)),
        }
    }

    fn put_user(&self, name: &str, password: &str, tags: &[String]) -> Result<(), String> {
        let path = format!("/users/{}", encode(name));
        let body = json!({"password": password, "tags": tags.join(",")});
        let response = self.call("PUT", &path, Some(body))?;
        match response.status {
            200..=299 => Ok(()),
            _ => Err(failure("PUT", &path, &response)),
        }
    }
}

/// `broker cluster …`: always through the running broker.
impl RunningBroker {
    pub fn cluster_status(&self) -> Result<Value, String> {
        self.get_json("/cluster")
    }

    /// A membership change: `POST /cluster/join`, `POST /cluster/leave`,
    /// `DELETE /cluster/nodes/NODE`.
    pub fn cluster_change(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), String> {
        let path = format!("/cluster{path}");
        let response = self.call(method, &path, body)?;
        match response.status {
            200..=299 => Ok(()),
            _ => Err(failure(method, &path, &response)),
        }
    }

    pub fn forget_path(node: &str) -> String {
        format!("/nodes/{}", encode(node))
    }
}

/// An API answer that is not what was asked, as a message: RabbitMQ's
/// `reason` when there is one.
fn failure(method: &str, path: &str, response: &Response) -> String {
    let reason = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
    format!("{method} /api{path} answered {}: {reason}", response.status)
}

/// Percent-encodes a path segment (vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn no_user(name: &str) -> String {
    format!("user '{name}' does not exist")
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => s.split(',').map(String::from).collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl UserAdmin for RunningBroker {
    fn add_user(&mut self, name: &str, password: &str, tags: &[String]) -> Result<(), String> {
        if name.is_empty() {
            return Err("user name must not be empty".into());
        }
        if self.user(name)?.is_some() {
            return Err(format!("user '{name}' already exists"));
        }
        self.put_user(name, password, tags)
    }

    fn change_password(&mut self, name: &str, password: &str) -> Result<(), String> {
        let user = self.user(name)?.ok_or_else(|| no_user(name))?;
        self.put_user(name, password, &strings(user.get("tags")))
    }

    fn delete_user(&mut self, name: &str) -> Result<(), String> {
        let path = format!("/users/{}", encode(name));
        let response = self.call("DELETE", &path, None)?;
        match response.status {
            200..=299 => Ok(()),
            404 => Err(no_user(name)),
            _ => Err(failure("DELETE", &path, &response)),
        }
    }

    fn list_users(&mut self) -> Result<Vec<UserEntry>, String> {
        let users = self.get_json("/users")?;
        Ok(users
            .as_array()
            .map(|users| {
                users
                    .iter()
                    .map(|u| UserEntry {
                        name: text(u, "name"),
                        tags: strings(u.get("tags")),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn set_permissions(
        &mut self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        let vhost_path = format!("/vhosts/{}", encode(vhost));
        if self.call("GET", &vhost_path, None)?.status == 404 {
            return Err(format!("vhost '{vhost}' does not exist"));
        }
        if self.user(user)?.is_none() {
            return Err(no_user(user));
        }
        let path = format!("/permissions/{}/{}", encode(vhost), encode(user));
        let body = json!({"configure": configure, "write": write, "read": read});
        let response = self.call("PUT", &path, Some(body))?;
        match response.status {
            200..=299 => Ok(()),
            _ => Err(failure("PUT", &path, &response)),
        }
    }

    fn list_permissions(&mut self) -> Result<Vec<PermissionEntry>, String> {
        let permissions = self.get_json("/permissions")?;
        Ok(permissions
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| PermissionEntry {
                        user: text(p, "user"),
                        vhost: text(p, "vhost"),
                        configure: text(p, "configure"),
                        write: text(p, "write"),
                        read: text(p, "read"),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}
