//! `broker user …` and `broker permissions …`: user management without the
//! HTTP API. On the data dir of a stopped broker the catalog is changed
//! directly; when a running broker holds the data dir's lock, the same
//! change goes through its management API so that it takes effect at once.

mod cluster;
mod http;
mod offline;
mod online;

use broker::Config;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum Command {
    /// Manage users (add, passwd, delete, list).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage vhost permissions (set, list).
    #[command(subcommand)]
    Permissions(PermissionsCommand),
    /// The cluster this node is in (status, join, leave, forget); through
    /// the running broker's management API.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; fails if it exists.
    Add {
        name: String,
        password: String,
        /// Comma-separated tags, e.g. `administrator` or `monitoring,management`.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change a user's password (its tags stay).
    Passwd {
        name: String,
        password: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a user with its permissions.
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List users and their tags.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum PermissionsCommand {
    /// Set a user's configure, write and read regexes on a vhost.
    Set {
        /// The vhost (default: `/`).
        #[arg(long, short = 'p', default_value = "/")]
        vhost: String,
        user: String,
        configure: String,
        write: String,
        read: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List permissions (of one vhost with `--vhost`).
    List {
        #[arg(long, short = 'p')]
        vhost: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How to reach a running broker's management API when the data dir is in
/// use. Host and port default to `management.bind`/`management.port` of the
/// configuration.
#[derive(Args, Clone)]
pub struct ApiArgs {
    #[arg(long)]
    pub api_host: Option<String>,
    #[arg(long)]
    pub api_port: Option<u16>,
    #[arg(long, default_value = "guest")]
    pub api_user: String,
    #[arg(long, default_value = "guest")]
    pub api_password: String,
    /// CA certificate (PEM) to check an HTTPS management listener against
    /// (default: `management.tls.ca_file`).
    #[arg(long)]
    pub api_cacert: Option<std::path::PathBuf>,
}

/// A user as listed.
pub struct UserEntry {
    pub name: String,
    pub tags: Vec<String>,
}

/// A permission as listed.
pub struct PermissionEntry {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The operations, the same whether on a stopped data dir or through a
/// running broker. Errors are messages for the operator.
pub trait UserAdmin {
    fn add_user(&mut self, name: &str, password: &str, tags: &[String]) -> Result<(), String>;
    fn change_password(&mut self, name: &str, password: &str) -> Result<(), String>;
    fn delete_user(&mut self, name: &str) -> Result<(), String>;
    fn list_users(&mut self) -> Result<Vec<UserEntry>, String>;
    fn set_permissions(
        &mut self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String>;
    fn list_permissions(&mut self) -> Result<Vec<PermissionEntry>, String>;
}

impl Command {
    fn api(&self) -> &ApiArgs {
        match self {
            Command::User(UserCommand::Add { api, .. })
            | Command::User(UserCommand::Passwd { api, .. })
            | Command::User(UserCommand::Delete { api, .. })
            | Command::User(UserCommand::List { api })
            | Command::Permissions(PermissionsCommand::Set { api, .. })
            | Command::Permissions(PermissionsCommand::List { api, .. })
            | Command::Cluster(cluster::ClusterCommand::Status { api })
            | Command::Cluster(cluster::ClusterCommand::Join { api, .. })
            | Command::Cluster(cluster::ClusterCommand::Leave { api })
            | Command::Cluster(cluster::ClusterCommand::Forget { api, .. }) => api,
        }
    }
}

/// Runs `command`; the error is what to print before exiting non-zero.
pub fn run(command: Command, config: &Config) -> Result<(), String> {
    if let Command::Cluster(command) = command {
        return cluster::run(command, config);
    }
    let data_dir = &config.storage.data_dir;
    let mut admin: Box<dyn UserAdmin> = match offline::DataDir::open(config)? {
        Some(dir) => Box::new(dir),
        None => {
            let target = online::RunningBroker::new(config, command.api())?;
            eprintln!(
                "data dir {} is in use by a running broker; applying through {}",
                data_dir.display(),
                target.describe()
            );
            Box::new(target)
        }
    };
    execute(command, admin.as_mut())
}

fn execute(command: Command, admin: &mut dyn UserAdmin) -> Result<(), String> {
    match command {
        Command::User(UserCommand::Add {
            name,
            password,
            tags,
            ..
        }) => {
            let tags: Vec<String> = tags
                .into_iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            admin.add_user(&name, &password, &tags)?;
            println!("user '{name}' added");
        }
        Command::User(UserCommand::Passwd { name, password, .. }) => {
            admin.change_password(&name, &password)?;
            println!("password of user '{name}' changed");
        }
        Command::User(UserCommand::Delete { name, .. }) => {
            admin.delete_user(&name)?;
            println!("user '{name}' deleted");
        }
        Command::User(UserCommand::List { .. }) => {
            let mut users = admin.list_users()?;
            users.sort_by(|a, b| a.name.cmp(&b.name));
            println!("user\ttags");
            for u in users {
                println!("{}\t[{}]", u.name, u.tags.join(", "));
            }
        }
        Command::Permissions(PermissionsCommand::Set {
            vhost,
            user,
            configure,
            write,
            read,
            ..
        }) => {
            for (what, pattern) in [
                ("configure", &configure),
                ("write", &write),
                ("read", &read),
            ] {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(format!(
                        "{what} pattern {pattern:?} is not a valid regex: {e}"
                    ));
                }
            }
            admin.set_permissions(&vhost, &user, &configure, &write, &read)?;
            println!("permissions of user '{user}' on vhost '{vhost}' set");
        }
        Command::Permissions(PermissionsCommand::List { vhost, .. }) => {
            let mut permissions = admin.list_permissions()?;
            permissions.retain(|p| vhost.as_ref().is_none_or(|v| &p.vhost == v));
            permissions.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
            println!("user\tvhost\tconfigure\twrite\tread");
            for p in permissions {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.user, p.vhost, p.configure, p.write, p.read
                );
            }
        }
        // Handled by `run` before a user admin is opened.
        Command::Cluster(command) => return Err(cluster::not_here(&command)),
    }
    Ok(())
}
