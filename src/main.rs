fn main() {
    std::process::exit(ralph_deploy::cli::main());
}
