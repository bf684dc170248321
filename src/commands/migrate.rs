//! `bgagent migrate`: create the database when absent and apply migrations.

use anyhow::Context;
use bgagent_shared::config::DatabaseConfig;
use bgagent_shared::db;

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
        db::ensure_database(url)
            .await
            .context("cannot create the database")?;
    }
    let pool = db::pool(&args.database, "bgagent-migrate")?;
    db::migrate(&pool).await.context("migration failed")?;
    let applied: i64 = sqlx_count(&pool).await?;
    println!("migrations applied ({applied} in total)");
    Ok(())
}

async fn sqlx_count(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await?,
    )
}
