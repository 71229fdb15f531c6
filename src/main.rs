fn main() -> std::process::ExitCode {
    ofa::cli::main()
}
