//! Compiles every `.proto` file under the workspace's `proto/` directory with protox (pure Rust,
//! so no system `protoc`), generates prost messages and tonic clients/servers, and writes
//! `packages.rs`: one nested module per protobuf package, so a new `.proto` file needs no edit
//! here or in `lib.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&root])?;
    let packages: Vec<String> = descriptors
        .file
        .iter()
        .filter_map(|f| f.package.clone())
        .collect();
    tonic_prost_build::configure().compile_fds(descriptors)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("packages.rs"), module_tree(&packages))?;
    Ok(())
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    Ok(())
}

/// A tree of package name segments; a leaf includes the file prost wrote for that package.
#[derive(Default)]
struct Module {
    children: BTreeMap<String, Module>,
    package: Option<String>,
}

fn module_tree(packages: &[String]) -> String {
    let mut root = Module::default();
    for package in packages {
        let mut node = &mut root;
        for segment in package.split('.') {
            node = node.children.entry(segment.to_string()).or_default();
        }
        node.package = Some(package.clone());
    }
    let mut code = String::new();
    write_module(&root, &mut code);
    code
}

fn write_module(module: &Module, code: &mut String) {
    if let Some(package) = &module.package {
        code.push_str(&format!(
            "include!(concat!(env!(\"OUT_DIR\"), \"/{package}.rs\"));\n"
        ));
    }
    for (name, child) in &module.children {
        code.push_str(&format!("pub mod {name} {{\n"));
        write_module(child, code);
        code.push_str("}\n");
    }
}
