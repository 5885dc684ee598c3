//! nvtier-policy: the pure decisions of nvtier. Nothing here does I/O; every
//! function takes what the driver observed and returns what to do, so the
//! rules can be tested exhaustively.

pub mod classify;
pub mod datalayers;
pub mod engine;
pub mod lass;
pub mod placement;
pub mod record;
pub mod unpack;

pub use lass::{decide, ldl_index, Decision, DiskReason, Placement, StoreMoment, Tier};
pub use placement::{
    diff, miss_promotions, plan, CurrentPlacement, FileKey, HotFile, ImageMoves, ImagePlan,
    ImageProfile, ImageState, MetaMove, Moves, Plan, PlanParams,
};
