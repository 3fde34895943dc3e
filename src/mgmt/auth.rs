//! HTTP Basic authentication against the broker's users, and what each
//! user tag may do, as in RabbitMQ:
//! - `administrator`: everything, including users, permissions, definitions;
//! - `monitoring`: reads everything (all vhosts, all connections), changes nothing;
//! - `management` / `policymaker`: reads and changes objects in the vhosts
//!   it has permissions for; `policymaker` also changes policies there.
//!
//! A user without any of these tags cannot use the API at all. Changes in
//! a vhost need a permission entry for it, whatever the tags. Then every
//! operation on a queue or exchange is checked as AMQP checks it (the
//! configure / write / read patterns, see `broker::access`), because
//! RabbitMQ's management performs it as the caller: tags, administrator
//! included, do not bypass the patterns. A pattern refusal is a 403
//! (`access_refused`); a missing tag or permission entry stays a 401.

use super::error::{ApiError, ApiResult};
use super::Ctx;
use crate::broker::access::Access;
use crate::broker::vhost::VHost;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated user of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
}

const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "management", "policymaker"];

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Sees every vhost and connection (administrator or monitoring).
    pub fn sees_everything(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    /// Users, permissions and definitions are for administrators only.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorized("Not administrator user"))
        }
    }

    /// Whether the caller has a permission entry for `vhost`.
    fn has_permission(&self, ctx: &Ctx, vhost: &str) -> bool {
        ctx.broker
            .users
            .read()
            .permission(&self.name, vhost)
            .is_some()
    }

    /// Whether objects of `vhost` are visible to the caller.
    pub fn can_read(&self, ctx: &Ctx, vhost: &str) -> bool {
        self.sees_everything() || self.has_permission(ctx, vhost)
    }

    /// The vhost, if it exists (404) and the caller may read it (401).
    pub fn readable_vhost(&self, ctx: &Ctx, name: &str) -> ApiResult<Arc<VHost>> {
        let vhost = ctx.broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if !self.can_read(ctx, name) {
            return Err(ApiError::not_authorized(
                "User not authorised to access virtual host",
            ));
        }
        Ok(vhost)
    }

    /// The vhost, if it exists and the caller may change things in it:
    /// not a monitoring-only user, and with a permission entry for it.
    /// What it may change there is then checked with `access`.
    pub fn writable_vhost(&self, ctx: &Ctx, name: &str) -> ApiResult<Arc<VHost>> {
        let vhost = ctx.broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if !self.is_admin() && !self.has("management") && !self.has("policymaker") {
            return Err(ApiError::not_authorized(
                "Not authorised: monitoring users are read-only",
            ));
        }
        self.require_permission(ctx, name)?;
        Ok(vhost)
    }

    /// The vhost, if it exists and the caller has a permission entry for
    /// it, whatever its tags (reading messages is an AMQP operation: a
    /// vhost that is merely visible is not enough).
    pub fn vhost_with_access(&self, ctx: &Ctx, name: &str) -> ApiResult<Arc<VHost>> {
        let vhost = ctx.broker.vhost(name).ok_or_else(ApiError::not_found)?;
        self.require_permission(ctx, name)?;
        Ok(vhost)
    }

    /// The vhost, if it exists and the caller may change its policies:
    /// an administrator, or a policymaker with a permission entry for it
    /// (RabbitMQ's `is_authorized_policies`).
    pub fn policy_vhost(&self, ctx: &Ctx, name: &str) -> ApiResult<Arc<VHost>> {
        if !self.is_admin() && !self.has("policymaker") {
            return Err(ApiError::not_authorized(
                "Not policymaker or administrator user",
            ));
        }
        let vhost = ctx.broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if !self.is_admin() {
            self.require_permission(ctx, name)?;
        }
        Ok(vhost)
    }

    fn require_permission(&self, ctx: &Ctx, vhost: &str) -> ApiResult<()> {
        if self.has_permission(ctx, vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorized(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// The caller's configure / write / read patterns in `vhost`, to check
    /// an operation the API performs as the caller. A refused check is an
    /// AMQP ACCESS_REFUSED, which the `?` operator turns into a 403
    /// `access to queue 'q' in vhost 'v' refused for user 'u'`.
    pub fn access(&self, ctx: &Ctx, vhost: &VHost) -> Access {
        Access::load(&ctx.broker, &self.name, &vhost.name)
    }
}

/// `Authorization: Basic base64(user:pass)` → (user, pass).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Middleware: authenticates every request and hands the `Caller` on.
pub async fn authenticate(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    match check(&ctx, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn check(ctx: &Ctx, req: &Request) -> ApiResult<Caller> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated());
    };
    let (user, pass) = value
        .to_str()
        .ok()
        .and_then(basic_credentials)
        .ok_or_else(|| ApiError::not_authorized("Login failed"))?;
    let caller = {
        let users = ctx.broker.users.read();
        let found = users
            .authenticate(&user, &pass)
            .ok_or_else(|| ApiError::not_authorized("Login failed"))?;
        Caller {
            name: found.name.clone(),
            tags: found.tags.clone(),
        }
    };
    let loopback_only = ctx.broker.config.auth.loopback_users.contains(&caller.name);
    if loopback_only {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if !peer.is_some_and(|ip| ip.is_loopback()) {
            // Answered exactly as a wrong password, so that the caller
            // learns nothing about the password it tried.
            tracing::warn!(user = %caller.name, ?peer, "HTTP login refused: user can only log in via localhost");
            return Err(ApiError::not_authorized("Login failed"));
        }
    }
    if !caller
        .tags
        .iter()
        .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
    {
        return Err(ApiError::not_authorized("Not management user"));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::basic_credentials;

    #[test]
    fn parses_basic_credentials() {
        assert_eq!(
            basic_credentials("Basic Z3Vlc3Q6Z3Vlc3Q="),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            basic_credentials("basic dTpwOnc="),
            Some(("u".into(), "p:w".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
