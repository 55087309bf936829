//! Writes the generated (binary) seeds of every fuzz target into `<folder>/<target>/`, for
//! libFuzzer's corpus: `larder-fuzz-seeds fuzz/corpus`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(folder) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: larder-fuzz-seeds FOLDER");
        std::process::exit(2);
    };
    for target in larder_fuzz::TARGETS {
        let generated = larder_fuzz::seeds::generated(target.name);
        if generated.is_empty() {
            continue;
        }
        let target_folder = folder.join(target.name);
        std::fs::create_dir_all(&target_folder)?;
        for (number, seed) in generated.iter().enumerate() {
            std::fs::write(target_folder.join(format!("generated-{number}")), seed)?;
        }
    }
    Ok(())
}
