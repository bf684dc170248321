//! `bgagent migrate`: create the database when absent and apply migrations.

use anyhow::Context;
use bgagent_shared::config::DatabaseConfig;
use bgagent_shared::store::TaskStore;
use bgagent_shared::store::postgres::PgStore;

/// Arguments of `bgagent migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseConfig,
    /// Create the database first when it does not exist.
    #[arg(long)]
    create_database: bool,
}

/// Run the command.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args.database.url()?;
    if args.create_database {
        PgStore::create_database(url)
            .await
            .context("cannot create the database")?;
    }
    let store = PgStore::connect_lazy(&args.database, "bgagent-migrate")?;
    store.migrate().await.context("migration failed")?;
    let applied = store.applied_migrations().await?;
    println!("migrations applied ({applied} in total)");
    Ok(())
}
