//! Users, password hashes in RabbitMQ's format, and vhost permissions.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), as RabbitMQ's
    /// `rabbit_password_hashing_sha256`.
    pub password_hash: String,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
}

pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn verify(hash: &str, password: &str) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if decoded.len() != 36 {
        return false;
    }
    let expected = hash_with_salt(&decoded[..4], password);
    // Constant-time comparison of the encoded forms.
    expected.len() == hash.len()
        && expected
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[derive(Default)]
pub struct Users {
    users: HashMap<String, User>,
    /// (user, vhost) -> permission
    permissions: HashMap<(String, String), Permission>,
}

impl Users {
    pub fn add(&mut self, name: &str, password: &str, tags: &[&str]) {
        self.users.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                password_hash: hash_password(password),
                tags: tags.iter().map(|t| t.to_string()).collect(),
            },
        );
    }

    pub fn set_permission(&mut self, user: &str, vhost: &str, permission: Permission) {
        self.permissions
            .insert((user.to_string(), vhost.to_string()), permission);
    }

    /// Checks a login. An unknown user costs the same hash as a wrong
    /// password, so timing does not tell which it was.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&User> {
        const DUMMY: &str = "AAAAAOPDTJ0tDBYYg1A5sVCrSrRDhtxNVUlGPk4KJuwPOGbW";
        match self.users.get(name) {
            Some(user) if verify(&user.password_hash, password) => Some(user),
            Some(_) => None,
            None => {
                verify(DUMMY, password);
                None
            }
        }
    }

    pub fn list(&self) -> Vec<User> {
        self.users.values().cloned().collect()
    }

    /// Every (user, vhost, permission).
    pub fn permissions(&self) -> Vec<(String, String, Permission)> {
        self.permissions
            .iter()
            .map(|((u, v), p)| (u.clone(), v.clone(), p.clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&Permission> {
        self.permissions.get(&(user.to_string(), vhost.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_rabbitmq_hash() {
        // The same layout RabbitMQ exports: 4-byte salt, then SHA-256.
        let hash = hash_with_salt(&[1, 2, 3, 4], "guest");
        assert_eq!(hash.len(), 48);
        assert!(verify(&hash, "guest"));
        assert!(!verify(&hash, "guesT"));
    }
}
