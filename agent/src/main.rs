#![deny(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = torpor::cli::Cli::parse();
    std::process::exit(torpor::cli::run(cli));
}
