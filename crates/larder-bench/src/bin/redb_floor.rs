//! `larder-redb-floor`: what redb itself takes for the embedded store's batch-run workload,
//! with nothing of Larder around it (the raw limit, as `redis-benchmark` is for Redis).
//!
//! 1. **First run**: fills `--tables` tables of `--rows` rows each (keys as Larder encodes
//!    integer entity keys, values of `--value-bytes`), in key order, in durable transactions of
//!    `--batch-rows` rows, as the batch lane's first run writes them.
//! 2. Reopens the file (an empty page cache, as a new `larder materialize` process has).
//! 3. **Changed run**: in each table, `--changed` random keys (seeded) are read, then
//!    overwritten with a new value in one durable transaction in key order, as the batch lane
//!    reads the digests of a batch and writes its changed rows (one writer at a time).
//!
//! Prints both times and their ratio. `--sample FILE` takes the value size from an existing
//! embedded store file (the mean of its rows) instead of `--value-bytes`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use larder_core::EntityKey;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

/// The table type of the embedded store: entity key bytes to stored row bytes.
type RowTable<'name> = TableDefinition<'name, &'static [u8], &'static [u8]>;

#[derive(Debug, Parser)]
struct Arguments {
    /// The redb file to create (replaced if it exists).
    #[arg(long)]
    path: PathBuf,
    /// Rows per table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Tables (feature views).
    #[arg(long, default_value_t = 2)]
    tables: usize,
    /// Rows changed per table in the second run.
    #[arg(long, default_value_t = 20_042)]
    changed: usize,
    /// Bytes of each stored value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Rows per transaction of the first run.
    #[arg(long, default_value_t = 65_536)]
    batch_rows: usize,
    /// An embedded store file whose mean stored value size to use instead of --value-bytes.
    #[arg(long)]
    sample: Option<PathBuf>,
}

/// A deterministic 64-bit generator (splitmix64), so every run changes the same keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }
}

/// The mean size of the stored values of the `fv/` tables of an embedded store file.
fn sampled_value_bytes(path: &PathBuf) -> Result<usize> {
    let database = redb::ReadOnlyDatabase::open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let transaction = database.begin_read()?;
    let (mut total, mut count) = (0usize, 0usize);
    for handle in transaction.list_tables()? {
        if !handle.name().starts_with("fv/") {
            continue;
        }
        let table = transaction.open_table(RowTable::new(handle.name()))?;
        for entry in table.iter()?.take(10_000) {
            let (_key, value) = entry?;
            total += value.value().len();
            count += 1;
        }
    }
    if count == 0 {
        bail!("{} holds no feature view rows", path.display());
    }
    Ok(total / count)
}

fn table_name(index: usize) -> String {
    format!("fv/floor_{index}/v1")
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let value_bytes = match &arguments.sample {
        Some(sample) => sampled_value_bytes(sample)?,
        None => arguments.value_bytes,
    };
    if arguments.path.exists() {
        std::fs::remove_file(&arguments.path)
            .with_context(|| format!("removing {}", arguments.path.display()))?;
    }
    let value = vec![7u8; value_bytes];

    let database = redb::Database::create(&arguments.path)?;
    let first_start = Instant::now();
    for table_index in 0..arguments.tables {
        let name = table_name(table_index);
        let mut next_key = 0i64;
        while next_key < arguments.rows {
            let transaction = database.begin_write()?;
            {
                let mut table = transaction.open_table(RowTable::new(&name))?;
                let end = (next_key + arguments.batch_rows as i64).min(arguments.rows);
                for key in next_key..end {
                    table.insert(EntityKey::from_int(key).as_bytes(), value.as_slice())?;
                }
                next_key = end;
            }
            transaction.commit()?;
        }
    }
    let first = first_start.elapsed();
    drop(database);

    let changed_value = vec![9u8; value_bytes];
    let mut generator = SplitMix(7);
    let reopen_start = Instant::now();
    let database = redb::Database::create(&arguments.path)?;
    let reopen = reopen_start.elapsed();
    let changed_start = Instant::now();
    let (mut read_seconds, mut write_seconds) = (0.0, 0.0);
    for table_index in 0..arguments.tables {
        let name = table_name(table_index);
        let mut keys: Vec<EntityKey> = (0..arguments.changed)
            .map(|_| EntityKey::from_int((generator.next() % arguments.rows as u64) as i64))
            .collect();
        keys.sort();
        keys.dedup();
        let read_start = Instant::now();
        let transaction = database.begin_read()?;
        let table = transaction.open_table(RowTable::new(&name))?;
        let mut found = 0usize;
        for key in &keys {
            found += usize::from(table.get(key.as_bytes())?.is_some());
        }
        drop(table);
        drop(transaction);
        if found != keys.len() {
            bail!("{found} of {} changed keys found", keys.len());
        }
        read_seconds += read_start.elapsed().as_secs_f64();
        let write_start = Instant::now();
        let transaction = database.begin_write()?;
        {
            let mut table = transaction.open_table(RowTable::new(&name))?;
            for key in &keys {
                table.insert(key.as_bytes(), changed_value.as_slice())?;
            }
        }
        transaction.commit()?;
        write_seconds += write_start.elapsed().as_secs_f64();
    }
    let changed = changed_start.elapsed();
    println!(
        "tables {} x rows {} x value {} B: first run {:.3} s; reopen {:.3} s; changed run ({} keys a table) {:.3} s (reads {:.3} s, writes and commits {:.3} s); ratio {:.1}x",
        arguments.tables,
        arguments.rows,
        value_bytes,
        first.as_secs_f64(),
        reopen.as_secs_f64(),
        arguments.changed,
        changed.as_secs_f64(),
        read_seconds,
        write_seconds,
        first.as_secs_f64() / changed.as_secs_f64()
    );
    Ok(())
}
