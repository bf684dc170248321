//! `bgagent agents register|unregister|list`.

use chrono::Utc;
use serde_json::Value;

use crate::commands::enqueue::parse_json_object;
use crate::connection::ClientOptions;
use crate::output::{self, Table};

/// Arguments of `bgagent agents`.
#[derive(clap::Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: AgentsCommand,
}

#[derive(clap::Subcommand)]
enum AgentsCommand {
    /// Register (or update) an agent: workers POST its tasks to the endpoint.
    Register {
        /// Agent name (^[a-z0-9][a-z0-9._-]{0,63}$).
        name: String,
        /// http(s) URL without credentials.
        endpoint: String,
        /// JSON object stored with the agent.
        #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
        meta: Option<Value>,
    },
    /// Remove an agent.
    Unregister {
        /// Agent name.
        name: String,
    },
    /// List registered agents.
    List,
}

/// Run the command.
pub async fn run(args: AgentsArgs, opts: &ClientOptions) -> anyhow::Result<()> {
    let client = opts.client()?;
    match args.command {
        AgentsCommand::Register {
            name,
            endpoint,
            meta,
        } => {
            let agent = client.register_agent(&name, &endpoint, meta).await?;
            if opts.json {
                return output::print_json(&agent);
            }
            println!("registered agent {} -> {}", agent.name, agent.endpoint);
        }
        AgentsCommand::Unregister { name } => {
            let gone = client.unregister_agent(&name).await?;
            if opts.json {
                return output::print_json(&gone);
            }
            println!("unregistered agent {}", gone.name);
        }
        AgentsCommand::List => {
            let agents = client.list_agents().await?;
            if opts.json {
                return output::print_json(&serde_json::json!({ "agents": agents }));
            }
            if agents.is_empty() {
                println!("no agents registered");
                return Ok(());
            }
            let now = Utc::now();
            let mut table = Table::new(&["NAME", "ENDPOINT", "UPDATED", "META"]);
            for agent in &agents {
                table.row(vec![
                    agent.name.clone(),
                    agent.endpoint.clone(),
                    output::age(agent.updated_at, now),
                    output::truncate(&agent.meta.to_string(), 60),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}
