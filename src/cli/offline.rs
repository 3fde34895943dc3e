//! The catalog of a stopped broker's data dir, changed in place. The data
//! dir's lock is held while the command runs, so a broker started meanwhile
//! waits for nothing and fails cleanly instead of reading half a change.

use super::{PermissionEntry, UserAdmin, UserEntry};
use broker::broker::users::User;
use broker::store::catalog::{PermissionRecord, UserRecord, VhostRecord};
use broker::store::{Catalog, FORMAT_VERSION};
use broker::Config;
use std::fs::File;

pub struct DataDir {
    catalog: Catalog,
    _lock: File,
}

impl DataDir {
    /// Opens the data dir of `config`, creating it if missing; `None` when a
    /// running broker holds its lock.
    pub fn open(config: &Config) -> Result<Option<DataDir>, String> {
        let dir = &config.storage.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Ok(None);
        }
        match std::fs::read_to_string(dir.join("FORMAT")) {
            Ok(text) if text.trim() == FORMAT_VERSION.to_string() => {}
            Ok(text) => {
                return Err(format!(
                    "data dir {} has format {:?}; this broker reads version {FORMAT_VERSION}",
                    dir.display(),
                    text.trim()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(dir.join("FORMAT"), format!("{FORMAT_VERSION}\n"))
                    .map_err(|e| format!("cannot write FORMAT in {}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("cannot read FORMAT in {}: {e}", dir.display())),
        }
        let catalog = Catalog::open(&dir.join("catalog")).map_err(|e| format!("{e:#}"))?;
        let data_dir = DataDir {
            catalog,
            _lock: lock,
        };
        data_dir.seed_defaults(config);
        Ok(Some(data_dir))
    }

    /// A fresh catalog gets the default user, vhost and permission first,
    /// as the broker itself would at its first start: otherwise adding a
    /// user to a new data dir would silently drop `guest`.
    fn seed_defaults(&self, config: &Config) {
        if !self.catalog.users().is_empty() {
            return;
        }
        let auth = &config.auth;
        self.catalog.put_vhost(&VhostRecord {
            name: auth.default_vhost.clone(),
            description: "Default virtual host".into(),
            ..Default::default()
        });
        self.catalog.put_permission(&PermissionRecord {
            user: auth.default_user.clone(),
            vhost: auth.default_vhost.clone(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
        let guest = User::with_password(
            &auth.default_user,
            &auth.default_pass,
            vec!["administrator".into()],
        );
        // The user last: its presence marks the catalog as initialised.
        self.catalog.put_user(&record(&guest));
    }

    fn find_user(&self, name: &str) -> Option<UserRecord> {
        self.catalog.users().into_iter().find(|u| u.name == name)
    }
}

fn record(u: &User) -> UserRecord {
    UserRecord {
        name: u.name.clone(),
        password_hash: u.password_hash.clone(),
        hashing_algorithm: u.hashing_algorithm.clone(),
        tags: u.tags.clone(),
    }
}

fn no_user(name: &str) -> String {
    format!("user '{name}' does not exist")
}

impl UserAdmin for DataDir {
    fn add_user(&mut self, name: &str, password: &str, tags: &[String]) -> Result<(), String> {
        if name.is_empty() {
            return Err("user name must not be empty".into());
        }
        if self.find_user(name).is_some() {
            return Err(format!("user '{name}' already exists"));
        }
        self.catalog
            .put_user(&record(&User::with_password(name, password, tags.to_vec())));
        Ok(())
    }

    fn change_password(&mut self, name: &str, password: &str) -> Result<(), String> {
        let existing = self.find_user(name).ok_or_else(|| no_user(name))?;
        let user = User::with_password(name, password, existing.tags);
        self.catalog.put_user(&record(&user));
        Ok(())
    }

    fn delete_user(&mut self, name: &str) -> Result<(), String> {
        self.find_user(name).ok_or_else(|| no_user(name))?;
        self.catalog.delete_user(name);
        Ok(())
    }

    fn list_users(&mut self) -> Result<Vec<UserEntry>, String> {
        Ok(self
            .catalog
            .users()
            .into_iter()
            .map(|u| UserEntry {
                name: u.name,
                tags: u.tags,
            })
            .collect())
    }

    fn set_permissions(
        &mut self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        if !self.catalog.vhosts().iter().any(|v| v.name == vhost) {
            return Err(format!("vhost '{vhost}' does not exist"));
        }
        self.find_user(user).ok_or_else(|| no_user(user))?;
        self.catalog.put_permission(&PermissionRecord {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        });
        Ok(())
    }

    fn list_permissions(&mut self) -> Result<Vec<PermissionEntry>, String> {
        Ok(self
            .catalog
            .permissions()
            .into_iter()
            .map(|p| PermissionEntry {
                user: p.user,
                vhost: p.vhost,
                configure: p.configure,
                write: p.write,
                read: p.read,
            })
            .collect())
    }
}
