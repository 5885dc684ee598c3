//! A layer's changes against its parent chain.

use super::diff::Change;
use super::{diff, other, validate_id, validate_parent, Graph};
use crate::error::Result;
use std::path::PathBuf;

impl Graph {
    /// The layer's own directory and its parents' (for Diff/Changes);
    /// `parent` must be the layer's recorded parent.
    pub fn diff_source(&self, id: &str, parent: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
        validate_id(id)?;
        let parent = validate_parent(parent)?;
        let rec = self.must_load(id)?;
        if parent != rec.parent.as_deref() {
            return Err(other(format!(
                "layer {id}: diff against {parent:?} is not supported (its parent is {:?})",
                rec.parent
            )));
        }
        Ok((self.data_dir(&rec)?, self.parent_dirs(&rec)?))
    }

    pub fn changes(&self, id: &str, parent: &str) -> Result<Vec<Change>> {
        let (own, lowers) = self.diff_source(id, parent)?;
        diff::changes(&own, &lowers)
    }

    pub fn diff_size(&self, id: &str, parent: &str) -> Result<u64> {
        let (own, lowers) = self.diff_source(id, parent)?;
        let ch = diff::changes(&own, &lowers)?;
        Ok(diff::changes_size(&own, &ch))
    }
}
