"""Drafters: everything that proposes tokens for the target to verify (METHOD.md section 2)."""

from jetspec.drafters.draft_model import DraftModelDrafter
from jetspec.drafters.ngram import NGramDrafter
from jetspec.drafters.simple import OracleDrafter, RandomDrafter

__all__ = ["DraftModelDrafter", "NGramDrafter", "OracleDrafter", "RandomDrafter"]
from jetspec.drafters.parallel_head import DFlashHead, HeadConfig, JetSpecHead, ParallelHead  # noqa: E402

__all__ += ["DFlashHead", "HeadConfig", "JetSpecHead", "ParallelHead"]
from jetspec.drafters.eagle_head import EagleConfig, EagleHead  # noqa: E402

__all__ += ["EagleConfig", "EagleHead"]
from jetspec.drafters.checkpoints import (  # noqa: E402
    export_dflash_checkpoint,
    export_eagle3_checkpoint,
    load_dflash_checkpoint,
    load_eagle3_checkpoint,
)

__all__ += ["export_dflash_checkpoint", "export_eagle3_checkpoint", "load_dflash_checkpoint",
            "load_eagle3_checkpoint"]
