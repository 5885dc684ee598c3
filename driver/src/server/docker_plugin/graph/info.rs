//! `GetMetadata` and `Status`.

use super::Graph;
use crate::error::Result;
use crate::tier::TierKind;

impl Graph {
    pub fn metadata(&self, id: &str) -> Result<Vec<(String, String)>> {
        let rec = self.must_load(id)?;
        let mut m = vec![(
            "Dir".to_string(),
            self.data_dir(&rec)?.display().to_string(),
        )];
        let tier = match &rec.chain_id {
            Some(c) => {
                m.push(("ChainID".into(), c.clone()));
                self.store
                    .layer(c)?
                    .map(|l| l.tier.to_string())
                    .unwrap_or_default()
            }
            None => TierKind::Disk.to_string(),
        };
        m.push(("Tier".into(), tier));
        if let Some(p) = &rec.placement {
            m.push(("Placement".into(), p.clone()));
        }
        if rec.chain_id.is_none() {
            m.push((
                "UpperDir".into(),
                self.diff_dir(&rec.id).display().to_string(),
            ));
            m.push((
                "WorkDir".into(),
                self.work_dir(&rec.id).display().to_string(),
            ));
        }
        m.push((
            "MergedDir".into(),
            self.merged_dir(&rec.id).display().to_string(),
        ));
        Ok(m)
    }

    pub fn status(&self) -> Result<Vec<[String; 2]>> {
        let recs = self.list()?;
        let applied = recs.iter().filter(|r| r.chain_id.is_some()).count();
        let mounted = recs.iter().filter(|r| r.mount_count > 0).count();
        Ok(vec![
            [
                "Driver".into(),
                "nvtier (legacy graph driver plugin)".into(),
            ],
            [
                "Pmem Dir".into(),
                self.store.pmem.root.display().to_string(),
            ],
            [
                "Disk Dir".into(),
                self.store.disk.root.display().to_string(),
            ],
            ["Layers".into(), recs.len().to_string()],
            ["Applied Layers".into(), applied.to_string()],
            ["Mounted Layers".into(), mounted.to_string()],
            ["Pmem Used".into(), self.store.pmem_used()?.to_string()],
            ["Pmem Budget".into(), self.store.cfg.pmem_budget.to_string()],
        ])
    }
}
