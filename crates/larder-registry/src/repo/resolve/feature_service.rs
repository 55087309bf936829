//! `feature_services:`: named lists of features from resolved views.

use std::collections::{BTreeMap, BTreeSet};

use larder_core::{FeatureRef, FeatureService, FeatureServiceItem, ValueType};

use super::{Resolver, name_list};
use crate::diagnostics::Location;
use crate::object_kind::ObjectKind;
use crate::repo::definitions::FeatureServiceDefinition;
use crate::repo::discovery::ParsedFile;

impl Resolver<'_> {
    pub(in crate::repo) fn resolve_feature_services(&mut self, file: &ParsedFile) {
        for definition in file.definitions.feature_services.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("feature_services.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(
                ObjectKind::FeatureService,
                &name,
                &name_location,
                &key_prefix,
            ) {
                continue;
            }
            if let Some(service) = self.resolve_feature_service(file, definition, &key_prefix) {
                self.registry.feature_services.insert(name, service);
            }
        }
    }

    fn resolve_feature_service(
        &mut self,
        file: &ParsedFile,
        definition: &FeatureServiceDefinition,
        key_prefix: &str,
    ) -> Option<FeatureService> {
        let name = definition.name.value.clone();
        let key = format!("{key_prefix}.features");
        let error_count_before = self.diagnostics.len();
        if definition.features.value.is_empty() {
            self.report(
                Location::from_yaml(&file.path, &definition.features.referenced),
                key.clone(),
                format!("feature service '{name}' lists no features"),
            );
        }
        let mut items: Vec<FeatureServiceItem> = Vec::new();
        let mut listed_features: BTreeSet<FeatureRef> = BTreeSet::new();
        // Join key name -> (dtype, the feature view that brought it).
        let mut join_key_types: BTreeMap<String, (ValueType, String)> = BTreeMap::new();
        for reference in &definition.features.value {
            let location = Location::from_yaml(&file.path, &reference.referenced);
            let text = reference.value.trim();
            let (view_name, feature_name) = if text.contains(':') {
                match text.parse::<FeatureRef>() {
                    Ok(parsed) => (parsed.view, Some(parsed.feature)),
                    Err(error) => {
                        self.report(
                            location,
                            key.clone(),
                            format!("{error}; or name a whole feature view"),
                        );
                        continue;
                    }
                }
            } else {
                (text.to_string(), None)
            };
            if !self.is_declared(ObjectKind::FeatureView, &view_name) {
                let declared = self.declared_names(ObjectKind::FeatureView);
                self.report(
                    location,
                    key.clone(),
                    format!(
                        "unknown feature view '{view_name}' (declared feature views: {declared})"
                    ),
                );
                continue;
            }
            let Some(view) = self.registry.feature_views.get(&view_name) else {
                // The view has errors of its own, reported where it is declared.
                continue;
            };
            let chosen_features: Vec<String> = match &feature_name {
                Some(feature_name) if view.feature_index(feature_name).is_none() => {
                    let known = name_list(view.features.iter().map(|feature| &feature.name));
                    self.report(
                        location,
                        key.clone(),
                        format!("feature view '{view_name}' has no feature '{feature_name}' (its features: {known})"),
                    );
                    continue;
                }
                Some(feature_name) => vec![feature_name.clone()],
                None => view
                    .features
                    .iter()
                    .map(|feature| feature.name.clone())
                    .collect(),
            };
            let view_join_keys = view.join_keys.clone();
            let mut problems = Vec::new();
            for chosen in &chosen_features {
                let feature_ref = FeatureRef {
                    view: view_name.clone(),
                    feature: chosen.clone(),
                };
                if !listed_features.insert(feature_ref.clone()) {
                    problems.push(format!("feature '{feature_ref}' is listed more than once"));
                }
            }
            for join_key in view_join_keys {
                match join_key_types.get(&join_key.name) {
                    Some((dtype, first_view)) if *dtype != join_key.dtype => problems.push(format!(
                        "join key '{}' is {dtype} in feature view '{first_view}' but {} in feature view '{view_name}': a feature service cannot mix them",
                        join_key.name, join_key.dtype
                    )),
                    Some(_) => {}
                    None => {
                        join_key_types.insert(join_key.name.clone(), (join_key.dtype.clone(), view_name.clone()));
                    }
                }
            }
            for problem in problems {
                self.report(location.clone(), key.clone(), problem);
            }
            match (feature_name, items.last_mut()) {
                (
                    Some(feature_name),
                    Some(FeatureServiceItem {
                        view,
                        features: Some(features),
                    }),
                ) if *view == view_name => {
                    features.push(feature_name);
                }
                (feature_name, _) => items.push(FeatureServiceItem {
                    view: view_name,
                    features: feature_name.map(|feature| vec![feature]),
                }),
            }
        }
        if self.diagnostics.len() > error_count_before {
            return None;
        }
        Some(FeatureService {
            name,
            items,
            description: definition.description.clone(),
            owner: definition.owner.clone(),
            tags: definition.tags.clone(),
        })
    }
}
