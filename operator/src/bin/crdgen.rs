//! Prints the CRDs generated from the Rust types (`make crds` writes them to crds/).

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    print!("{}", agentsandbox_operator::crd_yaml_of(&which));
}
