//! A warm standby: while a process of the group waits for the lease ([`crate::lease`]),
//! it follows the checkpoints the active process saves ([`CheckpointStore::since`]) and
//! keeps their state restored, so that taking over does not wait for the whole state to be
//! read and decoded.

use crate::checkpoint::{CheckpointStore, LocalDirStore, Seq, Since};
use crate::config::{Config, StoreKind};
use crate::kafka_store::KafkaTopicStore;
use crate::runner::Restored;
use anyhow::Context;
use cbec_schemas::hs::Nomenclature;

/// The state of the active process's last checkpoint, followed while standing by.
pub struct Standby {
    reader: Box<dyn CheckpointStore>,
    hs: Nomenclature,
    /// The state, and the place of the checkpoint it is.
    pub state: Option<(Restored, Seq)>,
    /// Checkpoints applied since the first one read.
    pub applied: usize,
    /// The last failure said (said once in a row).
    said: String,
}

impl Standby {
    /// A standby reading the configured store (claiming no epoch in it), holding nothing yet.
    pub fn new(cfg: &Config, hs: Nomenclature) -> anyhow::Result<Standby> {
        let reader: Box<dyn CheckpointStore> = match cfg.checkpoint_store {
            StoreKind::Kafka => Box::new(KafkaTopicStore::reader(&cfg.brokers, &crate::kafka_store::topic(cfg))?),
            StoreKind::Dir => Box::new(LocalDirStore::reader(&cfg.checkpoint_dir)),
        };
        Ok(Standby { reader, hs, state: None, applied: 0, said: String::new() })
    }

    /// Brings the state up to date with what was saved since.
    pub fn follow(&mut self) -> anyhow::Result<()> {
        match self.reader.since(self.state.as_ref().map(|(_, p)| *p))? {
            Since::Nothing => {}
            Since::More { place, offsets, changes } => {
                let (state, at) = self.state.as_mut().context("changes without a state")?;
                state.apply(&changes, offsets)?;
                *at = place;
                self.applied += changes.len();
            }
            Since::Other(cp) => {
                if self.state.is_some() {
                    self.applied += 1 + cp.changes.len();
                } else {
                    eprintln!(
                        "cbec: standing by with the state of the active process's checkpoint (epoch {}, number {}), followed as it saves more",
                        cp.place.0, cp.place.1
                    );
                }
                self.state = Some((Restored::from_checkpoint(&cp, self.hs.clone())?, cp.place));
            }
        }
        Ok(())
    }

    /// [`Standby::follow`], saying a failure (it is tried again later) instead of failing.
    pub fn follow_or_say(&mut self) {
        if let Err(e) = self.follow() {
            let e = format!("{e:#}");
            if e != self.said {
                eprintln!("cbec: standing by: following the checkpoints failed, will try again: {e}");
                self.said = e;
            }
        }
    }
}
