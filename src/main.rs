fn main() -> std::process::ExitCode {
    heldar_edge::cli::main()
}
