//! `bgagent stop` and `bgagent start`: pause and resume the worker fleet.

use bgagent_client::PausedState;

use crate::connection::ClientOptions;
use crate::output;

/// Pause (`paused = true`, `POST /stop`) or resume (`POST /start`) the fleet.
pub async fn run(paused: bool, opts: &ClientOptions) -> anyhow::Result<()> {
    let client = opts.client()?;
    let state = if paused {
        client.stop().await?
    } else {
        client.start().await?
    };
    if opts.json {
        return output::print_json(&state);
    }
    print_state(&state);
    Ok(())
}

fn print_state(state: &PausedState) {
    if state.paused {
        println!("fleet paused: workers finish in-flight tasks and take no new ones");
    } else {
        println!("fleet running: workers take tasks");
    }
    if !state.broadcast {
        println!(
            "(the control message was not delivered; workers pick the change up within seconds)"
        );
    }
}
