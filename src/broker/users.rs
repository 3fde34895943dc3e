//! Users, password hashes in RabbitMQ's format, and vhost permissions.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use std::collections::HashMap;

/// RabbitMQ's default (and this broker's) password hashing.
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// Also accepted for imported hashes.
pub const SHA512: &str = "rabbit_password_hashing_sha512";

fn default_algorithm() -> String {
    SHA256.to_string()
}

/// Whether `name` is a hashing algorithm this broker can verify.
pub fn known_algorithm(name: &str) -> bool {
    name == SHA256 || name == SHA512
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), as RabbitMQ's
    /// `rabbit_password_hashing_sha256` (or sha512 with that algorithm).
    /// Empty: the user cannot log in with a password.
    pub password_hash: String,
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
}

impl User {
    /// A user with `password` hashed the default way.
    pub fn with_password(name: &str, password: &str, tags: Vec<String>) -> User {
        User {
            name: name.to_string(),
            password_hash: hash_password(password),
            hashing_algorithm: default_algorithm(),
            tags,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    hash_with(SHA256, salt, password)
}

fn hash_with(algorithm: &str, salt: &[u8], password: &str) -> String {
    let mut out = salt.to_vec();
    if algorithm == SHA512 {
        let mut hasher = Sha512::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        out.extend_from_slice(&hasher.finalize());
    } else {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        out.extend_from_slice(&hasher.finalize());
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `hash` is well-formed for `algorithm`: base64 of a 4-byte salt
/// and the digest (or empty: no password).
pub fn valid_hash(algorithm: &str, hash: &str) -> bool {
    if hash.is_empty() {
        return true;
    }
    let digest = if algorithm == SHA512 { 64 } else { 32 };
    base64::engine::general_purpose::STANDARD
        .decode(hash)
        .is_ok_and(|d| d.len() == 4 + digest)
}

fn verify(hash: &str, password: &str) -> bool {
    verify_with(SHA256, hash, password)
}

fn verify_with(algorithm: &str, hash: &str, password: &str) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    let digest = if algorithm == SHA512 { 64 } else { 32 };
    if decoded.len() != 4 + digest {
        return false;
    }
    let expected = hash_with(algorithm, &decoded[..4], password);
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
        let tags = tags.iter().map(|t| t.to_string()).collect();
        self.users
            .insert(name.to_string(), User::with_password(name, password, tags));
    }

    /// Adds or replaces a user; true if it is new.
    pub fn put(&mut self, user: User) -> bool {
        self.users.insert(user.name.clone(), user).is_none()
    }

    /// Removes a user and its permissions.
    pub fn remove(&mut self, name: &str) -> Option<User> {
        let removed = self.users.remove(name)?;
        self.permissions.retain(|(u, _), _| u != name);
        Some(removed)
    }

    /// Removes one permission entry; true if there was one.
    pub fn clear_permission(&mut self, user: &str, vhost: &str) -> bool {
        self.permissions
            .remove(&(user.to_string(), vhost.to_string()))
            .is_some()
    }

    /// Removes every permission for `vhost`; returns the users that had one.
    pub fn clear_vhost(&mut self, vhost: &str) -> Vec<String> {
        let mut users = Vec::new();
        self.permissions.retain(|(u, v), _| {
            if v == vhost {
                users.push(u.clone());
                false
            } else {
                true
            }
        });
        users
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
            Some(user) if verify_with(&user.hashing_algorithm, &user.password_hash, password) => {
                Some(user)
            }
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

    #[test]
    fn verifies_sha512_and_refuses_empty_hashes() {
        let hash = hash_with(SHA512, &[9, 8, 7, 6], "pw");
        assert!(valid_hash(SHA512, &hash));
        assert!(!valid_hash(SHA256, &hash));
        let mut users = Users::default();
        users.put(User {
            name: "u".into(),
            password_hash: hash,
            hashing_algorithm: SHA512.into(),
            tags: vec![],
        });
        assert!(users.authenticate("u", "pw").is_some());
        assert!(users.authenticate("u", "px").is_none());
        users.put(User {
            name: "n".into(),
            password_hash: String::new(),
            hashing_algorithm: SHA256.into(),
            tags: vec![],
        });
        assert!(users.authenticate("n", "").is_none());
    }
}
