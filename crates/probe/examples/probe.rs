//! A stand-alone `probe` for trying the tester before it is wired into the `relayward`
//! binary: `cargo run -p relayward-probe --example probe -- [OPTIONS] TARGET...`.

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
