//! `broker cluster status|join|leave|forget`: RabbitMQ's
//! `rabbitmqctl cluster_status`, `join_cluster`, `forget_cluster_node`,
//! through the running node's management API (`/api/cluster`).

use super::online::RunningBroker;
use super::ApiArgs;
use broker::Config;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Members, leader and term, as this node sees them.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Join the cluster of the node at NODE (`host:port` of its cluster
    /// listener).
    Join {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// This node leaves its cluster.
    Leave {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The cluster forgets NODE (a node gone for good), by name.
    Forget {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub fn run(command: ClusterCommand, config: &Config) -> Result<(), String> {
    match command {
        ClusterCommand::Status { api } => {
            let status = RunningBroker::new(config, &api)?.cluster_status()?;
            print_status(&status);
        }
        ClusterCommand::Join { node, api } => {
            RunningBroker::new(config, &api)?.cluster_change(
                "POST",
                "/join",
                Some(json!({ "node": node })),
            )?;
            println!("joined the cluster of {node}");
        }
        ClusterCommand::Leave { api } => {
            RunningBroker::new(config, &api)?.cluster_change("POST", "/leave", None)?;
            println!("left the cluster");
        }
        ClusterCommand::Forget { node, api } => {
            let path = RunningBroker::forget_path(&node);
            RunningBroker::new(config, &api)?.cluster_change("DELETE", &path, None)?;
            println!("the cluster forgot {node}");
        }
    }
    Ok(())
}

/// `execute` is for user commands; cluster commands go through `run`.
pub fn not_here(_: &ClusterCommand) -> String {
    "cluster commands go through the running broker".into()
}

fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(status: &Value) {
    println!("cluster: {}", text(status, "cluster_name"));
    println!(
        "node:    {} ({})",
        text(status, "node"),
        text(status, "state")
    );
    println!("leader:  {}", text(status, "leader"));
    println!("term:    {}", text(status, "term"));
    println!("members:");
    for member in status["members"].as_array().into_iter().flatten() {
        let role = if member["voter"] == true {
            "voter"
        } else {
            "learner"
        };
        let reach = if member["reachable"] == true {
            "reachable"
        } else {
            "unreachable"
        };
        println!(
            "  {}\t{}\t{role}\t{reach}",
            text(member, "name"),
            text(member, "addr")
        );
    }
}
