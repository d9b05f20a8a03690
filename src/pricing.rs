//! What tokens cost: the registry's list prices, overridable per model or per provider and
//! model from the config's `pricing` section.
//!
//! ```
//! use nenya::adapters::providers::Price;
//! use nenya::pricing::PriceTable;
//! let table = PriceTable::new([
//!     ("my-local/qwen".to_owned(), Price { input: 0.0, output: 0.0, cached_input: None }),
//!     ("gpt-4o".to_owned(), Price { input: 2.0, output: 8.0, cached_input: None }),
//! ]);
//! assert_eq!(table.price("my-local", "qwen").unwrap().input, 0.0);
//! assert_eq!(table.price("openai", "gpt-4o").unwrap().input, 2.0); // the override
//! assert_eq!(table.price("openai", "gpt-4o-mini").unwrap().input, 0.15); // the registry
//! assert!(table.price("x", "unknown-model").is_none());
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::adapters::providers::{Price, known_model};

/// Prices by `provider/model`, then by model, then from the built-in registry. Cheap to clone;
/// lookups do not allocate.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    by_provider: Arc<HashMap<String, HashMap<String, Price>>>,
    by_model: Arc<HashMap<String, Price>>,
}

impl PriceTable {
    /// A table with these overrides: keys are `provider/model` or a bare model id.
    pub fn new(overrides: impl IntoIterator<Item = (String, Price)>) -> Self {
        let mut by_provider: HashMap<String, HashMap<String, Price>> = HashMap::new();
        let mut by_model = HashMap::new();
        for (k, p) in overrides {
            match k.split_once('/') {
                Some((prov, model)) => {
                    by_provider
                        .entry(prov.to_owned())
                        .or_default()
                        .insert(model.to_owned(), p);
                }
                None => {
                    by_model.insert(k, p);
                }
            }
        }
        Self {
            by_provider: Arc::new(by_provider),
            by_model: Arc::new(by_model),
        }
    }

    /// The price of `model` served by `provider`, if known.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        self.by_provider
            .get(provider)
            .and_then(|m| m.get(model))
            .or_else(|| self.by_model.get(model))
            .copied()
            .or_else(|| known_model(model).map(|k| k.price))
    }
}
