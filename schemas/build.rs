//! Embeds every `.avsc` file under `avro/` into the crate, so adding a schema file is enough
//! for it to be compiled, registered and compatibility-checked: there is no list to forget.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?);
    let avro = root.join("avro");
    println!("cargo:rerun-if-changed={}", avro.display());
    let mut files = Vec::new();
    collect(&avro, &mut files)?;
    files.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    let mut f = fs::File::create(out.join("embedded_schemas.rs"))?;
    writeln!(
        f,
        "/// Every `.avsc` file under `schemas/avro`, as (path relative to `schemas/`, contents)."
    )?;
    writeln!(f, "pub static EMBEDDED: &[(&str, &str)] = &[")?;
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path.strip_prefix(&root).map_err(std::io::Error::other)?;
        writeln!(
            f,
            "    ({:?}, include_str!({:?})),",
            rel.to_string_lossy(),
            path.to_string_lossy()
        )?;
    }
    writeln!(f, "];")?;
    Ok(())
}
