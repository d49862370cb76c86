//! An in-memory object store for unit tests (`memory://`). Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::store::{ObjectError, ObjectMeta, ObjectStore, check_key};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        check_key(key)?;
        self.lock().insert(key.to_string(), body);
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        check_key(key)?;
        match self.lock().entry(key.to_string()) {
            std::collections::btree_map::Entry::Occupied(_) => Ok(false),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(body);
                Ok(true)
            }
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        let body = self.get(key).await?;
        if range.start > range.end || range.end > body.len() as u64 {
            return Err(ObjectError::NotFound(format!("{key} range {range:?} beyond {} bytes", body.len())));
        }
        Ok(body.slice(range.start as usize..range.end as usize))
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.lock().get(key).cloned().ok_or_else(|| ObjectError::NotFound(key.to_string()))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        Ok(self.lock().get(key).map(|b| b.len() as u64))
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta { key: k.clone(), size_bytes: v.len() as u64 })
            .collect())
    }
}
