//! `bgagent completions <shell>`: print a shell completion script.

use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;

/// Arguments of `bgagent completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// Shell to generate for (bash, zsh, fish, elvish, powershell).
    shell: Shell,
}

/// Print the script on stdout, e.g.
/// `bgagent completions bash > ~/.local/share/bash-completion/completions/bgagent`.
pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = crate::Cli::command();
    // Generate into memory (clap_complete panics on write errors), then write, treating a closed
    // pipe (`| head`) as the reader's choice rather than a failure.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "bgagent", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
