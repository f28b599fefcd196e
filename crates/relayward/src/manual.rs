//! `relayward completions SHELL` and `relayward man`: shell completions and manual pages,
//! generated from the same clap definition as the command line itself, so they cannot drift
//! from what the binary accepts.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap_complete::Shell;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write relayward.1 and one page per subcommand (relayward-serve.1, …) into this
    /// directory instead of printing relayward.1 to stdout.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut command = crate::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "relayward",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}

pub fn man(args: &ManArgs) -> ExitCode {
    let command = crate::command();
    let result = match &args.out_dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command, dir))
            .map(|()| println!("relayward: manual pages written to {}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .and_then(|()| std::io::stdout().write_all(&page))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayward man: {e}");
            ExitCode::FAILURE
        }
    }
}
