//! `entities:`: names and typed join keys.

use std::collections::BTreeMap;

use larder_core::{Entity, JoinKey};

use super::{Resolver, is_valid_name};
use crate::diagnostics::Location;
use crate::object_kind::ObjectKind;
use crate::repo::discovery::ParsedFile;

impl Resolver<'_> {
    pub(in crate::repo) fn resolve_entities(&mut self, file: &ParsedFile) {
        for definition in file.definitions.entities.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("entities.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(ObjectKind::Entity, &name, &name_location, &key_prefix) {
                continue;
            }
            if definition.join_keys.value.is_empty() {
                self.report(
                    Location::from_yaml(&file.path, &definition.join_keys.referenced),
                    format!("{key_prefix}.join_keys"),
                    format!("entity '{name}' declares no join keys"),
                );
            }
            let mut join_keys: Vec<JoinKey> = Vec::new();
            let mut join_key_locations: BTreeMap<String, Location> = BTreeMap::new();
            for join_key in &definition.join_keys.value {
                let join_key_name = join_key.name.value.clone();
                let join_key_prefix = format!("{key_prefix}.join_keys.{join_key_name}");
                let join_key_location = Location::from_yaml(&file.path, &join_key.name.referenced);
                if !is_valid_name(&join_key_name) {
                    self.report(
                        join_key_location.clone(),
                        format!("{join_key_prefix}.name"),
                        format!("invalid join key name '{join_key_name}' (names match [A-Za-z_][A-Za-z0-9_]*)"),
                    );
                }
                if let Some(first) = join_key_locations.get(&join_key_name) {
                    let message = format!(
                        "duplicate join key '{join_key_name}' in entity '{name}' (first declared at {first})"
                    );
                    self.report(
                        join_key_location,
                        format!("{join_key_prefix}.name"),
                        message,
                    );
                    continue;
                }
                join_key_locations.insert(join_key_name.clone(), join_key_location);
                let Some(dtype) = self.parse_dtype(
                    &file.path,
                    &join_key.dtype,
                    format!("{join_key_prefix}.dtype"),
                ) else {
                    continue;
                };
                if !dtype.is_join_key_type() {
                    self.report(
                        Location::from_yaml(&file.path, &join_key.dtype.referenced),
                        format!("{join_key_prefix}.dtype"),
                        larder_core::CoreError::UnsupportedJoinKeyType(dtype.to_string())
                            .to_string(),
                    );
                    continue;
                }
                join_keys.push(JoinKey {
                    name: join_key_name,
                    dtype,
                });
            }
            self.registry.entities.insert(
                name.clone(),
                Entity {
                    name,
                    join_keys,
                    description: definition.description.clone(),
                    owner: definition.owner.clone(),
                    tags: definition.tags.clone(),
                },
            );
        }
    }
}
