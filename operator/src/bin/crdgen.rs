//! Prints the AgentSandbox CRD generated from the Rust types (`make crds` writes it to crds/).

fn main() {
    print!("{}", agentsandbox_operator::crd_yaml());
}
