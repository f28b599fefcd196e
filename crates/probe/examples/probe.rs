//! The tester without the rest of relayward: `cargo run -p relayward-probe --example probe --
//! [OPTIONS] TARGET...` runs the same code as `relayward probe`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "probe", about = "relayward's open-relay tester")]
struct Cli {
    #[command(flatten)]
    args: relayward_probe::ProbeArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    std::process::exit(relayward_probe::run(cli.args).await);
}
