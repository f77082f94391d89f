//! An enricher over a read model: each `Product…` event gets its product's
//! `category` from a DynamoDB table keyed by `productId` (GetItem), read
//! once per invocation for each product.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use aws_sdk_dynamodb::types::AttributeValue;
use event_forwarder::enrich::{EnrichError, Enricher, Enrichment, Event};

/// Product categories from the read model.
pub struct Categories {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// GetItem calls made, for the tests.
    pub lookups: AtomicUsize,
}

impl Categories {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            client,
            table,
            lookups: AtomicUsize::new(0),
        }
    }
}

impl Enricher for Categories {
    /// The categories looked up in this invocation, by product.
    type Batch = HashMap<String, Option<String>>;

    async fn enrich(
        &self,
        event: &Event<'_>,
        cache: &mut Self::Batch,
    ) -> Result<Enrichment, EnrichError> {
        if !event.message_type().starts_with("Product") {
            return Ok(Enrichment::keep());
        }
        let product = event.partition_key();
        let category = match cache.get(product) {
            Some(known) => known.clone(),
            None => {
                self.lookups.fetch_add(1, Ordering::Relaxed);
                let item = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("productId", AttributeValue::S(product.to_owned()))
                    .send()
                    .await
                    // An unreachable read model fails the record: it is
                    // retried by the checkpoint rule.
                    .map_err(|e| EnrichError::new(format!("GetItem on {}: {e}", self.table)))?;
                let category = item
                    .item()
                    .and_then(|i| i.get("category"))
                    .and_then(|c| c.as_s().ok())
                    .cloned();
                cache.insert(product.to_owned(), category.clone());
                category
            }
        };
        Ok(match category {
            Some(c) => Enrichment::keep().with_field("category", c),
            // Not in the read model yet: published as it is, and marked.
            None => Enrichment::keep().with_header("readModel", "missing"),
        })
    }
}
